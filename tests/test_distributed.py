"""The Ray backend: the same encyclopedia as the local one, through a killed worker and a resumed job.

One local Ray instance with 2 CPUs serves the module; its two workers load the toy organism once each.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

import mechscope as ms
from mechscope.concepts.bootstrap import _part, bootstrap, check_parts, make_plan, parts_folder
from mechscope.concepts.concept import ConceptList
from mechscope.concepts.sources import load_concepts
from mechscope.distributed import LocalRunner, ModelSpec
from mechscope.errors import DistributedError, InputError

ray = pytest.importorskip("ray", reason="the distributed extra (ray) is part of the dev install")
from mechscope.distributed.ray_runner import RayRunner  # noqa: E402

LAYERS = [-3, -2, -1]
SHARD = 250  # 2,000 concepts in 8 shards


@pytest.fixture(scope="module")
def toy() -> ms.LanguageModel:
    return ms.load("toy")


@pytest.fixture(scope="module")
def concepts() -> ConceptList:
    return load_concepts("wordnet", pos="noun", limit=2000)


@pytest.fixture(scope="module")
def small() -> ConceptList:
    """The organisms' 161 concepts: enough shards (9 of 20) for the merge checks, in a second."""
    from mechscope.concepts.sources import toyworld_concepts

    return toyworld_concepts()


@pytest.fixture(scope="module")
def local(toy: ms.LanguageModel, concepts: ConceptList, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("local") / "enc.h5"
    bootstrap(toy, concepts, out, layers=LAYERS, batch_size=SHARD, progress=False)
    return out


@pytest.fixture(scope="module")
def runner() -> Iterator[RayRunner]:
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        with RayRunner(ModelSpec("toy")) as held:  # joins the instance above, one worker per CPU
            yield held
    finally:
        ray.shutdown()


def contents(path: Path) -> dict[str, Any]:
    """Every dataset and every attribute of an HDF5 file, by name."""
    found: dict[str, Any] = {}
    with h5py.File(path, "r") as handle:

        def visit(name: str, item: Any) -> None:
            if isinstance(item, h5py.Dataset):
                found[name] = item[()]
            for key, value in item.attrs.items():
                found[f"{name}@{key}"] = value

        visit("/", handle)
        handle.visititems(visit)
    return found


def assert_same_file(left: Path, right: Path) -> None:
    a, b = contents(left), contents(right)
    assert sorted(a) == sorted(b)
    for name in a:
        assert np.array_equal(np.asarray(a[name]), np.asarray(b[name])), name


def test_two_workers_hold_one_model_each(runner: RayRunner) -> None:
    assert runner.workers == 2
    assert runner.call(lambda lm: (lm.arch.n_layers, lm.arch.d_model)) == (4, 128)


def test_ray_bootstrap_writes_the_local_file(
    runner: RayRunner, concepts: ConceptList, local: Path, tmp_path: Path
) -> None:
    done: list[int] = []
    out = tmp_path / "enc.h5"
    bootstrap(None, concepts, out, layers=LAYERS, batch_size=SHARD, progress=False, runner=runner, on_shard=done.append)
    assert sorted(done) == list(range(8))
    assert_same_file(local, out)
    assert not parts_folder(out).exists()


def test_a_worker_killed_mid_shard_is_restarted_and_the_file_is_the_same(
    runner: RayRunner, concepts: ConceptList, local: Path, tmp_path: Path
) -> None:
    killed: list[int] = []

    def kill_one(shard: int) -> None:
        if not killed:  # the other worker is busy with a shard now: kill its process
            [(busy, pid)] = list(runner.in_flight().items())[:1]
            os.kill(pid, signal.SIGKILL)
            killed.append(busy)

    before = runner.restarts
    out = tmp_path / "enc.h5"
    done: list[int] = []

    def both(shard: int) -> None:
        done.append(shard)
        kill_one(shard)

    bootstrap(None, concepts, out, layers=LAYERS, batch_size=SHARD, progress=False, runner=runner, on_shard=both)
    assert runner.restarts == before + 1, "Ray did not restart the killed worker and rerun its shard"
    assert sorted(done) == list(range(8)), "every shard ends once: none twice, none lost"
    assert_same_file(local, out)


class Interrupted(Exception):
    pass


def test_a_rerun_after_an_interruption_runs_only_the_missing_shards(
    toy: ms.LanguageModel, runner: RayRunner, concepts: ConceptList, local: Path, tmp_path: Path
) -> None:
    out = tmp_path / "enc.h5"

    def stop_after_three(shard: int) -> None:
        if shard == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        bootstrap(toy, concepts, out, layers=LAYERS, batch_size=SHARD, progress=False, on_shard=stop_after_three)
    assert len(list(parts_folder(out).glob("part-*.safetensors"))) == 3
    rerun: list[int] = []
    bootstrap(
        None, concepts, out, layers=LAYERS, batch_size=SHARD, progress=False, runner=runner, on_shard=rerun.append
    )
    assert sorted(rerun) == [3, 4, 5, 6, 7]
    assert_same_file(local, out)


def test_a_shard_whose_part_exists_is_not_written_again(
    toy: ms.LanguageModel, concepts: ConceptList, tmp_path: Path
) -> None:
    """What makes a retried shard harmless: the worker that reruns it finds the part and leaves it."""
    from mechscope.concepts.bootstrap import BootstrapTask, _open_parts

    plan = make_plan(toy, concepts, LAYERS, batch_size=SHARD)
    folder = tmp_path / "enc.h5.parts"
    _open_parts(folder, plan)
    task = BootstrapTask(concepts, plan, folder)
    task.run(toy, 0)
    first = _part(folder, 0).stat().st_mtime_ns
    task.run(toy, 0)
    assert _part(folder, 0).stat().st_mtime_ns == first


def test_the_merge_refuses_holes_and_strays(toy: ms.LanguageModel, small: ConceptList, tmp_path: Path) -> None:
    from mechscope.concepts.bootstrap import BootstrapTask, _open_parts, gather

    plan = make_plan(toy, small, LAYERS, batch_size=20)
    assert len(plan.batches) == 9
    folder = tmp_path / "enc.h5.parts"
    _open_parts(folder, plan)
    LocalRunner(toy).run(BootstrapTask(small, plan, folder), [0, 1, 2, 3, 4, 5, 7, 8])
    with pytest.raises(InputError, match=r"lacks 1 shards \(first: 6\); rerun"):
        check_parts(plan, folder)
    LocalRunner(toy).run(BootstrapTask(small, plan, folder), [6])
    check_parts(plan, folder)
    _part(folder, 0).rename(_part(folder, 9))  # a stray part, and a hole where it came from
    with pytest.raises(InputError, match="lacks"):
        check_parts(plan, folder)
    _part(folder, 9).rename(_part(folder, 0))
    _part(folder, 0).with_name("part-000010.safetensors").write_bytes(_part(folder, 0).read_bytes())
    with pytest.raises(InputError, match=r"no shard for \(first: 10\)"):
        gather(plan, small, folder, tmp_path / "enc.h5")
    assert not (tmp_path / "enc.h5").exists()


def test_a_part_with_other_rows_is_refused(toy: ms.LanguageModel, small: ConceptList, tmp_path: Path) -> None:
    from mechscope.concepts.bootstrap import BootstrapTask, _open_parts, gather

    plan = make_plan(toy, small, LAYERS, batch_size=20)
    folder = tmp_path / "enc.h5.parts"
    _open_parts(folder, plan)
    LocalRunner(toy).run(BootstrapTask(small, plan, folder), range(9))
    _part(folder, 1).write_bytes(_part(folder, 2).read_bytes())
    with pytest.raises(InputError, match=r"part 1 .* holds other rows"):
        gather(plan, small, folder, tmp_path / "enc.h5")


def test_an_error_on_a_worker_arrives_as_itself(runner: RayRunner) -> None:
    def bad(lm: ms.LanguageModel) -> None:
        raise InputError(f"layer 99 is outside the model's {lm.arch.n_layers} layers")

    with pytest.raises(InputError, match="layer 99 is outside the model's 4 layers"):
        runner.call(bad)

    def broken(lm: ms.LanguageModel) -> None:
        raise ZeroDivisionError("boom")

    with pytest.raises(DistributedError, match="failed on a worker: ZeroDivisionError: boom"):
        runner.call(broken)


def test_the_local_path_never_imports_ray(tmp_path: Path) -> None:
    code = (
        "import sys, mechscope as ms\n"
        "from mechscope.concepts.bootstrap import bootstrap\n"
        "from mechscope.concepts.sources import toyworld_concepts\n"
        "import mechscope.cli.main\n"
        f"bootstrap(ms.load('toy'), toyworld_concepts(), {str(tmp_path / 'e.h5')!r}, progress=False)\n"
        "assert 'ray' not in sys.modules, 'the local backend imported ray'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
