"""mechscope.moe.packed: packed expert tensors read and written exactly, neurons aligned, a corpus streamed.

Every MoE family's tiny checkpoint (GPT-OSS's transposed, interleaved layout with biases included): the
canonical layout round-trips bit for bit and computes what the module computes; edits are undone bit for
bit; alignment finds a hidden permutation exactly and never changes an expert's function; `layer_batches`
hands over exactly what the experts module received.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

import mechscope as ms
from mechscope.core.points import ExpertCall, run_expert
from mechscope.errors import InputError, MoEError, SiteError
from mechscope.moe.packed import (
    ExpertWeights,
    align,
    applied,
    corpus_batches,
    layer_batches,
    packed_tensors,
    read_experts,
    write_experts,
)
from tests.conftest import MOE_FAMILIES, PROMPTS

Loader = Callable[..., ms.LanguageModel]
CORPUS = [*PROMPTS, "Rain", "A dog likes to run in the park with a red ball."]


pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def _experts(lm: ms.LanguageModel) -> nn.Module:
    return lm.arch.part("experts", lm.arch.moe_layers[0])


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in packed_tensors(module).items()}


def _same(module: nn.Module, saved: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(saved[name], p) for name, p in packed_tensors(module).items())


def _random_like(weights: ExpertWeights, seed: int = 0) -> ExpertWeights:
    generator = torch.Generator().manual_seed(seed)
    return ExpertWeights(
        {name: torch.randn(t.shape, generator=generator, dtype=t.dtype) * 0.3 for name, t in weights.tensors.items()}
    )


def _reference(module: nn.Module, w: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """One expert from canonical weights, written out by hand per family (not through the module)."""
    gate, up = x @ w["gate"].T, x @ w["up"].T
    if "gate_bias" in w:  # GPT-OSS: clamped SwiGLU with (up + 1), biases everywhere
        gate, up = gate + w["gate_bias"], up + w["up_bias"]
        gate, up = gate.clamp(max=module.limit), up.clamp(-module.limit, module.limit)
        inner = (up + 1) * gate * torch.sigmoid(gate * module.alpha)
        out: torch.Tensor = inner @ w["down"].T + w["down_bias"]
        return out
    result: torch.Tensor = (module.act_fn(gate) * up) @ w["down"].T
    return result


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_read_write_round_trip_is_bit_exact_and_means_what_the_module_computes(load_tiny: Loader, family: str) -> None:
    lm = load_tiny(family)
    module = _experts(lm)
    saved = _snapshot(module)
    weights = read_experts(module)
    assert weights.n_experts == lm.arch.n_experts and weights.d_model == lm.arch.d_model
    assert ("down_bias" in weights.tensors) == (family == "gpt_oss")
    write_experts(module, weights)
    assert _same(module, saved)
    write_experts(module, read_experts(module, copy=False))  # views of the module itself: still a no-op
    assert _same(module, saved)

    # Random values everywhere (biases too), so that a swapped gate/up or a wrong interleave shows.
    random = _random_like(weights)
    x = torch.randn(5, weights.d_model, generator=torch.Generator().manual_seed(1))
    call = ExpertCall(x, torch.zeros(5, 1, dtype=torch.long), torch.ones(5, 1))
    with applied(module, random), torch.no_grad():
        again = read_experts(module)
        for name, tensor in random.tensors.items():
            assert torch.equal(again.tensors[name], tensor), name
        for e in range(weights.n_experts):
            expected = _reference(module, random.expert(e), x)
            torch.testing.assert_close(run_expert(module, call, e, torch.arange(5)), expected)
    assert _same(module, saved)


def test_gpt_oss_layout_is_transposed_and_interleaved(load_tiny: Loader) -> None:
    module = _experts(load_tiny("gpt_oss"))
    raw = packed_tensors(module)
    weights = read_experts(module)
    assert torch.equal(weights.tensors["gate"], raw["gate_up_proj"][:, :, 0::2].transpose(1, 2))
    assert torch.equal(weights.tensors["up"], raw["gate_up_proj"][:, :, 1::2].transpose(1, 2))
    assert torch.equal(weights.tensors["down"], raw["down_proj"].transpose(1, 2))
    assert torch.equal(weights.tensors["gate_bias"], raw["gate_up_proj_bias"][:, 0::2])
    assert torch.equal(weights.tensors["up_bias"], raw["gate_up_proj_bias"][:, 1::2])
    assert torch.equal(weights.tensors["down_bias"], raw["down_proj_bias"])


def test_applied_restores_bit_exactly_after_an_error_and_when_nested(load_tiny: Loader) -> None:
    module = _experts(load_tiny("gpt_oss"))
    saved = _snapshot(module)
    weights = read_experts(module)
    with pytest.raises(RuntimeError, match="inside"), applied(module, _random_like(weights)):
        assert not _same(module, saved)
        raise RuntimeError("inside")
    assert _same(module, saved)
    with applied(module, _random_like(weights, 1)):
        outer = _snapshot(module)
        with applied(module, _random_like(weights, 2)):
            assert not _same(module, outer)
        assert _same(module, outer)
    assert _same(module, saved)


def test_a_write_of_the_wrong_shape_changes_nothing(load_tiny: Loader) -> None:
    module = _experts(load_tiny("mixtral"))
    saved = _snapshot(module)
    weights = read_experts(module)
    short = ExpertWeights({**weights.tensors, "down": weights.tensors["down"][:, :, :-1]})
    with pytest.raises(InputError, match="wrong shape for down_proj"):
        write_experts(module, short)
    with pytest.raises(InputError), applied(module, short):
        pass
    assert _same(module, saved)


@pytest.mark.parametrize("family", ["mixtral", "gpt_oss"])
def test_alignment_recovers_a_permutation_and_never_changes_the_function(load_tiny: Loader, family: str) -> None:
    lm = load_tiny(family)
    module = _experts(lm)
    weights = read_experts(module)
    perm = torch.randperm(weights.hidden, generator=torch.Generator().manual_seed(3))
    # Expert 1 := expert 0 with its hidden units shuffled: the same function, stored in another order.
    copy = weights.with_expert(1, weights.expert(0, perm))
    v0, v1 = copy.vector(0).double(), copy.vector(1).double()
    order = align(copy, 0, 1)
    aligned = copy.vector(1, order).double()
    raw_cos = float(v0 @ v1 / (v0.norm() * v1.norm()))
    aligned_cos = float(v0 @ aligned / (v0.norm() * aligned.norm()))
    assert aligned_cos == pytest.approx(1.0, abs=1e-6)
    assert raw_cos < 0.5
    assert torch.equal(perm[order], torch.arange(weights.hidden))
    x = torch.randn(7, weights.d_model, generator=torch.Generator().manual_seed(4))
    call = ExpertCall(x, torch.zeros(7, 1, dtype=torch.long), torch.ones(7, 1))
    with torch.no_grad():
        before = run_expert(module, call, 0, torch.arange(7))
        with applied(module, copy):
            torch.testing.assert_close(run_expert(module, call, 1, torch.arange(7)), before)


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_layer_batches_hand_over_what_the_experts_received(load_tiny: Loader, family: str) -> None:
    lm = load_tiny(family)
    layers = list(lm.arch.moe_layers)
    sites = [f"{kind}.{layer}" for layer in layers for kind in ("expert_index", "expert_weight")]
    sites += [f"expert_out.{layer}.*" for layer in layers]
    seen = []
    for batch in layer_batches(lm, CORPUS, layers, batch_size=3):
        seen.append(batch)
    assert not any(m._forward_pre_hooks for m in lm.model.modules())  # no hook left behind
    rows = 0
    for batches, encoded in zip(seen, corpus_batches(lm, CORPUS, 3, 2048), strict=True):
        mask = encoded["attention_mask"].bool()
        with lm.capture(sites) as cache, torch.no_grad():
            lm.model(**encoded, use_cache=False)
        for layer in layers:
            b = batches[layer]
            assert b.hidden.shape == (int(mask.sum()), lm.arch.d_model)
            assert torch.equal(b.index, cache[f"expert_index.{layer}"][mask])
            assert torch.equal(b.weight, cache[f"expert_weight.{layer}"][mask])
            for e in range(lm.arch.n_experts):
                # The site runs the padded batch, this the real tokens only: equal up to float rounding.
                torch.testing.assert_close(b.expert_out[e], cache[f"expert_out.{layer}.{e}"][mask])
            routed = b.routed()
            assert torch.equal(routed.sum(dim=1), torch.full_like(routed.sum(dim=1), lm.arch.top_k))
            every = b.outputs()
            torch.testing.assert_close(every[routed.T], b.expert_out[routed.T])
        rows += int(mask.shape[0])
    assert rows == len(CORPUS)


def test_corpus_errors_are_one_line(load_tiny: Loader) -> None:
    lm = load_tiny("mixtral")
    with pytest.raises(InputError, match="corpus is empty"):
        layer_batches(lm, [], [0])
    with pytest.raises(InputError, match="not one string"):
        corpus_batches(lm, "one prompt", 4, None)
    with pytest.raises(InputError, match="empty"):
        layer_batches(lm, ["fine", "  "], [0])
    with pytest.raises(SiteError, match="out of range"):
        layer_batches(lm, CORPUS, [7])
    with pytest.raises(MoEError, match="no experts"):
        layer_batches(load_tiny("llama"), CORPUS, [0])
