"""Planning the bulk path: which prompts share a forward pass when many prompts stream through a model.

Padding every batch to its longest prompt wastes the compute of the padded tokens, so prompts are bucketed
by length: within each *window* of consecutive prompts (in the caller's order), prompts are sorted by token
count and packed into batches of at most ``batch_size`` prompts and at most ``max_tokens`` padded tokens.
A window bounds how much a reordering capture holds before it hands its rows back in the caller's order.

Examples:
    >>> plan = plan_batches([5, 20, 6, 19], batch_size=2)
    >>> plan
    [[[0, 2], [3, 1]]]
    >>> in_order = plan_batches([5, 20, 6, 19], batch_size=2, sort=False)
    >>> padded_tokens([5, 20, 6, 19], plan), padded_tokens([5, 20, 6, 19], in_order)
    (52, 78)
"""

from __future__ import annotations

from collections.abc import Sequence

from mechscope.errors import InputError

#: Batches per window: enough for sorting to remove nearly all padding, few enough to hold little.
WINDOW_BATCHES = 16


def plan_batches(
    lengths: Sequence[int],
    batch_size: int,
    *,
    max_tokens: int | None = None,
    sort: bool = True,
    window_batches: int = WINDOW_BATCHES,
) -> list[list[list[int]]]:
    """Windows of batches of prompt indices for prompts of token counts ``lengths``.

    Args:
        batch_size: at most this many prompts per batch.
        max_tokens: at most this many padded tokens (prompts x longest prompt) per batch; a single prompt
            longer than this still gets a batch of its own.
        sort: bucket by length within each window (False keeps the caller's order, batch after batch).
        window_batches: the window is ``window_batches * batch_size`` consecutive prompts.

    Raises:
        InputError: ``batch_size`` or ``max_tokens`` is not positive.
    """
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    if max_tokens is not None and max_tokens < 1:
        raise InputError(f"max_tokens must be at least 1, got {max_tokens}")
    size = max(1, window_batches) * batch_size
    windows = []
    for start in range(0, len(lengths), size):
        indices = list(range(start, min(start + size, len(lengths))))
        if sort:
            indices.sort(key=lambda i: lengths[i])  # stable: equal lengths keep the caller's order
        windows.append(_pack(indices, lengths, batch_size, max_tokens))
    return windows


def _pack(indices: list[int], lengths: Sequence[int], batch_size: int, max_tokens: int | None) -> list[list[int]]:
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in indices:
        grown = max(longest, lengths[i])
        full = len(current) == batch_size or (max_tokens is not None and (len(current) + 1) * grown > max_tokens)
        if current and full:
            batches.append(current)
            current, grown = [], lengths[i]
        current.append(i)
        longest = grown
    if current:
        batches.append(current)
    return batches


def padded_tokens(lengths: Sequence[int], plan: list[list[list[int]]]) -> int:
    """How many tokens ``plan`` runs, padding included (the cost that bucketing lowers)."""
    return sum(len(batch) * max(lengths[i] for i in batch) for window in plan for batch in window)
