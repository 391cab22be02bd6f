"""Activation patching on the organism: the fact flows from the subject to the last position."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import mechscope as ms
from mechscope.causal import LogitDiff, PatchingResult, activation_patching
from mechscope.cli.main import app
from mechscope.zoo.card import read_card

CLEAN, CORRUPTED = "The capital of France is", "The capital of Japan is"
# The bundled toy's planted previous-token head reads the subject's last token from the final position.
PLANTED_LAYER = read_card("toy")["training"]["config"]["previous_token_head"][0]


@pytest.fixture(scope="module")
def toy() -> ms.LanguageModel:
    return ms.load("toy")


def test_patching_finds_the_fact_at_the_last_position_from_the_planted_layer(toy: ms.LanguageModel) -> None:
    metric = LogitDiff(toy, correct=" Paris", wrong=" Tokyo")
    result = activation_patching(toy, CLEAN, CORRUPTED, metric)
    subject = result.tokens.index("rance")  # the subject's last token, just before the final " is"
    last = len(result.tokens) - 1
    assert subject == last - 1
    assert result.clean_metric > 0 > result.corrupted_metric
    # The planted previous-token head copies the subject into the last position, so from its layer on the
    # fact lives there and patching the subject's own residual no longer matters.
    assert all(row[last] > 0.9 and abs(row[subject]) < 0.1 for row in result.effects[PLANTED_LAYER:])
    assert all(abs(e) < 0.1 for row in result.effects for e in row[:subject])  # the shared prefix is inert
    assert PatchingResult.model_validate_json(result.model_dump_json()) == result


def test_patching_matches_a_single_intervention(toy: ms.LanguageModel) -> None:
    """The batched sweep gives what one hand-written patch does for the same cell."""
    metric = LogitDiff(toy, correct=" Paris", wrong=" Tokyo")
    result = activation_patching(toy, CLEAN, CORRUPTED, metric, site="mlp_out", layers=[1])
    with toy.capture(["mlp_out.1"], positions=5) as clean:
        toy.forward(CLEAN)
    with toy.intervene({"mlp_out.1": ms.ops.patch(clean, positions=5)}):
        patched = float(metric(toy.forward(CORRUPTED))[0])
    expected = (patched - result.corrupted_metric) / (result.clean_metric - result.corrupted_metric)
    assert result.effects[0][5] == pytest.approx(expected, abs=1e-4)


def test_patching_errors(toy: ms.LanguageModel) -> None:
    metric = LogitDiff(toy, correct=" Paris", wrong=" Tokyo")
    with pytest.raises(ms.InputError, match="equal length"):
        activation_patching(toy, CLEAN, "The capital of Spain is", metric)
    with pytest.raises(ms.SiteError, match="cannot patch"):
        activation_patching(toy, CLEAN, CORRUPTED, metric, site="attn_pattern")
    with pytest.raises(ms.InputError, match="single tokens"):
        LogitDiff(toy, correct=" Paris is", wrong=" Tokyo")
    with pytest.raises(ms.InputError, match="same metric"):
        activation_patching(toy, CLEAN, CLEAN, metric)


def test_patch_command(tmp_path: Path) -> None:
    page = tmp_path / "patch.html"
    args = ["patch", "--clean", CLEAN, "--corrupted", CORRUPTED, "--correct", " Paris", "--wrong", " Tokyo"]
    result = CliRunner().invoke(app, [*args, "--json", "--html", str(page), "--attribution"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["attribution"]["correlation"] > 0.3  # see test_attribution_patching_correlates_...
    assert len(data["effects"]) == 4 and torch.tensor(data["effects"]).shape[1] == len(data["tokens"])
    assert page.read_text().count("data-effect=") == 4 * len(data["tokens"])
    assert data["metric"] == "logit diff ␣Paris − ␣Tokyo"
    assert "logit diff ␣Paris − ␣Tokyo" in page.read_text(encoding="utf-8")


def test_attribution_patching_correlates_with_activation_patching(toy: ms.LanguageModel) -> None:
    from mechscope.causal.patching import attribution_patching, correlation
    from mechscope.checks.doctor import hook_count

    metric = LogitDiff(toy, correct=" Paris", wrong=" Tokyo")
    for site in ("resid_post", "attn_out", "mlp_out"):
        real = activation_patching(toy, CLEAN, CORRUPTED, metric, site=site)
        estimate = attribution_patching(toy, CLEAN, CORRUPTED, metric, site=site)
        assert estimate.corrupted_metric == pytest.approx(real.corrupted_metric, abs=1e-4)
        r = correlation(real.effects, estimate.effects)
        # Measured here: 0.56, 0.42, 0.66. The first-order estimate gets where the effect is but not its size,
        # because France -> Japan is a large change through the planted head's saturated attention.
        assert r > 0.3, (site, r)
        last = len(real.tokens) - 1
        assert all(abs(e) < 0.05 for row in estimate.effects for e in row[: last - 1]), site
    assert all(p.grad is None for p in toy.model.parameters())  # no gradient leaks into the model
    assert hook_count(toy.model) == 0
    with pytest.raises(ms.PositionError, match="keep_grad"):
        toy.capture(["resid_post.0"], positions="last", keep_grad=True)


def test_head_out_patching_per_position(toy: ms.LanguageModel) -> None:
    from mechscope.causal.patching import attribution_patching

    metric = LogitDiff(toy, correct=" Paris", wrong=" Tokyo")
    real = activation_patching(toy, CLEAN, CORRUPTED, metric, site="head_out")
    assert real.effects[PLANTED_LAYER][-1] > 0.9  # the planted head's layer at the final token carries the answer
    assert all(abs(e) < 0.1 for e in real.effects[PLANTED_LAYER][:-1])
    with pytest.raises(ms.SiteError, match="attribution patching supports"):
        attribution_patching(toy, CLEAN, CORRUPTED, metric, site="head_out")


def test_interrupted_patching_keeps_the_finished_layers(toy: ms.LanguageModel) -> None:
    calls = 0
    base = LogitDiff(toy, correct=" Paris", wrong=" Tokyo")

    def metric(logits: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        if calls == 4:  # clean, corrupted, layer 0, then "Ctrl-C"
            raise KeyboardInterrupt
        return base(logits)

    result = activation_patching(toy, CLEAN, CORRUPTED, metric)
    assert result.partial and result.layers == [0] and len(result.effects) == 1
