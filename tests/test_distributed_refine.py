"""``concepts refine`` sharded: the same encyclopedia locally and on Ray, through an interruption and a rerun.

One local Ray instance with 2 CPUs serves the module. The CLI test runs first and asks for one worker of
its own (the instance's two CPU slots are free then); the later tests share one runner of two workers.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

import mechscope as ms
from mechscope.cli.main import app
from mechscope.concepts import refine
from mechscope.concepts.bootstrap import bootstrap
from mechscope.concepts.encyclopedia import Encyclopedia
from mechscope.concepts.sources import toyworld_concepts
from mechscope.distributed import LocalRunner, ModelSpec
from mechscope.errors import InputError
from tests.test_distributed import assert_same_file

ray = pytest.importorskip("ray", reason="the distributed extra (ray) is part of the dev install")
from mechscope.distributed.ray_runner import RayRunner  # noqa: E402

LAYERS = [-2, -1]
TEMPLATES, HELD_OUT, SHARD = 2, 1, 100  # 161 concepts x 3 contexts = 483 contexts in 5 shards


@pytest.fixture(scope="module")
def toy() -> ms.LanguageModel:
    return ms.load("toy")


@pytest.fixture(scope="module")
def stage0(toy: ms.LanguageModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stage0") / "enc.h5"
    bootstrap(toy, toyworld_concepts(), out, layers=LAYERS, progress=False)
    return out


@pytest.fixture(scope="module")
def contexts(stage0: Path) -> list[refine.Context]:
    return refine.template_contexts(Encyclopedia(stage0), range(161), TEMPLATES, held_out=HELD_OUT)


@pytest.fixture(scope="module")
def local(
    toy: ms.LanguageModel, stage0: Path, contexts: list[refine.Context], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp("local") / "enc.h5"
    shutil.copyfile(stage0, out)
    refine.refine(toy, out, contexts, 1, batch_size=SHARD)
    return out


@pytest.fixture(scope="module")
def instance() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def runner(instance: None) -> Iterator[RayRunner]:
    with RayRunner(ModelSpec("toy"), workers=2) as held:  # joins the instance above
        yield held


def copy(source: Path, folder: Path) -> Path:
    out = folder / "enc.h5"
    shutil.copyfile(source, out)
    return out


def test_cli_refine_on_ray_writes_the_local_file(instance: None, stage0: Path, local: Path, tmp_path: Path) -> None:
    out = copy(stage0, tmp_path)
    args = ["concepts", "refine", "-m", "toy", "--data", str(out), "--stage", "1", "--templates", str(TEMPLATES)]
    args += ["--held-out", str(HELD_OUT), "--batch-size", str(SHARD), "--backend", "ray", "--workers", "1", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["backend"] == "ray" and summary["contexts"] == 483 and summary["stage"] == 1
    assert_same_file(local, out)
    assert not refine.refine_parts(out).exists()
    assert ray.is_initialized(), "a command that joined a Ray instance leaves it running"


def test_ray_refine_writes_the_local_file(
    runner: RayRunner, stage0: Path, contexts: list[refine.Context], local: Path, tmp_path: Path
) -> None:
    out = copy(stage0, tmp_path)
    done: list[int] = []
    enc = refine.refine(None, out, contexts, 1, batch_size=SHARD, runner=runner, on_shard=done.append)
    assert sorted(done) == [0, 1, 2, 3, 4]
    assert enc.info.stage == 1 and (enc.count() == 1 + TEMPLATES).all()
    assert_same_file(local, out)
    assert not refine.refine_parts(out).exists()


class Interrupted(Exception):
    pass


def test_an_interrupted_refine_changes_nothing_and_a_rerun_runs_only_the_missing_shards(
    toy: ms.LanguageModel, runner: RayRunner, stage0: Path, contexts: list[refine.Context], local: Path, tmp_path: Path
) -> None:
    out = copy(stage0, tmp_path)
    before = out.read_bytes()

    def stop_after_two(shard: int) -> None:
        if shard == 1:
            raise Interrupted

    with pytest.raises(Interrupted):
        refine.refine(toy, out, contexts, 1, batch_size=SHARD, on_shard=stop_after_two)
    assert out.read_bytes() == before, "the encyclopedia changes only when every shard is in"
    assert sorted(p.name for p in refine.refine_parts(out).glob("part-*")) == [
        "part-000000.safetensors",
        "part-000001.safetensors",
    ]
    with pytest.raises(InputError, match="holds the parts of another job"):
        refine.refine(toy, out, contexts[:-1], 1, batch_size=SHARD)  # another context list: refused
    rerun: list[int] = []
    refine.refine(None, out, contexts, 1, batch_size=SHARD, runner=runner, on_shard=rerun.append)
    assert sorted(rerun) == [2, 3, 4]
    assert_same_file(local, out)


def test_parts_of_an_encyclopedia_that_changed_since_are_refused(
    toy: ms.LanguageModel, stage0: Path, contexts: list[refine.Context], tmp_path: Path
) -> None:
    out = copy(stage0, tmp_path)

    def stop(shard: int) -> None:
        raise Interrupted

    with pytest.raises(Interrupted):
        refine.refine(toy, out, contexts, 1, batch_size=SHARD, on_shard=stop)
    kept = tmp_path / "kept"
    refine.refine_parts(out).rename(kept)
    refine.refine(toy, out, contexts[:3], 1)  # the file changes in between (a small refinement of its own)
    kept.rename(refine.refine_parts(out))
    changed = out.read_bytes()
    with pytest.raises(InputError, match="holds the parts of another job"):
        refine.refine(toy, out, contexts, 1, batch_size=SHARD)
    assert out.read_bytes() == changed


def test_the_merge_refuses_holes_and_parts_of_other_rows(
    toy: ms.LanguageModel, stage0: Path, contexts: list[refine.Context], tmp_path: Path
) -> None:
    out = copy(stage0, tmp_path)
    before = out.read_bytes()
    parts, task = refine.make_plan(Encyclopedia(out), contexts, 1, SHARD)
    parts.open()
    LocalRunner(toy).run(task, [0, 1, 3, 4])
    with pytest.raises(InputError, match=r"lacks 1 shards \(first: 2\); rerun"):
        refine.merge(task, out, contexts, 1)
    assert out.read_bytes() == before
    LocalRunner(toy).run(task, [2])
    parts.path(1).write_bytes(parts.path(2).read_bytes())
    assert not task.done(1), "a part of other rows is not taken for shard 1's"
    with pytest.raises(InputError, match=r"part 1 .* holds other rows"):
        refine.merge(task, out, contexts, 1)
    assert out.read_bytes() == before and parts.folder.is_dir()


def test_bad_input_is_refused_before_anything_runs(toy: ms.LanguageModel, stage0: Path, tmp_path: Path) -> None:
    out = copy(stage0, tmp_path)
    few = refine.template_contexts(Encyclopedia(out), [0], 1, held_out=0)
    with pytest.raises(InputError, match="batch size must be at least 1"):
        refine.refine(toy, out, few, 1, batch_size=0)
    with pytest.raises(InputError, match="needs a model or a runner"):
        refine.refine(None, out, few, 1)
    with pytest.raises(InputError, match="concept 999"):
        refine.refine(toy, out, [refine.Context(999, 0, 0, "a dog")], 1)
    assert not refine.refine_parts(out).exists()
