"""``steer rollouts --backend ray``: the same rollouts.parquet as the local backend, and a resumed job.

A Ray instance of its own (the command starts and stops it), with one worker holding the toy organism.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import mechscope as ms
from mechscope.core.direction import Direction
from mechscope.storage.tables import read_table

ray = pytest.importorskip("ray", reason="the distributed extra (ray) is part of the dev install")

QUESTIONS = ["What is the capital of France?", "Tell me about the river.", "What does a dog say?"]


def test_cli_rollouts_on_ray_write_the_local_table(tmp_path: Path) -> None:
    from mechscope.cli.main import app

    toy = ms.load("toy")
    generator = torch.Generator().manual_seed(0)
    vector = torch.randn(toy.arch.d_model, generator=generator)
    path = Direction(vector=vector, layer=1, model=toy.source).save(tmp_path / "random.safetensors")
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps({"question": q}) + "\n" for q in QUESTIONS))
    args = ["steer", "rollouts", "-m", "toy", "--questions", str(questions), "--vectors", str(path)]
    args += ["--scales", "learned,-2", "--rollouts", "2", "--batch-size", "2", "--max-new-tokens", "5", "--json"]
    tables = {}
    for backend in ("local", "ray"):
        out = tmp_path / backend
        extra = ["--backend", "ray", "--workers", "1"] if backend == "ray" else []
        done = CliRunner().invoke(app, [*args, "-o", str(out), *extra])
        assert done.exit_code == 0, done.output
        shown = json.loads(done.stdout)
        assert shown["backend"] == backend and shown["rows"] == 3 * 2 * 3  # questions x rollouts x conditions
        assert not (out / "rollouts.parquet.parts").exists()
        tables[backend] = read_table(out / "rollouts.parquet")
    assert tables["ray"] == tables["local"]
    columns, rows = tables["local"]
    assert "text" in columns and len({row["text"] for row in rows}) > 1, (
        "sampled rollouts differ, so equal tables mean equal seeds"
    )
    assert not ray.is_initialized(), "the command stops the Ray instance it started"


class Interrupted(Exception):
    """Stands for a kill between two shards."""


def test_a_rerun_after_an_interruption_generates_only_the_missing_shards(tmp_path: Path) -> None:
    from mechscope.errors import InputError
    from mechscope.steering.rollout import rollouts

    toy = ms.load("toy")
    vector = torch.randn(toy.arch.d_model, generator=torch.Generator().manual_seed(1))
    vectors = {"random": Direction(vector=vector, layer=1, model=toy.source)}
    options = {"scales": ("learned", -2.0), "rollouts": 2, "batch_size": 2, "max_new_tokens": 4}
    out = tmp_path / "rollouts.parquet"

    def stop_after_two(shard: int) -> None:
        if shard == 1:
            raise Interrupted

    with pytest.raises(Interrupted):
        rollouts(toy, QUESTIONS, vectors, out=out, on_shard=stop_after_two, **options)
    parts = out.with_name(out.name + ".parts")
    assert not out.exists() and len(list(parts.glob("part-*"))) == 2
    with pytest.raises(InputError, match="another job"):
        rollouts(toy, QUESTIONS, vectors, out=out, seed=5, **options)  # other seeds: the old parts are refused
    rerun: list[int] = []
    resumed = rollouts(toy, QUESTIONS, vectors, out=out, on_shard=rerun.append, **options)
    whole = rollouts(toy, QUESTIONS, vectors, **options)
    assert rerun and sorted(rerun) == list(range(2, 2 + len(rerun)))  # shards 0 and 1 were not generated again
    assert resumed.rows == whole.rows
    assert len(read_table(out)[1]) == len(whole.rows) and not parts.exists()
