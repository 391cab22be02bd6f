"""``circuit collect`` and ``circuit probes run`` on Ray: the same shards and results as the local backend.

One local Ray instance with 2 CPUs serves the module; a two-worker runner is shared by the library tests,
and the CLI tests join the same instance (their runners start one worker of their own and leave Ray up).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from typer.testing import CliRunner

import mechscope as ms
from mechscope.cli.main import app
from mechscope.distributed import LocalRunner, ModelSpec, ShardTask
from mechscope.errors import InputError
from mechscope.probing.collect import CollectTask, check_shards, collect, plan
from mechscope.probing.dataset import PromptDataset, tool_prompt_dataset
from mechscope.probing.store import ActivationSet, ShardSpec
from tests.test_probing_collect import _files

ray = pytest.importorskip("ray", reason="the distributed extra (ray) is part of the dev install")
from mechscope.distributed.ray_runner import RayRunner  # noqa: E402

SHARD = 10  # tool_prompt_dataset(per_tool=3): 48 prompts in 5 shards, the last one short


@pytest.fixture(scope="module")
def toy() -> ms.LanguageModel:
    return ms.load("toy")


@pytest.fixture(scope="module")
def data() -> PromptDataset:
    return tool_prompt_dataset(per_tool=3, seed=4)


@pytest.fixture(scope="module")
def local(toy: ms.LanguageModel, data: PromptDataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("local") / "acts"
    collect(toy, data, out, shard_size=SHARD, batch_size=4, progress=False)
    return out


@pytest.fixture(scope="module")
def runner() -> Iterator[RayRunner]:
    # 4 logical CPUs on the 2 cores: the 2 workers held here plus the CLI tests' own (1 or 2) must all fit,
    # or the CLI's actors would wait for a CPU slot forever
    ray.init(num_cpus=4, include_dashboard=False, logging_level="WARNING")
    try:
        with RayRunner(ModelSpec("toy"), workers=2) as held:  # joins the instance above
            yield held
    finally:
        ray.shutdown()


def test_ray_writes_the_local_shards_and_manifest(
    runner: RayRunner, data: PromptDataset, local: Path, tmp_path: Path
) -> None:
    done: list[int] = []
    out = tmp_path / "acts"
    acts = collect(
        None, data, out, shard_size=SHARD, batch_size=4, progress=False, runner=runner,
        on_shard=lambda spec: done.append(spec.index),
    )  # fmt: skip
    assert acts.manifest.n_shards == 5 and sorted(done) == [0, 1, 2, 3, 4]
    # every file: the manifest and dataset byte for byte, each shard's header and tensors' bytes
    assert _files(out) == _files(local)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in local.iterdir())


def test_an_interrupted_local_collection_resumes_on_ray_with_only_the_missing_shards(
    toy: ms.LanguageModel, runner: RayRunner, data: PromptDataset, local: Path, tmp_path: Path
) -> None:
    class Interrupted(Exception):
        pass

    def stop_after_two(spec: ShardSpec) -> None:
        if spec.index == 1:
            raise Interrupted

    out = tmp_path / "acts"
    with pytest.raises(Interrupted):
        collect(toy, data, out, shard_size=SHARD, batch_size=4, progress=False, on_shard=stop_after_two)
    assert sorted(p.name for p in out.glob("shard-*")) == ["shard-00000.safetensors", "shard-00001.safetensors"]
    written: list[int] = []
    collect(
        None, data, out, shard_size=SHARD, batch_size=4, progress=False, runner=runner,
        on_shard=lambda spec: written.append(spec.index),
    )  # fmt: skip
    assert sorted(written) == [2, 3, 4]
    assert _files(out) == _files(local)


def test_a_shard_already_written_is_not_written_again(
    toy: ms.LanguageModel, data: PromptDataset, tmp_path: Path
) -> None:
    """What makes a retried shard harmless: the worker that reruns it finds the shard and leaves it."""
    manifest = plan(toy, data, shard_size=SHARD)
    task = CollectTask(data, manifest, tmp_path, batch_size=4)
    task.run(toy, 3)
    path = tmp_path / manifest.shard(3).name
    first = path.stat().st_mtime_ns
    task.run(toy, 3)
    assert path.stat().st_mtime_ns == first


class DroppingRunner(LocalRunner):
    """A faulty runner that reports every shard done but never runs shard ``dropped``."""

    def __init__(self, lm: ms.LanguageModel, dropped: int) -> None:
        super().__init__(lm)
        self.dropped = dropped

    def run(self, task: ShardTask, shards: Sequence[int], *, on_done: Callable[[int], None] | None = None) -> None:
        super().run(task, [s for s in shards if s != self.dropped], on_done=on_done)
        if on_done is not None and self.dropped in shards:
            on_done(self.dropped)


def test_holes_strays_and_damaged_shards_are_refused(
    toy: ms.LanguageModel, data: PromptDataset, local: Path, tmp_path: Path
) -> None:
    out = tmp_path / "acts"
    with pytest.raises(InputError, match=r"misses shard 2 of 5 \(shard-00002.safetensors\); rerun"):
        collect(None, data, out, shard_size=SHARD, batch_size=4, progress=False, runner=DroppingRunner(toy, 2))
    assert (out / "manifest.json").is_file() and not (out / "shard-00002.safetensors").exists()
    acts = collect(toy, data, out, shard_size=SHARD, batch_size=4, progress=False)  # the rerun fills the hole
    assert _files(out) == _files(local)
    manifest = acts.manifest
    check_shards(out, manifest)

    # a hole behind a complete manifest (a shard file deleted afterwards)
    hole = out / manifest.shard(3).name
    saved = hole.read_bytes()
    hole.unlink()
    with pytest.raises(InputError, match=r"misses shard 3 of 5"):
        check_shards(out, manifest)
    with pytest.raises(InputError, match="misses 1 of 5 shards"):
        ActivationSet(out)
    hole.write_bytes(saved)

    # a stray shard file the plan has no shard for: the rerun (nothing left to run) refuses the folder
    (out / "shard-00007.safetensors").write_bytes(saved)
    with pytest.raises(InputError, match=r"no shard for \(first: shard-00007.safetensors\)"):
        collect(toy, data, out, shard_size=SHARD, batch_size=4, progress=False)
    (out / "shard-00007.safetensors").unlink()

    # a shard whose header is right but whose tensors are another shard's rows (wrong shape)
    from safetensors.torch import load_file, save_file

    short = out / manifest.shard(4).name  # rows 40..48
    header = _header(short)
    save_file(load_file(str(out / manifest.shard(0).name)), str(short), metadata=header)
    with pytest.raises(InputError, match=r"does not hold float32 rows 40\.\.48 of every site"):
        check_shards(out, manifest)


def _header(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata())


BATTERY = "name: small\nprobes:\n  - {name: style, category: register, generator: styles}\n"


def test_cli_probes_run_on_ray_gives_the_local_result(runner: RayRunner, tmp_path: Path) -> None:
    small = tmp_path / "small.yaml"
    small.write_text(BATTERY, encoding="utf-8")
    args = ["circuit", "probes", "run", "-m", "toy", "-b", str(small), "--permutations", "2", "--bootstrap", "10"]
    args += ["--layers", "0,-1", "--json"]
    results = {}
    for backend in ("local", "ray"):
        extra = ["--backend", "ray", "--workers", "1"] if backend == "ray" else []
        done = CliRunner().invoke(app, [*args, *extra])
        assert done.exit_code == 0, done.output
        results[backend] = json.loads(done.stdout)
        assert results[backend].pop("backend") == backend
    assert results["ray"] == results["local"]
    style = results["local"]["properties"][0]
    assert results["local"]["layers"] == [0, 3] and style["scores"][-1]["accuracy"] > 0.9
    assert ray.is_initialized(), "a command that joined a running Ray instance leaves it running"


def test_cli_collect_on_ray_writes_the_local_folder(runner: RayRunner, data: PromptDataset, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.json"
    data.save(prompts)
    outputs = {}
    for backend in ("local", "ray"):
        out = tmp_path / backend
        args = ["circuit", "collect", "-m", "toy", "-d", str(prompts), "-o", str(out), "--shard-size", "16"]
        args += ["--sites", "resid_post.1,resid_post.3", "--backend", backend, "--json"]
        done = CliRunner().invoke(app, [*args, *(["--workers", "2"] if backend == "ray" else [])])
        assert done.exit_code == 0, done.output
        shown = json.loads(done.stdout)
        assert shown["backend"] == backend and shown["n_prompts"] == len(data) and len(shown["sites"]) == 2
        outputs[backend] = out
    assert len(list(outputs["ray"].glob("shard-*.safetensors"))) == 3
    assert _files(outputs["ray"]) == _files(outputs["local"])
    again = CliRunner().invoke(app, ["circuit", "collect", "-m", "toy", "-d", str(prompts), "-o", str(outputs["ray"])])
    assert again.exit_code == 2 and "another sites" in again.output
