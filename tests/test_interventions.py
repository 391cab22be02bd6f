"""Interventions change what they should, and nothing else."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

import mechscope as ms
from mechscope.checks.doctor import hook_count
from mechscope.testing.tiny_models import FAMILIES
from tests.conftest import DECODERS, PROMPTS

Loader = Callable[..., ms.LanguageModel]


@pytest.mark.parametrize("family", FAMILIES)
def test_zero_attn_out_changes_logits_zero_add_does_not(load_tiny: Loader, family: str) -> None:
    lm = load_tiny(family)
    base = lm.forward(PROMPTS)
    with lm.intervene({"attn_out.0": ms.ops.zero()}):
        zeroed = lm.forward(PROMPTS)
    assert not torch.allclose(zeroed, base)
    with lm.intervene({"resid_post.*": ms.ops.add(torch.zeros(lm.arch.d_model), coeff=5.0)}):
        same = lm.forward(PROMPTS)
    assert torch.equal(same, base)


@pytest.mark.parametrize("family", FAMILIES)
def test_patch_from_cache_of_same_input_is_identity(load_tiny: Loader, family: str) -> None:
    lm = load_tiny(family)
    sites = ["resid_pre.1", "attn_out.0", "mlp_out.*", "head_out.1.2"]
    with lm.capture(sites) as cache:
        base = lm.forward(PROMPTS)
    with lm.intervene({site: ms.ops.patch(cache) for site in sites}):
        patched = lm.forward(PROMPTS)
    assert torch.equal(patched, base)


def test_patch_from_another_prompt_changes_output(load_tiny: Loader) -> None:
    lm = load_tiny("llama")
    with lm.capture(["resid_pre.1"], positions="last") as other:
        lm.forward(["Two plus two is"])
    base = lm.forward(["The capital of France is"])
    with lm.intervene({"resid_pre.1": ms.ops.patch(other, positions="last")}):
        patched = lm.forward(["The capital of France is"])
    assert torch.equal(patched[:, :-1], base[:, :-1])  # earlier positions are causally upstream
    assert not torch.allclose(patched[:, -1], base[:, -1])


def test_ops_write_only_at_their_positions(load_tiny: Loader) -> None:
    lm = load_tiny("llama")
    d = lm.arch.d_model
    with lm.capture(["resid_pre.1"]) as base:
        lm.forward(PROMPTS)
    with (
        lm.intervene({"resid_post.0": ms.ops.add(torch.ones(d), coeff=2.0, positions=[1])}),
        lm.capture(["resid_pre.1"]) as steered,
    ):
        lm.forward(PROMPTS)
    diff = steered["resid_pre.1"] - base["resid_pre.1"]
    mask = lm.tokenize(PROMPTS)["attention_mask"].bool()
    for row in range(2):
        column = int(mask[row].int().argmax()) + 1  # own position 1 of each (left-padded) prompt
        changed = diff[row].abs().amax(dim=-1) > 0
        assert changed.nonzero().flatten().tolist() == [column]
        torch.testing.assert_close(diff[row, column], torch.full((d,), 2.0))


def test_per_example_vectors_and_normalize(load_tiny: Loader) -> None:
    lm = load_tiny("qwen2")
    d = lm.arch.d_model
    vectors = torch.stack([torch.zeros(d), torch.full((d,), 3.0)])
    with lm.capture(["resid_post.0"]) as base:
        lm.forward(PROMPTS)
    with (
        lm.intervene({"resid_post.0": ms.ops.add(vectors, normalize=True, coeff=2.0)}),
        lm.capture(["resid_post.0"]) as steered,
    ):
        lm.forward(PROMPTS)
    diff = steered["resid_post.0"] - base["resid_post.0"]
    assert torch.equal(diff[0], torch.zeros_like(diff[0]))
    torch.testing.assert_close(diff[1].norm(dim=-1), torch.full((diff.shape[1],), 2.0))


def test_set_scale_mean_ops(load_tiny: Loader) -> None:
    lm = load_tiny("gpt2")
    d = lm.arch.d_model
    value = torch.arange(d, dtype=torch.float32)
    with lm.capture(["mlp_out.0"]) as base:
        lm.forward(PROMPTS)
    for op, expected in [
        (ms.ops.set(value), value.expand_as(base["mlp_out.0"])),
        (ms.ops.scale(0.5), base["mlp_out.0"] * 0.5),
        (ms.ops.mean({"mlp_out.0": value}), value.expand_as(base["mlp_out.0"])),
    ]:
        with lm.intervene({"mlp_out.0": op}), lm.capture(["mlp_out.0"]) as seen:
            lm.forward(PROMPTS)
        assert torch.equal(seen["mlp_out.0"], expected)


def test_composed_ops_run_in_order(load_tiny: Loader) -> None:
    lm = load_tiny("llama")
    d = lm.arch.d_model
    with (
        lm.intervene({"resid_post.0": [ms.ops.zero(), ms.ops.add(torch.ones(d))]}),
        lm.capture(["resid_post.0"]) as seen,
    ):
        lm.forward(PROMPTS[:1])
    assert torch.equal(seen["resid_post.0"], torch.ones_like(seen["resid_post.0"]))


def test_zeroing_one_head_changes_only_that_head(load_tiny: Loader) -> None:
    lm = load_tiny("mistral")
    with lm.capture(["head_out.0"]) as base:
        lm.forward(PROMPTS)
    with lm.intervene({"head_out.0.2": ms.ops.zero()}), lm.capture(["head_out.0"]) as seen:
        lm.forward(PROMPTS)
    heads, changed = base["head_out.0"], seen["head_out.0"]
    assert heads.shape[2:] == (lm.arch.n_heads, lm.arch.head_dim)
    assert torch.equal(changed[:, :, 2], torch.zeros_like(changed[:, :, 2]))
    keep = [h for h in range(lm.arch.n_heads) if h != 2]
    assert torch.equal(changed[:, :, keep], heads[:, :, keep])


def test_read_only_sites_refuse_interventions(load_tiny: Loader) -> None:
    lm = load_tiny("llama")
    with pytest.raises(ms.InterventionError, match="read-only"):
        lm.intervene({"attn_pattern.0": ms.ops.zero()})
    with pytest.raises(ms.InterventionError, match="not an op"):
        lm.intervene({"resid_post.0": "zero"})  # type: ignore[dict-item]


def test_bad_vector_shape_is_a_clear_error(load_tiny: Loader) -> None:
    lm = load_tiny("llama")
    with pytest.raises(ms.InterventionError, match="shape"), lm.intervene({"resid_post.0": ms.ops.add(torch.ones(7))}):
        lm.forward(PROMPTS)
    assert hook_count(lm.model) == 0


@pytest.mark.parametrize("family", DECODERS)
def test_generate_with_intervention_matches_full_forward_loop(load_tiny: Loader, family: str) -> None:
    """Steering in generate (KV cache on) equals steering every position of full forward passes."""
    lm = load_tiny(family)
    vector = torch.randn(lm.arch.d_model, generator=torch.Generator().manual_seed(0))
    ops = {"resid_post.0": ms.ops.add(vector, coeff=2.0)}
    with lm.intervene(ops):
        text = lm.generate(PROMPTS[0], max_new_tokens=5)
        ids = lm.tokenize(PROMPTS[:1])["input_ids"]
        for _ in range(5):
            ids = torch.cat([ids, lm.forward(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    prompt_length = lm.tokenize(PROMPTS[:1])["input_ids"].shape[1]
    expected = lm.tokenizer.decode(ids[0, prompt_length:], skip_special_tokens=True)
    assert text == expected
    assert lm.generate(PROMPTS[0], max_new_tokens=5) != text or torch.allclose(vector, torch.zeros_like(vector))


def test_generate_batch_left_padded_matches_single(load_tiny: Loader) -> None:
    lm = load_tiny("llama")
    batch = lm.generate(PROMPTS, max_new_tokens=6)
    assert batch == [lm.generate(p, max_new_tokens=6) for p in PROMPTS]


def test_last_position_intervention_hits_each_new_token(load_tiny: Loader) -> None:
    lm = load_tiny("llama")
    d = lm.arch.d_model
    with (
        lm.intervene({"resid_post.1": ms.ops.zero(positions="last")}),
        lm.capture(["resid_post.1"], positions="last") as cache,
    ):
        lm.generate(PROMPTS[0], max_new_tokens=4)
    steps = cache.passes("resid_post.1")
    assert len(steps) == 4  # the prompt pass and three KV-cache steps
    assert all(torch.equal(step, torch.zeros(1, d)) for step in steps)
    assert cache["resid_post.1"].shape == (1, 4, d)
