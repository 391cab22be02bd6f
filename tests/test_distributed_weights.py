"""A weights census over three tiny checkpoints: local and Ray tables identical, resumable, merge checked.

One local Ray instance with 2 CPUs serves the module; its workers load no model (a model-free job).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from mechscope.cli.main import app
from mechscope.distributed import LocalRunner
from mechscope.errors import InputError
from mechscope.testing.tiny_models import build_tiny_model
from mechscope.weights.analyze import RUN_META_NAME, analyze
from mechscope.weights.census import census, make_plan, merge, parts_folder
from mechscope.weights.export import COLUMNS, read_table, validate_table
from mechscope.weights.reader import open_checkpoint
from mechscope.weights.stats import SPECTRAL_COLUMNS

ray = pytest.importorskip("ray", reason="the distributed extra (ray) is part of the dev install")
from mechscope.distributed.ray_runner import RayRunner  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py
FAMILIES = ("llama", "gpt2", "qwen2")
CREATED = "2026-01-01T00:00:00Z"


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("census-models")
    return [build_tiny_model(family, root / family) for family in FAMILIES]


@pytest.fixture(scope="module")
def ray_instance() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture
def runner(ray_instance: None) -> Iterator[RayRunner]:
    """Two workers on the module's instance, with no model (they start in a second); released after each test,
    so that the CLI's own runner finds the instance's 2 CPUs free."""
    with RayRunner(None, workers=2) as held:
        yield held


def _stop(shard: int) -> None:
    raise KeyboardInterrupt  # as if killed right after the first checkpoint's part was written


def _census(sources: list[Path], out: Path, **kwargs: Any) -> Any:
    return census(sources, out=out, spectral=True, hash_files=False, created_at=CREATED, progress=False, **kwargs)


@pytest.fixture(scope="module")
def local(sources: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("local") / "census.parquet"
    _census(sources, out)
    return out


def test_ray_table_is_identical_and_run_meta_lists_every_checkpoint(
    sources: list[Path], local: Path, runner: RayRunner, tmp_path: Path
) -> None:
    out = tmp_path / "census.parquet"
    run = _census(sources, out, runner=runner)
    assert pq.read_table(out).equals(pq.read_table(local))  # every column, created_at included
    assert run.backend == "ray" and run.checkpoints == 3 and run.model_ids == list(FAMILIES) and run.reused == 0
    assert not parts_folder(out).exists() and not list(tmp_path.glob(".*tmp"))
    names = []
    for source in sources:
        with open_checkpoint(source) as checkpoint:
            names += checkpoint.names()
    assert validate_table(out, None, expected_names=names, spectral=True) == run.rows == len(names)
    meta = json.loads((tmp_path / RUN_META_NAME).read_text())
    assert [c["model_path"] for c in meta["checkpoints"]] == [str(s) for s in sources]
    assert [c["model_id"] for c in meta["checkpoints"]] == list(FAMILIES) and meta["backend"] == "ray"
    assert sum(c["rows"] for c in meta["checkpoints"]) == meta["output"]["rows"] == len(names)
    assert meta["checkpoints"][0]["files"][0]["path"] == str(sources[0] / "model.safetensors")
    assert meta["timestamp"] == CREATED and meta["options"]["spectral"] is True and "model_id" not in meta


def test_rows_of_each_checkpoint_equal_its_single_analyze(sources: list[Path], local: Path, tmp_path: Path) -> None:
    header, rows = read_table(local)
    assert header == list(COLUMNS + SPECTRAL_COLUMNS) and {row["created_at"] for row in rows} == {CREATED}
    for source in sources:
        single = analyze(source, out=tmp_path / source.name / "params.parquet", spectral=True, hash_files=False)
        _, expected = read_table(single.output)
        mine = [row for row in rows if row["model_path"] == str(source)]
        drop = ({k: v for k, v in row.items() if k != "created_at"} for row in expected)
        assert [{k: v for k, v in row.items() if k != "created_at"} for row in mine] == list(drop)


def test_interrupted_census_resumes_only_the_rest_and_merge_refuses_holes(
    sources: list[Path], local: Path, runner: RayRunner, tmp_path: Path
) -> None:
    out = tmp_path / "census.parquet"
    with pytest.raises(KeyboardInterrupt):
        _census(sources, out, runner=LocalRunner(None), on_shard=_stop)
    assert not out.exists() and sorted(p.name for p in parts_folder(out).glob("part-*")) == ["part-000000.jsonl"]
    plan = make_plan(sources, fmt="parquet", spectral=True, created_at=CREATED)
    with pytest.raises(InputError, match="lacks 2 shards"):
        merge(plan, out)
    ran: list[int] = []
    run = census(sources, out=out, spectral=True, hash_files=False, progress=False, runner=runner, on_shard=ran.append)
    assert sorted(ran) == [1, 2] and run.reused == 1
    assert pq.read_table(out).equals(pq.read_table(local))  # the first run's created_at, from its plan


def test_part_of_another_checkpoint_and_changed_checkpoint_are_refused(sources: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "census.jsonl"
    copies = [shutil.copytree(source, tmp_path / source.name) for source in sources[:2]]
    with pytest.raises(KeyboardInterrupt):
        _census(copies, out, on_shard=_stop)
    plan = make_plan(copies, fmt="jsonl", spectral=True, created_at=CREATED)
    folder = parts_folder(out)
    (folder / "part-000000.jsonl").rename(folder / "part-000001.jsonl")  # checkpoint 0's rows in slot 1
    shutil.copy(folder / "part-000001.jsonl", folder / "part-000000.jsonl")
    stray = shutil.copy(folder / "part-000000.jsonl", folder / "part-000005.jsonl")
    with pytest.raises(InputError, match="no shard for"):
        merge(plan, out)
    Path(stray).unlink()
    with pytest.raises(InputError, match=r"part 1 .* not of"):
        merge(plan, out)
    weights = copies[1] / "model.safetensors"
    weights.write_bytes(weights.read_bytes())  # same bytes, new mtime: another checkpoint for the plan
    with pytest.raises(InputError, match="another job"):
        _census(copies, out)


def test_cli_two_sources_on_ray(sources: list[Path], ray_instance: None, tmp_path: Path) -> None:
    out = tmp_path / "census.csv"
    args = ["weights", "analyze", str(sources[0]), str(sources[2]), "--out", str(out), "--no-hash"]
    result = CliRunner().invoke(app, [*args, "--backend", "ray", "--ray-workers", "1", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["backend"] == "ray" and summary["checkpoints"] == 2 and summary["model_ids"] == ["llama", "qwen2"]
    _, rows = read_table(out)
    assert len(rows) == summary["rows"] and {row["model_id"] for row in rows} == {"llama", "qwen2"}
    for bad, message in (
        (["--ray-workers", "1"], "--ray-workers needs --backend ray"),
        (["--model-id", "x"], "--model-id names one checkpoint"),
        (["--address", "auto"], "--address needs --backend ray"),
    ):
        result = CliRunner().invoke(app, [*args, *bad])
        assert result.exit_code == 2 and message in result.stderr and result.stderr.strip().count("\n") == 0
