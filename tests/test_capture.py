"""Capture options: positions under padding, pooling, device and dtype, sinks, missing hooks, storage."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import mechscope as ms
from tests.conftest import PROMPTS

Loader = Callable[..., ms.LanguageModel]


def test_positions_are_in_each_prompts_own_coordinates(load_tiny: Loader) -> None:
    lm = load_tiny("llama")
    mask = lm.tokenize(PROMPTS)["attention_mask"].bool()
    starts = mask.int().argmax(dim=1)
    with lm.capture(["resid_post.0"]) as full:
        lm.forward(PROMPTS)
    everything = full["resid_post.0"]
    rows = torch.arange(2)
    for positions, columns in [
        (0, starts),
        (2, starts + 2),
        (-1, torch.full((2,), mask.shape[1] - 1)),
        (torch.tensor([1, 3]), starts + torch.tensor([1, 3])),
    ]:
        with lm.capture(["resid_post.0"], positions=positions) as cache:
            lm.forward(PROMPTS)
        assert torch.equal(cache["resid_post.0"], everything[rows, columns])
    with lm.capture(["resid_post.0"], positions=[0, 1]) as pair:
        lm.forward(PROMPTS)
    assert pair["resid_post.0"].shape == (2, 2, lm.arch.d_model)
    assert torch.equal(pair["resid_post.0"][:, 1], everything[rows, starts + 1])
    with lm.capture(["resid_post.0"], positions=slice(0, 2)) as sliced:
        lm.forward(PROMPTS)
    assert torch.equal(sliced["resid_post.0"], pair["resid_post.0"])


def test_right_padded_encoder_last_and_mean(load_tiny: Loader) -> None:
    lm = load_tiny("bert")
    assert lm.tokenizer.padding_side == "right"
    mask = lm.tokenize(PROMPTS)["attention_mask"]
    with lm.capture(["resid_post.1"]) as full:
        lm.forward(PROMPTS)
    with lm.capture(["resid_post.1"], positions="last") as last:
        lm.forward(PROMPTS)
    with lm.capture(["resid_post.1"], positions="mean") as pooled:
        lm.forward(PROMPTS)
    lengths = mask.sum(dim=1)
    everything = full["resid_post.1"]
    assert torch.equal(last["resid_post.1"], everything[torch.arange(2), lengths - 1])
    expected = (everything * mask[..., None]).sum(1) / lengths[:, None]
    torch.testing.assert_close(pooled["resid_post.1"], expected)


def test_pattern_positions_select_query_rows(load_tiny: Loader) -> None:
    lm = load_tiny("llama")
    with lm.capture(["attn_pattern.1", "attn_pattern.1.0"]) as full:
        lm.forward(PROMPTS)
    with lm.capture(["attn_pattern.1", "attn_pattern.1.0"], positions="last") as last:
        lm.forward(PROMPTS)
    assert torch.equal(last["attn_pattern.1"], full["attn_pattern.1"][:, :, -1])
    assert torch.equal(last["attn_pattern.1.0"], full["attn_pattern.1.0"][:, -1])


def test_position_errors(load_tiny: Loader) -> None:
    lm = load_tiny("llama")
    with pytest.raises(ms.PositionError, match="outside prompt"), lm.capture(["resid_post.0"], positions=40):
        lm.forward(PROMPTS)
    with pytest.raises(ms.PositionError, match="unknown positions"):
        lm.capture(["resid_post.0"], positions="first")


def test_device_dtype_and_grad_free(load_tiny: Loader) -> None:
    lm = load_tiny("gpt2")
    with lm.capture(["resid_post.*"], to="cpu", dtype="float16") as cache:
        lm.forward(PROMPTS)
    with lm.capture(["resid_post.*"]) as exact:
        lm.forward(PROMPTS)
    assert cache["resid_post.1"].dtype == torch.float16
    assert torch.equal(cache["resid_post.1"], exact["resid_post.1"].half())
    assert not exact["resid_post.1"].requires_grad


def test_sink_streams_every_pass_and_keeps_nothing(load_tiny: Loader) -> None:
    lm = load_tiny("qwen3")
    prompts = [f"The cat number {i} is" for i in range(7)]
    seen: list[torch.Tensor] = []
    with lm.capture(["resid_post.1"], positions="last", sink=lambda v, info: seen.append(v["resid_post.1"])) as c:
        assert lm.forward_batches(prompts, batch_size=3) == 3
    assert sum(t.shape[0] for t in seen) == 7
    assert len(c) == 0
    with lm.capture(["resid_post.1"], positions="last") as whole:
        lm.forward(prompts)
    torch.testing.assert_close(torch.cat(seen), whole["resid_post.1"], rtol=1e-5, atol=1e-6)


class _RowsOnly:
    """A sink that keeps rows and says it never reads the pass layout."""

    needs_info = False

    def __init__(self) -> None:
        self.rows: list[torch.Tensor] = []

    def __call__(self, values: dict[str, torch.Tensor], info: object) -> None:
        self.rows.append(values["resid_post.1"])


def test_a_sink_that_needs_no_layout_gets_every_pass_of_a_generation(load_tiny: Loader) -> None:
    """Untracked, the sink gets the same values (one site: as its hook fires; several: one pass late, the last
    on exit), and nothing of the model changes; reading ``info`` there is a clear error, not a wrong layout."""
    lm = load_tiny("llama")
    prompts = ["The cat sat on the", "A dog"]  # padded: the batch has a layout it could have needed
    tracked: list[torch.Tensor] = []
    with lm.capture(["resid_post.1"], sink=lambda values, info: tracked.append(values["resid_post.1"])):
        plain = lm.generate(prompts, max_new_tokens=4)
    rows_only = _RowsOnly()
    with lm.capture(["resid_post.1"], sink=rows_only):
        assert lm.generate(prompts, max_new_tokens=4) == plain
    assert len(rows_only.rows) == len(tracked) == 4  # the prompt pass and three steps with the KV cache
    for ours, theirs in zip(rows_only.rows, tracked, strict=True):
        assert torch.equal(ours, theirs)

    class TwoSites(_RowsOnly):
        def __call__(self, values: dict[str, torch.Tensor], info: object) -> None:
            assert set(values) == {"resid_post.0", "resid_post.1"}  # a whole pass, never a part of one
            self.rows.append(values["resid_post.1"])

    two = TwoSites()
    with lm.capture(["resid_post.0", "resid_post.1"], sink=two):
        assert lm.generate(prompts, max_new_tokens=4) == plain
    assert len(two.rows) == 4 and all(torch.equal(a, b) for a, b in zip(two.rows, tracked, strict=True))

    def reads_layout(values: dict[str, torch.Tensor], info: object) -> None:
        assert info.offset >= 0  # type: ignore[attr-defined]

    reads_layout.needs_info = False  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match="needs_info = False"), lm.capture(["resid_post.1"], sink=reads_layout):
        lm.forward(prompts)


def test_several_forward_calls_stack_along_batch(load_tiny: Loader) -> None:
    lm = load_tiny("qwen3")
    with lm.capture(["mlp_out.0"], positions="last") as cache:
        lm.forward(PROMPTS[:1])
        lm.forward(PROMPTS[1:])
    assert cache.n_passes == 2
    assert cache["mlp_out.0"].shape == (2, lm.arch.d_model)


def test_a_hook_that_does_not_fire_is_an_error(load_tiny: Loader, tiny_dir: Callable[[str], Path]) -> None:
    lm = ms.load(tiny_dir("llama"))  # a private copy: this test edits its config
    lm.model.config.num_hidden_layers = 1  # the model now skips its second layer
    with pytest.raises(ms.HookNotFiredError, match=r"resid_post\.1 did not run"), lm.capture(["resid_post.*"]):
        lm.forward(PROMPTS)


def test_cache_save_and_load_roundtrip(load_tiny: Loader, tmp_path: Path) -> None:
    lm = load_tiny("llama")
    with lm.capture(["resid_post.*", "head_out.0.1"], positions="last") as cache:
        lm.forward(PROMPTS)
    cache.meta["prompts"] = PROMPTS
    path = cache.save(tmp_path / "acts.safetensors")
    again = ms.Cache.load(path)
    assert again.sites == cache.sites and again.positions == "last"
    assert again.meta["prompts"] == PROMPTS
    for site in cache:
        assert torch.equal(again[site], cache[site])


def test_forward_input_errors(load_tiny: Loader) -> None:
    lm = load_tiny("gpt2")
    with pytest.raises(ms.InputError, match="prompt 1 is empty"):
        lm.forward(["fine", "  "])
    with pytest.raises(ms.InputError, match="no prompts"):
        lm.forward([])
    with pytest.raises(ms.InputError, match="takes at most 128"):
        lm.forward(["the cat " * 200])
    with pytest.raises(ms.InputError, match="encoder"):
        load_tiny("bert").generate("hello")
