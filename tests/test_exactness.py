"""With no intervention, what mechscope captures is exactly what transformers computes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

import mechscope as ms
from mechscope.checks.doctor import hook_count
from mechscope.testing.tiny_models import FAMILIES
from tests.conftest import DECODERS, PROMPTS

Loader = Callable[..., ms.LanguageModel]


def plain(lm: ms.LanguageModel, prompts: list[str], **kwargs: Any) -> Any:
    with torch.no_grad():
        return lm.model(**lm.encode(prompts), **kwargs)


def output_of(result: Any) -> torch.Tensor:
    return result.logits if hasattr(result, "logits") else result.last_hidden_state


@pytest.mark.parametrize("family", FAMILIES)
def test_residuals_equal_hidden_states(load_tiny: Loader, family: str) -> None:
    lm = load_tiny(family, "eager")
    n = lm.arch.n_layers
    with lm.capture(["resid_pre.*", "resid_post.*"]) as cache:
        lm.forward(PROMPTS[:1])
    hidden = plain(lm, PROMPTS[:1], output_hidden_states=True).hidden_states
    assert len(hidden) == n + 1
    for layer in range(n):
        assert torch.equal(cache[f"resid_pre.{layer}"], hidden[layer]), f"resid_pre.{layer}"
    for layer in range(n - 1):
        assert torch.equal(cache[f"resid_post.{layer}"], hidden[layer + 1]), f"resid_post.{layer}"
    # transformers takes the last hidden state after the final norm; ours is the layer's own output.
    norm = lm.arch.final_norm()
    last = cache[f"resid_post.{n - 1}"]
    with torch.no_grad():
        assert torch.equal(norm(last) if norm is not None else last, hidden[n])


@pytest.mark.parametrize("family", DECODERS)
def test_lens_readout_of_last_layer_equals_logits(load_tiny: Loader, family: str) -> None:
    lm = load_tiny(family)
    last = f"resid_post.{lm.arch.n_layers - 1}"
    with lm.capture([last]) as cache:
        logits = lm.forward(PROMPTS)
    with torch.no_grad():
        assert torch.equal(lm.arch.logits(cache[last]), logits)


@pytest.mark.parametrize("family", FAMILIES)
def test_eager_patterns_equal_output_attentions(load_tiny: Loader, family: str) -> None:
    lm = load_tiny(family, "eager")
    with lm.capture(["attn_pattern.*", "attn_pattern.0.1"]) as cache:
        lm.forward(PROMPTS)
    attentions = plain(lm, PROMPTS, output_attentions=True).attentions
    for layer in range(lm.arch.n_layers):
        assert torch.equal(cache[f"attn_pattern.{layer}"], attentions[layer])
    assert torch.equal(cache["attn_pattern.0.1"], attentions[0][:, 1])


@pytest.mark.parametrize("family", FAMILIES)
def test_sdpa_model_gives_the_same_patterns(load_tiny: Loader, family: str) -> None:
    eager = load_tiny(family, "eager")
    try:
        sdpa = load_tiny(family, "sdpa")
    except ms.ModelLoadError as error:
        if "does not support" not in str(error):
            raise
        pytest.skip(f"transformers has no sdpa attention for {family}")
    before = sdpa.model.config._attn_implementation
    with sdpa.capture(["attn_pattern.*"]) as cache:
        sdpa.forward(PROMPTS[:1])
    assert sdpa.model.config._attn_implementation == before  # switched back on exit
    attentions = plain(eager, PROMPTS[:1], output_attentions=True).attentions
    for layer in range(sdpa.arch.n_layers):
        assert torch.equal(cache[f"attn_pattern.{layer}"], attentions[layer])


@pytest.mark.parametrize("family", FAMILIES)
def test_hooks_removed_after_exception_and_outputs_unchanged(load_tiny: Loader, family: str) -> None:
    lm = load_tiny(family)
    before = output_of(plain(lm, PROMPTS))
    vector = torch.ones(lm.arch.d_model)
    with pytest.raises(ZeroDivisionError):  # noqa: SIM117 - the nesting is the point
        with lm.capture(["resid_post.*", "head_out.0.*", "attn_pattern.*"]):
            with lm.intervene({"resid_post.0": ms.ops.add(vector, coeff=3.0), "attn_out.1": ms.ops.zero()}):
                lm.forward(PROMPTS)
                _ = 1 / 0
    assert hook_count(lm.model) == 0
    assert torch.equal(output_of(plain(lm, PROMPTS)), before)


def test_hooks_removed_when_forward_raises(load_tiny: Loader) -> None:
    lm = load_tiny("llama")
    with pytest.raises(ms.InputError), lm.capture(["resid_post.*"]):
        lm.forward(torch.zeros(2, 3, 4))  # a float tensor is no token ids
    with pytest.raises(IndexError), lm.capture(["resid_post.*"]):
        lm.forward(torch.full((1, 4), 10_000))  # id beyond the vocabulary fails inside the model
    assert hook_count(lm.model) == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_left_padding_last_token_equals_unpadded(load_tiny: Loader, family: str) -> None:
    lm = load_tiny(family)
    sites = ["resid_post.*", "attn_out.0", "mlp_out.1"]
    with lm.capture(sites, positions="last") as batched:
        lm.forward(PROMPTS)
    assert batched["resid_post.0"].shape == (2, lm.arch.d_model)
    for i, prompt in enumerate(PROMPTS):
        with lm.capture(sites, positions="last") as alone:
            lm.forward([prompt])
        for site in batched:
            torch.testing.assert_close(batched[site][i], alone[site][0], rtol=1e-5, atol=1e-6)
