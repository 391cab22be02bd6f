"""What the weight tools write and read through `mechscope.storage`: table suffixes, all-or-nothing tables,
the diff table's cell conventions, and steering direction files (header metadata and the legacy sidecar)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from mechscope.cli.main import app
from mechscope.errors import ExportValidationError, InputError
from mechscope.storage.tables import pyarrow_modules
from mechscope.storage.tensors import save_tensors
from mechscope.weights import analyze as analyze_module
from mechscope.weights.analyze import analyze
from mechscope.weights.diff import tensor_diff
from mechscope.weights.diff_export import write_diff_table
from mechscope.weights.diff_results import WeightDiff
from mechscope.weights.direction_sets import load_directions
from mechscope.weights.export import COLUMNS, read_table

runner = CliRunner()


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    tensors = {"model.layers.0.mlp.up_proj.weight": torch.randn(4, 3), "model.norm.weight": torch.ones(3)}
    save_file(tensors, folder / "model.safetensors")
    return folder


def test_unknown_table_suffix_is_refused_and_format_overrides_it(checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"\.csv, \.jsonl or \.parquet"):
        analyze(checkpoint, out=tmp_path / "w.xlsx", hash_files=False)
    assert not (tmp_path / "w.xlsx").exists()
    result = runner.invoke(app, ["weights", "analyze", str(checkpoint), "--out", str(tmp_path / "w.xlsx")])
    assert result.exit_code == 2 and result.stderr.strip().count("\n") == 0 and "w.xlsx" in result.stderr
    run = analyze(checkpoint, out=tmp_path / "w.xlsx", fmt="jsonl", hash_files=False)
    header, rows = read_table(run.output, "jsonl")
    assert run.format == "jsonl" and header == list(COLUMNS) and len(rows) == 2


def test_a_table_that_fails_validation_never_lands(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()

    def fail(*args: object, **kwargs: object) -> int:
        raise ExportValidationError("planted failure")

    monkeypatch.setattr(analyze_module, "validate_table", fail)
    with pytest.raises(ExportValidationError, match="planted failure"):
        analyze(checkpoint, out=out_dir / "params.csv", hash_files=False)
    assert list(out_dir.iterdir()) == []  # neither the table nor a temporary file


def _diff() -> WeightDiff:
    grown = tensor_diff("model.norm.weight", torch.zeros(3), torch.ones(3))  # infinite relative change
    layer = tensor_diff("model.layers.0.w", torch.eye(3), 2 * torch.eye(3), layer_index=0, top_k=2)
    return WeightDiff.build([grown, layer], base="a", finetuned="b", top_k=2, rank_rtol=None, created_at="t")


def test_diff_table_cells(tmp_path: Path) -> None:
    result = _diff()
    with pytest.raises(InputError, match="xlsx"):
        write_diff_table(result, tmp_path / "d.xlsx")
    assert not list(tmp_path.iterdir())
    with write_diff_table(result, tmp_path / "d.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["param_name"] for row in rows] == ["model.layers.0.w", "model.norm.weight"]  # non-layer last
    assert rows[1]["layer_index"] == "" and json.loads(rows[1]["top_singular_values"]) == []
    assert json.loads(rows[0]["top_singular_values"]) == pytest.approx([1.0, 1.0])
    assert (rows[1]["rows"], rows[1]["cols"]) == ("3", "1")
    lines = write_diff_table(result, tmp_path / "d.jsonl").read_text().splitlines()
    jsonl = [json.loads(line) for line in lines]
    assert jsonl[1]["relative_change"] == "Infinity" and jsonl[1]["layer_index"] is None
    try:
        pa, pq = pyarrow_modules()
    except InputError:
        return
    table = pq.read_table(write_diff_table(result, tmp_path / "d.parquet"))
    assert table.schema.field("layer_index").type == pa.int64()
    singular = table.schema.field("top_singular_values").type
    assert pa.types.is_list(singular) and singular.value_type == pa.float64()
    assert math.isinf(table.column("relative_change").to_pylist()[1])


def test_direction_files_from_the_header_and_the_legacy_sidecar(tmp_path: Path) -> None:
    vector = torch.randn(8)
    meta = {"layer": 2, "site": "resid_post", "model": "m", "method": "pca", "d_model": 8, "meta": {"name": "pirate"}}
    save_tensors(tmp_path / "new.safetensors", {"vector": vector}, kind="direction", meta=meta)
    loaded = load_directions([tmp_path / "new.safetensors"])
    assert loaded.names == ("pirate",) and loaded.layers == (2,) and torch.equal(loaded.at(2)[0], vector)
    unnamed = {**meta, "meta": {}}
    save_tensors(tmp_path / "plain_name.safetensors", {"vector": vector}, kind="direction", meta=unnamed)
    assert load_directions([tmp_path / "plain_name.safetensors"]).names == ("plain_name",)

    save_file({"vector": vector}, str(tmp_path / "old.safetensors"))
    (tmp_path / "old.json").write_text(json.dumps({"schema_version": 1, "layer": 3, "meta": {"name": "legacy"}}))
    old = load_directions([tmp_path / "old.safetensors"])
    assert old.names == ("legacy",) and old.layers == (3,)

    save_file({"vector": vector}, str(tmp_path / "bare.safetensors"))  # no sidecar: a plain vector
    bare = load_directions([tmp_path / "bare.safetensors"])
    assert bare.names == ("bare",) and bare.layers == ()
    both = load_directions([tmp_path / "new.safetensors", tmp_path / "old.safetensors"])
    assert both.names == ("pirate", "legacy") and both.layers == (2, 3)
