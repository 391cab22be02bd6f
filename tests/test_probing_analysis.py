"""The circuit pipeline end to end on toy (issue 19): create, collect, analyze, directions, visualize, steer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import mechscope as ms
from mechscope.cli.main import app
from mechscope.core.direction import Direction
from mechscope.probing.analysis_results import LayerAnalysis
from mechscope.probing.analyze import layer_directions, steering_check
from mechscope.probing.dataset import tool_prompt_dataset
from mechscope.probing.direction_results import ExtractedDirections
from mechscope.probing.store import ActivationSet
from mechscope.zoo.card import read_card

pytest.importorskip("sklearn")
runner = CliRunner()

#: Chit-chat prompts of other slot values than the collected set's.
CHAT = [p.prompt for p in tool_prompt_dataset(per_tool=2, seed=9).prompts if p.label == 0]


@pytest.fixture(scope="module")
def tool_layer() -> int:
    """The layer where the card's held-out tool-mode probe reads best."""
    return int(np.argmax(read_card("toy")["measurements"]["probes"]["tool"]))


@pytest.fixture(scope="module")
def acts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("circuit")
    out = runner.invoke(app, ["circuit", "dataset", "create", "-o", str(folder / "p.json"), "--per-tool", "8"])
    assert out.exit_code == 0, out.output
    out = runner.invoke(app, ["circuit", "collect", "-m", "toy", "-d", str(folder / "p.json"), "-o", str(folder / "a")])
    assert out.exit_code == 0, out.output
    return folder / "a"


def test_dataset_show_counts_labels_and_templates(acts: Path) -> None:
    out = runner.invoke(app, ["circuit", "dataset", "show", str(acts.parent / "p.json"), "--json"])
    assert out.exit_code == 0, out.output
    shown = json.loads(out.output)
    assert shown["prompts"] == 128 and shown["labels"] == {"0": 64, "1": 64}
    assert shown["templates"] == {"0": 18, "1": 32} and shown["sub_labels"]["1/weather"] == 8


def test_analyze_reports_probes_with_baselines_and_geometry(acts: Path, tool_layer: int) -> None:
    out = runner.invoke(app, ["circuit", "analyze", "-a", str(acts), "--layer", str(tool_layer), "--json"])
    assert out.exit_code == 0, out.output
    result = LayerAnalysis.model_validate_json(out.output)
    label = result.probe("label")
    assert label.majority == 0.5 and label.accuracy >= 0.85 and label.selectivity > 0.3, label  # 128 prompts
    assert result.probe("label", "diff_means").accuracy >= 0.8
    assert result.probe("sub_label").n_classes == 8
    g = result.geometry
    assert g.n == 128 and g.classes == ["0", "1"] and g.fisher_ratio > 0 and len(g.points) == 128
    assert 1 <= g.intrinsic_dim_90 <= g.intrinsic_dim_95 <= 128
    table = runner.invoke(app, ["circuit", "analyze", "-a", str(acts), "--layer", "9"])
    assert table.exit_code == 2 and "layer 9 was not collected" in table.output


def test_directions_are_saved_as_directions_and_separate_held_out(acts: Path, tool_layer: int, tmp_path: Path) -> None:
    out = runner.invoke(
        app, ["circuit", "directions", "-a", str(acts), "--layer", str(tool_layer), "-o", str(tmp_path), "--json"]
    )
    assert out.exit_code == 0, out.output
    result = ExtractedDirections.model_validate_json(out.output)
    assert [i.name for i in result.items][:2] == ["label", "calendar"] and len(result.items) == 9
    label = result.item("label")
    assert label.held_out and label.auc > 0.95
    lm = ms.load("toy")
    direction = Direction.load(tmp_path / "label.safetensors", lm)
    assert direction.layer == tool_layer and direction.meta["positive"] == "label 1"
    # coefficient 1 is the class means' separation along the direction
    data = ActivationSet(acts)
    x, y = data.features(f"resid_post.{tool_layer}"), np.asarray(data.labels())
    unit = direction.unit().numpy()
    assert float((x[y == 1].mean(0) - x[y == 0].mean(0)) @ unit) == pytest.approx(float(direction.vector.norm()), 1e-4)
    for method in ("probe", "lda", "pca"):
        other, _ = layer_directions(data, tool_layer, method)  # type: ignore[arg-type]
        assert other.item("label").cosine_to_diff_means > 0.2, method


def test_the_tool_mode_direction_raises_the_call_token_on_chit_chat(acts: Path, tool_layer: int) -> None:
    lm = ms.load("toy")
    _, directions = layer_directions(ActivationSet(acts), tool_layer)
    check = steering_check(lm, directions["label"], CHAT, "<call>", (0.0, 0.5, 1.0, 2.0))
    plain = lm.forward(CHAT)[:, -1].softmax(-1)[:, lm.token_id("<call>")].mean()
    assert check.at(0.0) == pytest.approx(float(plain), rel=1e-6) and check.at(0.0) < 0.01
    assert check.at(1.0) > 0.3 and check.at(2.0) > check.at(0.5) > check.at(0.0), check
    args = ["circuit", "steer", "-m", "toy", "-a", str(acts), "--layer", str(tool_layer), "-c", "2", "-n", "6"]
    out = runner.invoke(app, [*args, "-p", CHAT[0], "-p", CHAT[1], "--target", "<call>", "--json"])
    assert out.exit_code == 0, out.output
    shown = json.loads(out.output)
    assert shown["check"]["probabilities"][1] > 0.5 > shown["check"]["probabilities"][0]
    assert shown["generations"][0]["steered"] != shown["generations"][0]["plain"]
    bad = runner.invoke(app, [*args, "-p", CHAT[0], "--direction", "nope"])
    assert bad.exit_code == 2 and "no direction 'nope'" in bad.output


def test_visualize_draws_every_layer_escaped(acts: Path, tmp_path: Path) -> None:
    page = tmp_path / "viz.html"
    out = runner.invoke(
        app, ["circuit", "visualize", "-a", str(acts), "--all", "--html", str(page), "--permutations", "2"]
    )
    assert out.exit_code == 0, out.output
    html = page.read_text(encoding="utf-8")
    assert html.count('fill-opacity="0.7"') == 4 * 128 and "Probe accuracy by layer" in html
    assert all(f"Layer {layer} (resid_post.{layer})" in html for layer in range(4))


def test_steering_check_with_coefficient_zero_is_the_plain_model() -> None:
    lm = ms.load("toy")
    direction = Direction(vector=torch.randn(lm.arch.d_model), layer=1, model=lm.source)
    check = steering_check(lm, direction, CHAT[:3], "<call>", (0.0,))
    plain = lm.forward(CHAT[:3])[:, -1].float().softmax(-1)[:, lm.token_id("<call>")].mean()
    assert check.probabilities == [float(plain)]
