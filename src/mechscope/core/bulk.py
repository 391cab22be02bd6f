"""The bulk path: stream many prompts through the model, bucketed by length, in bounded memory.

`LanguageModel.forward_batches` runs here. Prompts are tokenized once; batches are planned by
`mechscope.core.batching` (sorted by length within windows, packed by count and token budget) whenever
every open capture yields one row per prompt, so that each window's rows can be handed back in the
caller's order; otherwise batches run in the caller's order. Nothing of a finished batch is kept: its
logits are dropped before the next batch runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from mechscope.core.batching import plan_batches
from mechscope.errors import InputError
from mechscope.progress import bar

if TYPE_CHECKING:
    from mechscope.core.lm import LanguageModel


def check_prompts(prompts: Sequence[str]) -> list[str]:
    """``prompts`` as a list, once every one is a non-empty string.

    Raises:
        InputError: no prompts, a prompt that is not a string, or an empty prompt.
    """
    batch = list(prompts)
    if not batch:
        raise InputError("no prompts given; pass at least one string")
    for i, prompt in enumerate(batch):
        if not isinstance(prompt, str):
            raise InputError(f"prompt {i} is a {type(prompt).__name__}, not a string; pass text or token ids")
        if not prompt.strip():
            raise InputError(f"prompt {i} is empty; every prompt needs at least one token")
    return batch


def token_ids(lm: LanguageModel, prompts: Sequence[str]) -> list[list[int]]:
    """Each prompt's token ids, unpadded, with the same checks as `LanguageModel.tokenize`."""
    ids: list[list[int]] = lm.tokenizer(check_prompts(prompts))["input_ids"]
    limit = lm.max_length
    for i, row in enumerate(ids):
        if not row:
            raise InputError(f"prompt {i} tokenizes to nothing")
        if limit is not None and len(row) > limit:
            raise InputError(f"prompt {i} has {len(row)} tokens; the model takes at most {limit}")
    return ids


def forward_batches(
    lm: LanguageModel,
    prompts: Sequence[str],
    *,
    batch_size: int = 64,
    max_tokens: int | None = None,
    progress: bool = False,
) -> int:
    """Run every prompt once (see `LanguageModel.forward_batches`); returns the number of batches run."""
    if isinstance(prompts, str):
        raise InputError("forward_batches takes a list of prompts; for one prompt use lm.forward")
    ids = token_ids(lm, prompts)
    captures = list(lm._tracker.captures)
    reorder = all(capture.rows_align for capture in captures)
    plan = plan_batches([len(row) for row in ids], batch_size, max_tokens=max_tokens, sort=reorder)
    extra: dict[str, Any] = {"use_cache": False} if lm.arch.kind == "decoder" else {}
    with bar("forward", len(ids), enabled=progress) as shown:
        _run_plan(lm, ids, plan, captures, reorder, extra, shown)
    return sum(len(window) for window in plan)


def _run_plan(
    lm: LanguageModel,
    ids: list[list[int]],
    plan: list[list[list[int]]],
    captures: list[Any],
    reorder: bool,
    extra: dict[str, Any],
    shown: Any,
) -> None:
    try:
        for window in plan:
            if reorder:
                for capture in captures:
                    capture.begin_window()
            for batch in window:
                _run(lm, [ids[i] for i in batch], torch.tensor(batch), extra)
                if shown is not None:
                    shown.advance(len(batch))
            if reorder:
                for capture in captures:
                    capture.end_window()
    finally:
        for capture in captures:
            capture._window = None


def _run(lm: LanguageModel, rows: list[list[int]], indices: torch.Tensor, extra: dict[str, Any]) -> None:
    padded = lm.tokenizer.pad({"input_ids": rows}, padding=True, return_tensors="pt")
    encoded = lm.encode({"input_ids": padded["input_ids"], "attention_mask": padded["attention_mask"]})
    lm._tracker.rows = indices
    try:
        with torch.no_grad():
            lm.model(**encoded, **extra)  # the output (logits) is dropped here, before the next batch
    finally:
        lm._tracker.rows = None
