"""One layer resolver: negative layers count from the end, a layer past the end is an error everywhere."""

from __future__ import annotations

import pytest
import torch

import mechscope as ms
from mechscope.core.layers import parse_layers, resolve_layer, resolve_layers

PROMPT, OTHER = "The capital of France is", "The capital of Japan is"


def test_resolver_counts_from_the_end_and_never_wraps() -> None:
    assert [resolve_layer(layer, 4) for layer in (0, 3, -1, -4)] == [0, 3, 3, 0]
    assert resolve_layers([-1, 3, 0], 4) == [3, 0]  # order kept, duplicates dropped
    assert resolve_layers(None, 3) == [0, 1, 2]
    for bad in (4, 9, -5):
        with pytest.raises(ms.SiteError, match=rf"layer {bad} is out of range: the model has 4 layers \(0\.\.3"):
            resolve_layer(bad, 4)
    assert parse_layers("1-2,-1", 4) == [1, 2, 3]
    with pytest.raises(ms.SiteError, match="start is after the end"):
        parse_layers("3-1", 4)


@pytest.fixture(scope="module")
def toy() -> ms.LanguageModel:
    return ms.load("toy")


def test_every_analysis_refuses_a_layer_past_the_end(toy: ms.LanguageModel) -> None:
    from mechscope.attention.patterns import focus, patterns
    from mechscope.causal import LogitDiff, TargetProb, activation_patching, attribution_patching, sweep
    from mechscope.steering.directions import diff_of_means
    from mechscope.steering.generate import ActivationSteering

    metric = LogitDiff(toy, correct=" Paris", wrong=" Tokyo")
    calls = {
        "patching": lambda: activation_patching(toy, PROMPT, OTHER, metric, layers=[9]),
        "attribution": lambda: attribution_patching(toy, PROMPT, OTHER, metric, layers=[4]),
        "ablation": lambda: sweep(toy, PROMPT, metric=TargetProb(toy, " Paris"), layers=[-5]),
        "directions": lambda: diff_of_means(toy, ["<pirate> Ahoy"], ["<formal> Hello"], layers=[9]),
        "patterns": lambda: patterns(toy, PROMPT, layers=[9]),
        "focus": lambda: focus(toy, PROMPT, 9),
        "lens": lambda: ms.LogitLens(toy).run([PROMPT], layers=[9]),
        "steering": lambda: ActivationSteering(toy).generate_with_steering(PROMPT, torch.zeros(128), layer=9),
    }
    for name, call in calls.items():
        with pytest.raises(ms.SiteError, match="out of range"):
            call()
        assert name


def test_a_negative_layer_means_the_same_layer_everywhere(toy: ms.LanguageModel) -> None:
    from mechscope.causal import LogitDiff, activation_patching

    metric = LogitDiff(toy, correct=" Paris", wrong=" Tokyo")
    last = activation_patching(toy, PROMPT, OTHER, metric, layers=[-1])
    assert last.layers == [3]
    assert last.effects == activation_patching(toy, PROMPT, OTHER, metric, layers=[3]).effects
    with toy.capture(["resid_post.-1"], positions="last") as cache:
        toy.forward(PROMPT)
    assert torch.equal(cache["resid_post.-1"], cache["resid_post.3"])


def test_a_layer_range_may_end_counted_from_the_last_layer() -> None:
    from mechscope.core.layers import parse_layers

    assert parse_layers("2--1", 4) == [2, 3]
    assert parse_layers("-3--2", 4) == [1, 2]
    with pytest.raises(ms.SiteError, match="start is after the end"):
        parse_layers("-2-1", 4)  # layers 2..1, not every layer from -2 up to 1
