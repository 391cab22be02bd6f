"""Base-vs-fine-tuned weight diff: per-tensor statistics, checkpoint pairing, summaries, report and CLI."""

from __future__ import annotations

import csv
import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from mechscope.cli.main import app
from mechscope.errors import WeightFileError
from mechscope.viz.weights_diff_report import render_weights_diff_html
from mechscope.weights.diff import check_same_architecture, diff_checkpoints, tensor_diff
from mechscope.weights.diff_results import WeightDiff
from tests.pages import assert_self_contained

PLANTED = "model.layers.1.self_attn.o_proj.weight"
PLANTED_SINGULAR_VALUES = (3.0, 1.25)
runner = CliRunner()


def _edit_copy(source: Path, target: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> Path:
    """A copy of a saved model folder whose safetensors tensors went through ``edit``."""
    shutil.copytree(source, target)
    weights = target / "model.safetensors"
    tensors = load_file(weights)
    edit(tensors)
    save_file(tensors, weights, metadata={"format": "pt"})
    return target


def _plant_rank_two(tensors: dict[str, torch.Tensor]) -> None:
    weight = tensors[PLANTED]
    generator = torch.Generator().manual_seed(7)
    left, _ = torch.linalg.qr(torch.randn(weight.shape[0], 2, generator=generator))
    right, _ = torch.linalg.qr(torch.randn(weight.shape[1], 2, generator=generator))
    update = left @ torch.diag(torch.tensor(PLANTED_SINGULAR_VALUES)) @ right.T
    tensors[PLANTED] = weight + update.to(weight.dtype)


@pytest.fixture(scope="module")
def llama(tiny_dir: Callable[[str], Path]) -> Path:
    return tiny_dir("llama")


@pytest.fixture(scope="module")
def planted(llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _edit_copy(llama, tmp_path_factory.mktemp("planted") / "llama", _plant_rank_two)


# --- one tensor pair ---------------------------------------------------------------------------------


def test_identical_tensors_are_zero_change() -> None:
    a = torch.randn(8, 6)
    result = tensor_diff("w", a, a.clone())
    assert (result.relative_change, result.diff_norm, result.cosine, result.rank) == (0.0, 0.0, 1.0, 0)
    assert result.effective_rank == 0.0 and result.top_singular_values == [0.0] * 5


def test_matches_numpy_on_a_random_change() -> None:
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(12, 7, generator=generator), torch.randn(12, 7, generator=generator)
    result = tensor_diff("w", a, b, top_k=3)
    x, y = a.numpy().astype(np.float64), b.numpy().astype(np.float64)
    singular = np.linalg.svd(y - x, compute_uv=False)
    assert result.diff_norm == pytest.approx(np.linalg.norm(y - x))
    assert result.relative_change == pytest.approx(np.linalg.norm(y - x) / np.linalg.norm(x))
    assert result.cosine == pytest.approx(float(x.ravel() @ y.ravel()) / (np.linalg.norm(x) * np.linalg.norm(y)))
    assert result.rank == np.linalg.matrix_rank((b - a).numpy()) == 7
    assert result.top_singular_values == pytest.approx(singular[:3].tolist(), rel=1e-5)
    p = singular / singular.sum()
    assert result.effective_rank == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-5)


def test_low_rank_change_and_rank_tolerance() -> None:
    a = torch.randn(16, 10, dtype=torch.float64).float()
    update = torch.outer(torch.randn(16), torch.randn(10)) + torch.outer(torch.randn(16), torch.randn(10))
    assert tensor_diff("w", a, a + update).rank == 2
    # A tiny third direction counts under numpy's default tolerance and is dropped with a looser one.
    noisy = a + update + 1e-4 * torch.outer(torch.randn(16), torch.randn(10))
    assert tensor_diff("w", a, noisy).rank == 3
    assert tensor_diff("w", a, noisy, rank_rtol=1e-3).rank == 2


def test_vectors_scalars_and_stacked_tensors() -> None:
    bias = torch.randn(5)
    changed = tensor_diff("b", bias, bias + 1.0)
    assert (changed.rank, changed.effective_rank, changed.top_singular_values) == (1, 1.0, [])
    assert tensor_diff("b", bias, bias.clone()).rank == 0
    assert tensor_diff("s", torch.tensor(2.0), torch.tensor(3.0)).relative_change == pytest.approx(0.5)
    experts = torch.zeros(4, 3, 6)
    update = experts.clone()
    update[:, :, 0] = 1.0  # a rank-1 update of each expert's 3 x 6 matrix
    update[0, :, 1] = torch.tensor([1.0, -1.0, 0.0])  # expert 0's update has rank 2
    stacked = tensor_diff("experts", experts + 1.0, experts + 1.0 + update)
    assert stacked.rank == 2  # the largest rank in the stack, as in weights analyze
    assert stacked.top_singular_values[1:4] == pytest.approx([math.sqrt(3)] * 3)  # the other experts


def test_zero_base_tensor_is_guarded() -> None:
    zero = torch.zeros(3, 3)
    assert tensor_diff("z", zero, zero).relative_change == 0.0
    grown = tensor_diff("z", zero, torch.eye(3))
    assert math.isinf(grown.relative_change) and grown.cosine == 0.0 and grown.rank == 3
    result = WeightDiff.build([grown], base="a", finetuned="b", top_k=5, rank_rtol=None, created_at="now")
    assert WeightDiff.model_validate_json(result.model_dump_json()) == result


def test_architecture_mismatch_lists_the_first_ones() -> None:
    base = {"a.weight": (8, 4), "b.weight": (2,), "c.weight": (3, 3), "d.weight": (1,)}
    tuned = {"a.weight": (8, 6), "c.weight": (3, 3), "e.weight": (1,), "f.weight": (1,)}
    with pytest.raises(WeightFileError) as caught:
        check_same_architecture(base, tuned)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("5 tensors differ: a.weight shape (8, 4) vs (8, 6); ")
    assert "b.weight only in base; d.weight only in base; ..." in message and "same architecture" in message
    assert check_same_architecture(base, dict(base)) == list(base)


# --- whole checkpoints --------------------------------------------------------------------------------


def test_checkpoint_against_itself_is_zero_everywhere(llama: Path) -> None:
    result = diff_checkpoints(llama, llama)
    assert result.identical and len(result.params) == len(load_file(llama / "model.safetensors"))
    for param in result.params:
        assert (param.relative_change, param.cosine, param.rank, param.diff_norm) == (0.0, 1.0, 0, 0.0)
    assert all(s.max_relative_change == 0.0 for s in result.layers + result.blocks)
    assert [s.layer_index for s in result.layers] == [0, 1]


def test_planted_rank_two_update_ranks_first(llama: Path, planted: Path) -> None:
    result = diff_checkpoints(llama, planted, top_k=4)
    top = result.ranked_params(1)[0]
    assert top.param_name == PLANTED and (top.layer_index, top.block_type) == (1, "o_proj")
    assert top.rank == 2 and top.effective_rank == pytest.approx(
        math.exp(-sum(p * math.log(p) for p in (3.0 / 4.25, 1.25 / 4.25))), rel=1e-4
    )
    assert top.top_singular_values[:2] == pytest.approx(PLANTED_SINGULAR_VALUES, rel=1e-4)
    assert top.top_singular_values[2] < 1e-5
    assert all(p.diff_norm == 0.0 for p in result.params if p.param_name != PLANTED)
    assert result.most_changed_layers[0] == 1 and result.ranked_layers(1)[0].most_changed == PLANTED
    blocks = {s.block_type: s for s in result.blocks}
    assert blocks["o_proj"].max_relative_change == top.relative_change
    assert result.layer_block_changes()[(1, "o_proj")] == pytest.approx(top.relative_change)
    assert WeightDiff.model_validate_json(result.model_dump_json()) == result


def test_mismatched_checkpoints_raise_one_line(llama: Path, tmp_path: Path) -> None:
    def reshape_and_rename(tensors: dict[str, torch.Tensor]) -> None:
        tensors["model.layers.0.mlp.up_proj.weight"] = torch.zeros(8, 4)
        tensors["model.extra.weight"] = tensors.pop("model.norm.weight")

    other = _edit_copy(llama, tmp_path / "other", reshape_and_rename)
    with pytest.raises(WeightFileError) as caught:
        diff_checkpoints(llama, other)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("3 tensors differ: ")
    assert "model.layers.0.mlp.up_proj.weight shape (128, 64) vs (8, 4)" in message
    assert "model.norm.weight only in base" in message and "model.extra.weight only in fine-tuned" in message


# --- report and command line --------------------------------------------------------------------------


def test_report_escapes_names(llama: Path, tmp_path: Path) -> None:
    evil = "model.layers.0.<script>alert(1)</script>.weight"

    def rename(tensors: dict[str, torch.Tensor]) -> None:
        tensors[evil] = tensors.pop("model.layers.0.self_attn.q_proj.weight")

    base = _edit_copy(llama, tmp_path / "base", rename)
    tuned = _edit_copy(base, tmp_path / "tuned", lambda t: t.__setitem__(evil, t[evil] * 2))
    page = render_weights_diff_html(diff_checkpoints(base, tuned))
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count('class="line-chart"') == 1 and page.count("<figure") == 2  # layer plot and heatmap
    assert_self_contained(page)  # nothing fetched


def test_cli_writes_csv_and_html(llama: Path, planted: Path, tmp_path: Path) -> None:
    out, html = tmp_path / "diff.csv", tmp_path / "diff.html"
    args = ["weights", "diff", "--base", str(llama), "--finetuned", str(planted), "--out", str(out)]
    result = runner.invoke(app, [*args, "--html", str(html), "--top", "3"])
    assert result.exit_code == 0, result.output
    assert "Most-changed tensors" in result.stdout
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(load_file(llama / "model.safetensors"))
    by_name = {row["param_name"]: row for row in rows}
    assert by_name[PLANTED]["rank"] == "2" and float(by_name[PLANTED]["relative_change"]) > 0
    layers = [row["layer_index"] for row in rows]
    assert layers == sorted(layers, key=lambda v: (v == "", int(v) if v else 0))  # non-layer tensors last
    assert html.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    as_json = runner.invoke(app, [*args, "--json"])
    assert as_json.exit_code == 0 and json.loads(as_json.stdout)["most_changed_params"][0] == PLANTED


def test_cli_bad_input_is_one_line_exit_2(llama: Path, tmp_path: Path) -> None:
    missing = runner.invoke(
        app, ["weights", "diff", "--base", str(tmp_path / "nope"), "--finetuned", str(llama), "--out", "x.csv"]
    )
    assert missing.exit_code == 2 and missing.stderr.strip().count("\n") == 0 and "nope" in missing.stderr
    other = _edit_copy(llama, tmp_path / "other", lambda t: t.pop("model.norm.weight"))
    mismatch = runner.invoke(
        app, ["weights", "diff", "--base", str(llama), "--finetuned", str(other), "--out", str(tmp_path / "d.csv")]
    )
    assert mismatch.exit_code == 2 and mismatch.stderr.strip().count("\n") == 0
    assert "only in base" in mismatch.stderr
    bad_format = runner.invoke(
        app, ["weights", "diff", "--base", str(llama), "--finetuned", str(llama), "--out", str(tmp_path / "d.xlsx")]
    )
    assert bad_format.exit_code == 2 and ".xlsx" in bad_format.stderr
