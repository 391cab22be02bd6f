"""The bulk path: prompts bucketed by length, results back in the caller's order, nothing kept."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
import torch

import mechscope as ms
from mechscope.core.batching import padded_tokens, plan_batches

Loader = Callable[..., ms.LanguageModel]


def _mixed(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = ["cat", "dog", "sea", "red", "blue", "Paris", "two", "is", "the"]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(1, 12))) for _ in range(n)]


def test_plan_sorts_within_windows_packs_by_budget_and_covers_every_prompt() -> None:
    rng = random.Random(1)
    lengths = [rng.randint(5, 20) for _ in range(500)]
    plan = plan_batches(lengths, 16, max_tokens=200, window_batches=4)
    flat = [i for window in plan for batch in window for i in batch]
    assert sorted(flat) == list(range(500))  # every prompt exactly once
    for w, window in enumerate(plan):  # a window holds consecutive prompts of the caller's order
        assert sorted(i for batch in window for i in batch) == list(range(w * 64, min(w * 64 + 64, 500)))
    for batch in (b for window in plan for b in window):
        assert len(batch) <= 16 and (len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= 200)
    in_order = plan_batches(lengths, 16, sort=False)
    assert [i for window in in_order for batch in window for i in batch] == list(range(500))
    assert padded_tokens(lengths, plan_batches(lengths, 16)) < 0.8 * padded_tokens(lengths, in_order)


@pytest.mark.parametrize("positions", ["mean", "last", 0])
def test_rows_reach_the_sink_in_the_callers_order(load_tiny: Loader, positions: str | int) -> None:
    lm = load_tiny("llama")
    prompts = _mixed(50)
    values: list[torch.Tensor] = []
    rows: list[torch.Tensor] = []

    def sink(v: dict[str, torch.Tensor], info: ms.PassInfo) -> None:
        values.append(v["resid_post.1"])
        assert info.rows is not None
        rows.append(info.rows)

    with lm.capture(["resid_post.1"], positions=positions, sink=sink):
        lm.forward_batches(prompts, batch_size=4, max_tokens=24)
    assert torch.cat(rows).tolist() == list(range(50))
    with lm.capture(["resid_post.1"], positions=positions) as one_by_one:
        for prompt in prompts:
            lm.forward(prompt)
    torch.testing.assert_close(torch.cat(values), one_by_one["resid_post.1"], rtol=1e-4, atol=1e-5)


def test_a_cache_capture_also_gets_the_callers_order(load_tiny: Loader) -> None:
    lm = load_tiny("gpt2")
    prompts = _mixed(20, seed=3)
    with lm.capture(["mlp_out.0"], positions="last") as bulk:
        lm.forward_batches(prompts, batch_size=3)
    with lm.capture(["mlp_out.0"], positions="last") as plain:
        lm.forward(prompts)
    torch.testing.assert_close(bulk["mlp_out.0"], plain["mlp_out.0"], rtol=1e-4, atol=1e-5)


def test_captures_with_a_position_axis_run_in_the_callers_order(load_tiny: Loader) -> None:
    lm = load_tiny("llama")
    prompts = _mixed(9, seed=5)
    seen: list[list[int]] = []
    with lm.capture(["resid_post.0"], sink=lambda v, info: seen.append(info.rows.tolist())):
        lm.forward_batches(prompts, batch_size=4)
    assert seen == [[0, 1, 2, 3], [4, 5, 6, 7], [8]]


def test_bad_input_is_one_clear_error_and_leaves_no_hook(load_tiny: Loader) -> None:
    lm = load_tiny("llama")
    before = len(lm._tracker.captures)
    with pytest.raises(ms.InputError, match="batch_size must be at least 1"):
        lm.forward_batches(["a"], batch_size=0)
    with pytest.raises(ms.InputError, match="no prompts given"):
        lm.forward_batches([])
    with pytest.raises(ms.InputError, match="prompt 1 is empty"):
        lm.forward_batches(["a", "  "])
    with pytest.raises(ms.InputError, match="list of prompts"):
        lm.forward_batches("a")  # type: ignore[arg-type]

    def fail(values: dict[str, torch.Tensor], info: ms.PassInfo) -> None:
        raise RuntimeError("sink failed")

    with pytest.raises(RuntimeError, match="sink failed"), lm.capture(["resid_post.0"], positions="last", sink=fail):
        lm.forward_batches(_mixed(10), batch_size=2)
    assert len(lm._tracker.captures) == before and not lm.model._forward_hooks
