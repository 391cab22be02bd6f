"""``moe utilization`` sharded: the same result on Ray as locally, as an independent count, resumed, checked.

One local Ray instance with 2 CPUs serves the module; the CLI test joins it (so it runs before the two-worker
runner holds both CPUs). Ray's CPU workers run torch on one thread, and a float32 forward pass on CPU can
round differently on another thread count (the last bits of the router logits, ~1e-8 in the loss), so the
local runs that must equal Ray to the bit run on one thread too (`one_thread`); the counts never differ.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import mechscope as ms
from mechscope.cli.main import app
from mechscope.distributed import ModelSpec
from mechscope.errors import InputError
from mechscope.moe.utilization import gather, make_plan, plan_parts, utilization

ray = pytest.importorskip("ray", reason="the distributed extra (ray) is part of the dev install")
from mechscope.distributed.ray_runner import RayRunner  # noqa: E402

WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "a",
    "mat",
    "while",
    "two",
    "dogs",
    "ran",
    "past",
    "seven",
    "red",
    "houses",
    "near",
    "an",
    "old",
    "river",
]
#: 36 prompts of 1..9 words; 8 prompts a shard: 5 shards, the last one short.
CORPUS = [" ".join(WORDS[i % 7 : i % 7 + 1 + i % 9]) for i in range(36)]
SHARD, BATCH = 8, 3


@contextmanager
def one_thread() -> Iterator[None]:
    """Torch on one thread, like a Ray CPU worker (see the module docstring)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def toy_moe() -> ms.LanguageModel:
    return ms.load("toy-moe")


@pytest.fixture(scope="module")
def ray_up() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def runner(ray_up: None) -> Iterator[RayRunner]:
    with RayRunner(ModelSpec("toy-moe"), workers=2) as held:
        yield held


def test_cli_on_ray_prints_the_numbers_of_local(ray_up: None, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS) + "\n", encoding="utf-8")
    printed = {}
    for backend in ("local", "ray"):
        args = ["moe", "utilization", "--prompts", str(corpus), "--batch-size", "3", "--shard-size", "8"]
        extra = ["--backend", "ray", "--workers", "1"] if backend == "ray" else []
        out = tmp_path / f"{backend}.json"
        with one_thread():
            result = CliRunner().invoke(app, [*args, *extra, "--out", str(out), "--json"])
        assert result.exit_code == 0, result.output
        printed[backend] = json.loads(result.stdout)
        assert json.loads(out.read_text(encoding="utf-8")) == printed[backend]
        assert not (tmp_path / f"{backend}.json.parts").exists(), "the parts are removed after the merge"
    assert printed["local"] == printed["ray"] and printed["local"]["prompts"] == len(CORPUS)


def test_ray_equals_local_exactly_and_an_independent_count(toy_moe: ms.LanguageModel, runner: RayRunner) -> None:
    assert len(make_plan(toy_moe, CORPUS, batch_size=BATCH, shard_size=SHARD).shards) == 5
    with one_thread():
        local = utilization(toy_moe, CORPUS, batch_size=BATCH, shard_size=SHARD)
    remote = utilization(None, CORPUS, batch_size=BATCH, shard_size=SHARD, runner=runner)
    assert remote.model_dump() == local.model_dump()  # floats too: the same shards, added in the same order
    threaded = utilization(toy_moe, CORPUS, batch_size=BATCH, shard_size=SHARD)  # this machine's threads
    assert [u.counts for u in threaded.layers] == [u.counts for u in remote.layers]
    assert abs(threaded.load_balancing_loss - remote.load_balancing_loss) <= 1e-6
    # Recounted from the routing of the whole corpus at once, one batch: no shards, no streaming.
    (batch,) = ms.moe.routing(toy_moe, CORPUS, batch_size=len(CORPUS))
    assert local.tokens == batch.tokens
    for layer in local.layers:
        counts = torch.bincount(batch.expert_index[layer.layer].reshape(-1), minlength=toy_moe.arch.n_experts)
        assert layer.counts == counts.tolist()
    whole = utilization(toy_moe, CORPUS, batch_size=len(CORPUS), shard_size=len(CORPUS))
    assert abs(whole.load_balancing_loss - local.load_balancing_loss) <= 1e-6
    for mine, theirs in zip(local.layers, whole.layers, strict=True):
        assert mine.counts == theirs.counts and abs(mine.load_balancing_loss - theirs.load_balancing_loss) <= 1e-6


class Interrupted(Exception):
    pass


def test_a_rerun_after_an_interruption_runs_only_the_missing_shards(
    toy_moe: ms.LanguageModel, runner: RayRunner, tmp_path: Path
) -> None:
    out = tmp_path / "usage.json"

    def stop_after_two(shard: int) -> None:
        if shard == 1:
            raise Interrupted

    with pytest.raises(Interrupted), one_thread():
        utilization(toy_moe, CORPUS, batch_size=BATCH, shard_size=SHARD, out=out, on_shard=stop_after_two)
    assert not out.exists() and len(list(plan_parts_folder(out).glob("part-*"))) == 2
    with pytest.raises(InputError, match="another job"):
        utilization(toy_moe, CORPUS, batch_size=BATCH, shard_size=SHARD + 1, out=out)  # other shards: refused
    rerun: list[int] = []
    resumed = utilization(
        None, CORPUS, batch_size=BATCH, shard_size=SHARD, out=out, runner=runner, on_shard=rerun.append
    )
    assert sorted(rerun) == [2, 3, 4]
    with one_thread():
        whole = utilization(toy_moe, CORPUS, batch_size=BATCH, shard_size=SHARD)
    assert resumed.model_dump() == whole.model_dump()
    assert json.loads(out.read_text(encoding="utf-8")) == resumed.model_dump(mode="json")
    assert not plan_parts_folder(out).exists()


def plan_parts_folder(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


def test_the_merge_refuses_holes_strays_and_misplaced_parts(toy_moe: ms.LanguageModel, tmp_path: Path) -> None:
    from mechscope.distributed import LocalRunner
    from mechscope.moe.utilization import UtilizationTask

    out = tmp_path / "usage.json"
    plan = make_plan(toy_moe, CORPUS, batch_size=BATCH, shard_size=SHARD)
    parts = plan_parts(plan, out).open()
    task = UtilizationTask(tuple(CORPUS), plan, out)
    LocalRunner(toy_moe).run(task, [0, 1, 3, 4])
    with pytest.raises(InputError, match=r"lacks 1 shards \(first: 2\); rerun"):
        gather(plan, out)
    LocalRunner(toy_moe).run(task, [2])
    first = parts.path(0).stat().st_mtime_ns
    task.run(toy_moe, 0)  # a retried shard whose part is there leaves it alone
    assert parts.path(0).stat().st_mtime_ns == first
    gather(plan, out)
    parts.path(0).with_name("part-000005.safetensors").write_bytes(parts.path(0).read_bytes())
    with pytest.raises(InputError, match=r"no shard for \(first: 5\)"):
        gather(plan, out)
    parts.path(0).with_name("part-000005.safetensors").unlink()
    parts.path(1).write_bytes(parts.path(0).read_bytes())  # shard 0's sums under shard 1's name
    with pytest.raises(InputError, match="holds other prompts than its shard"):
        gather(plan, out)
