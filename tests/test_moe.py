"""MoE: router logits, chosen experts, and exact per-expert outputs from packed weights."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

import mechscope as ms
from tests.conftest import MOE_FAMILIES, PROMPTS

Loader = Callable[..., ms.LanguageModel]


def raw_experts_output(lm: ms.LanguageModel, layer: int) -> tuple[dict[str, Any], Any]:
    """Register a plain torch hook (not mechscope's) that keeps the experts module's output."""
    seen: dict[str, Any] = {}

    def hook(module: Any, args: Any, output: Any) -> None:
        seen["out"] = output

    return seen, lm.arch.part("experts", layer).register_forward_hook(hook)


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_routing_and_expert_outputs_reassemble_the_moe_output(load_tiny: Loader, family: str) -> None:
    lm = load_tiny(family)
    arch = lm.arch
    sites = ["router_logits.*", "expert_index.*", "expert_weight.*", "expert_out.*"]
    seen, handle = raw_experts_output(lm, 1)
    try:
        with lm.capture(sites) as cache:
            lm.forward(PROMPTS)
    finally:
        handle.remove()
    batch, length = lm.tokenize(PROMPTS)["input_ids"].shape
    logits = cache["router_logits.1"]
    index, weight = cache["expert_index.1"], cache["expert_weight.1"]
    assert logits.shape == (batch, length, arch.n_experts)
    assert index.shape == weight.shape == (batch, length, arch.top_k)
    assert torch.equal(index.sort(-1).values, logits.topk(arch.top_k, dim=-1).indices.sort(-1).values)
    total = torch.zeros(batch, length, arch.d_model)
    for expert in range(arch.n_experts):
        out = cache[f"expert_out.1.{expert}"]
        routed = (index == expert).any(-1)
        assert torch.equal(out[~routed], torch.zeros_like(out[~routed]))  # zero where not routed
        total += out * (weight * (index == expert)).sum(-1, keepdim=True)
    torch.testing.assert_close(total.reshape(-1, arch.d_model), seen["out"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_router_logits_equal_transformers_router_output(load_tiny: Loader, family: str) -> None:
    lm = load_tiny(family)
    with lm.capture(["router_logits.0"]) as cache:
        lm.forward(PROMPTS[:1])
    # Recompute layer 0's router from its input: resid_mid = resid_pre + attn_out, then the norm.
    with lm.capture(["attn_out.0", "resid_pre.0"]) as parts:
        lm.forward(PROMPTS[:1])
    scale = getattr(lm.model.config, "residual_multiplier", 1.0)
    mid = parts["resid_pre.0"] + parts["attn_out.0"] * scale
    norm = lm.arch.layer(0).post_attention_layernorm
    with torch.no_grad():
        expected = lm.arch.part("router", 0)(norm(mid).reshape(-1, lm.arch.d_model))[0]
    torch.testing.assert_close(cache["router_logits.0"].reshape(-1, lm.arch.n_experts), expected.float())


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_zeroing_an_expert_changes_only_its_tokens(load_tiny: Loader, family: str) -> None:
    lm = load_tiny(family)
    with lm.capture(["mlp_out.0", "expert_index.0"]) as base:
        lm.forward(PROMPTS)
    with lm.intervene({"expert_out.0.1": ms.ops.zero()}), lm.capture(["mlp_out.0"]) as ablated:
        lm.forward(PROMPTS)
    routed = (base["expert_index.0"] == 1).any(-1)
    assert routed.any() and (~routed).any()
    before, after = base["mlp_out.0"], ablated["mlp_out.0"]
    assert torch.equal(after[~routed], before[~routed])
    assert not torch.allclose(after[routed], before[routed])
