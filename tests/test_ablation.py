"""Ablation sweeps on the organisms: the recall layer matters, methods differ, sweeps are batched."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

import mechscope as ms
from mechscope.causal import (
    AblationResult,
    TargetProb,
    contains,
    function_call,
    parse_criterion,
    regex,
    sweep,
)
from mechscope.cli.main import app
from mechscope.zoo.card import read_card

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def toy() -> ms.LanguageModel:
    return ms.load("toy")


def test_ablating_the_planted_previous_token_head_drops_the_answer(toy: ms.LanguageModel) -> None:
    """The planted previous-token head carries the subject into the last position; without it, no answer."""
    layer, head = read_card("toy")["training"]["config"]["previous_token_head"]
    metric = TargetProb(toy, " Paris")
    result = sweep(toy, PROMPT, component="attn", metric=metric)
    by_layer = {e.layer: e.metric for e in result.effects}
    assert result.clean_metric is not None and result.clean_metric > 0.9
    assert by_layer[layer] < 0.05  # the planted head's layer moves the answer
    assert max(by_layer.values()) > 0.4  # and not every layer does (measured here: 0.00, 0.56, 0.09, 0.45)
    heads = sweep(toy, PROMPT, component="head", metric=metric)
    worst = min(heads.effects, key=lambda e: e.metric if e.metric is not None else 1.0)
    assert (worst.layer, worst.index) == (layer, head) and worst.metric is not None and worst.metric < 0.05
    assert AblationResult.model_validate_json(result.model_dump_json()) == result


def test_methods_give_different_sane_results(toy: ms.LanguageModel) -> None:
    metric = TargetProb(toy, " Paris")
    reference = ["The capital of Spain is", "The capital of Italy is", "The opposite of hot is"]
    zero = sweep(toy, PROMPT, component="mlp", metric=metric)
    mean = sweep(toy, PROMPT, component="mlp", method="mean", reference=reference, metric=metric)
    resample = sweep(
        toy, PROMPT, component="mlp", method="resample", resample_from="The capital of Japan is", metric=metric
    )
    values = [[e.metric for e in r.effects] for r in (zero, mean, resample)]
    assert values[0] != values[1] != values[2]
    assert all(0.0 <= v <= 1.0 for row in values for v in row)
    with pytest.raises(ms.InputError, match="reference prompts"):
        sweep(toy, PROMPT, component="mlp", method="mean", metric=metric)
    with pytest.raises(ms.InputError, match="exactly one"):
        sweep(toy, PROMPT, metric=metric, criterion=function_call)


def test_head_sweep_is_one_batched_pass_per_layer(toy: ms.LanguageModel) -> None:
    passes = 0

    def count(*_: Any) -> None:
        nonlocal passes
        passes += 1

    handle = toy.model.register_forward_hook(count)
    try:
        result = sweep(toy, PROMPT, component="head", metric=TargetProb(toy, " Paris"))
    finally:
        handle.remove()
    assert passes == toy.arch.n_layers  # one pass per layer with a row per head (the first adds the clean row)
    assert len(result.effects) == toy.arch.n_layers * toy.arch.n_heads
    single = next(e for e in result.effects if (e.layer, e.index) == (3, 0))
    with toy.intervene({"head_out.3.0": ms.ops.zero()}):
        alone = float(TargetProb(toy, " Paris")(toy.forward(PROMPT))[0])
    assert single.metric == pytest.approx(alone, abs=1e-5)  # a batched row equals the ablation run alone


def test_expert_sweep_on_the_moe_organism() -> None:
    lm = ms.load("toy-moe")
    result = sweep(lm, PROMPT, component="expert", metric=TargetProb(lm, " Paris"), layers=[0])
    assert [(e.layer, e.index) for e in result.effects] == [(0, e) for e in range(lm.arch.n_experts)]
    assert min(e.metric for e in result.effects) < 0.5 * (result.clean_metric or 1.0)


def test_criteria(toy: ms.LanguageModel) -> None:
    assert contains("Paris")(" Paris is nice") and not contains("Rome")(" Paris")
    assert regex(r"\d+")("call 42") and not regex(r"^\d")("x1")
    assert function_call("<call>weather(city=Paris)</call>") and function_call("lookup(query=x)")
    assert not function_call("I am fine, thank you.")
    assert parse_criterion("contains:abc")("xabcx") and parse_criterion("regex:a+b")("caab")
    with pytest.raises(ms.InputError, match="unknown criterion"):
        parse_criterion("starts:abc")
    result = sweep(
        toy,
        "<user> What's the weather in Paris?<assistant>",
        component="attn",
        criterion=parse_criterion("contains:<call>"),
        max_new_tokens=8,
    )
    assert result.clean_criterion is True and all(e.text is not None for e in result.effects)
    assert result.criterion == "contains '<call>'"  # named in the result, so its page can say what was checked
    assert (
        parse_criterion("regex:a+b").__name__ == "matches /a+b/"
        and parse_criterion("function_call").__name__ == "function_call"
    )


def test_interrupted_sweep_returns_a_partial_result(toy: ms.LanguageModel) -> None:
    calls = 0
    base = TargetProb(toy, " Paris")

    def metric(logits: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        if calls == 3:  # clean run, first layer of heads, then "Ctrl-C"
            raise KeyboardInterrupt
        return base(logits)

    result = sweep(toy, PROMPT, component="head", metric=metric)
    assert result.partial and len(result.effects) == toy.arch.n_heads


def test_ablate_command(tmp_path: Path) -> None:
    out = tmp_path / "ablation.json"
    page = tmp_path / "ablation.html"
    args = ["ablate", "-p", PROMPT, "--component", "head", "--target", " Paris", "--json", "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--html", str(page)])
    assert result.exit_code == 0, result.output
    assert page.read_text().count("data-delta=") == 16
    saved = AblationResult.model_validate_json(out.read_text())
    assert len(saved.effects) == 16 and not saved.partial
    assert saved.metric == "p(␣Paris)"
    bad = CliRunner().invoke(app, ["ablate", "-p", PROMPT, "--criterion", "nope"])
    assert bad.exit_code == 2 and "unknown criterion" in bad.stderr


def test_kl_to_clean_metric_and_grid(toy: ms.LanguageModel) -> None:
    from mechscope.causal import KLToClean, grid

    result = sweep(toy, PROMPT, component="attn", metric=KLToClean())
    assert result.clean_metric == pytest.approx(0.0, abs=1e-6)  # the clean run is at distance 0 from itself
    assert all(e.metric is not None and e.metric <= 1e-6 for e in result.effects)
    by_layer = {e.layer: e.metric for e in result.effects}
    assert by_layer[3] < by_layer[1]  # the recall layer moves the distribution most
    with pytest.raises(ms.InputError, match="fit"):
        KLToClean()(torch.zeros(1, 2, 3))
    both = grid(toy, PROMPT, ["attn", "mlp"], metric=TargetProb(toy, " Paris"))
    assert both.component == "attn+mlp" and len(both.effects) == 2 * toy.arch.n_layers


@pytest.mark.parametrize(("component", "method"), [("mlp", "zero"), ("head", "zero"), ("attn", "resample")])
def test_the_clean_row_of_the_first_pass_is_the_plain_forward(
    toy: ms.LanguageModel, component: str, method: str
) -> None:
    """The sweep measures its clean run as an extra, untouched row of its first batched pass."""
    metric = TargetProb(toy, " Paris")
    other = "The capital of Spain is"  # resample: activations from a prompt of the same length
    result = sweep(toy, PROMPT, component=component, method=method, metric=metric, layers=[0, 1], resample_from=other)
    with torch.no_grad():
        plain = float(metric(toy.forward(PROMPT))[0])
    assert result.clean_metric == pytest.approx(plain, abs=1e-6)
    assert {e.delta for e in result.effects} != {0.0}  # the ablated rows were changed, the clean one was not
    for effect in result.effects:
        assert effect.delta == pytest.approx(effect.metric - plain, abs=1e-6)
