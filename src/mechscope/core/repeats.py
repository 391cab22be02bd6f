"""Repeated random-token sequences ``<bos> r r`` and the attention scores heads earn on them.

The stimulus of the standard induction test (Olsson et al.): on the second copy of ``r`` an induction head
attends to the token *after* the current token's first occurrence, a previous-token head to the token
before, a duplicate-token head to the same token in the first copy. The head-role analysis
(`mechscope.attention.roles`) and the organisms' cards (`mechscope.zoo.measure`) both score heads with it.

Examples:
    >>> import mechscope as ms
    >>> lm = ms.load("toy")
    >>> scores = repeat_scores(lm, repeated_sequences(lm, count=8, length=20), length=20)
    >>> scores.induction.shape == (lm.arch.n_layers, lm.arch.n_heads)
    True
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch import Tensor

from mechscope.core.lm import LanguageModel


def ordinary_token_ids(lm: LanguageModel) -> list[int]:
    """Token ids that are not special tokens (what random sequences are drawn from)."""
    special = set(lm.tokenizer.all_special_ids)
    vocab = min(len(lm.tokenizer), lm.arch.vocab)
    return [i for i in range(vocab) if i not in special]


def repeated_sequences(lm: LanguageModel, count: int, length: int, seed: int = 0) -> Tensor:
    """``[count, 1 + 2 * length]`` ids: a BOS (or the first special token) then ``r r``."""
    rng = random.Random(seed)
    pool = ordinary_token_ids(lm)
    start = lm.tokenizer.bos_token_id
    if start is None:
        start = lm.tokenizer.cls_token_id if lm.tokenizer.cls_token_id is not None else pool[0]
    rows = []
    for _ in range(count):
        r = [rng.choice(pool) for _ in range(length)]
        rows.append([start, *r, *r])
    return torch.tensor(rows, device=lm.device)


@dataclass(frozen=True)
class RepeatScores:
    """Attention role scores ``[layer, head]`` and the logits of one pass over ``<bos> r r`` sequences."""

    previous_token: Tensor
    duplicate_token: Tensor
    induction: Tensor
    logits: Tensor


def repeat_scores(lm: LanguageModel, ids: Tensor, length: int) -> RepeatScores:
    """Score every head on ``ids`` (rows ``<bos> r r`` with ``len(r) == length``) in one forward pass."""
    sites = [f"attn_pattern.{i}" for i in range(lm.arch.n_layers)]
    with torch.no_grad(), lm.capture(sites) as cache:
        logits = lm.forward(ids)
    second = torch.arange(length + 1, 2 * length + 1, device=ids.device)  # positions of the second copy
    everything = torch.arange(2, 2 * length + 1, device=ids.device)
    scores: dict[str, list[Tensor]] = {"previous": [], "duplicate": [], "induction": []}
    for site in sites:
        pattern = cache[site].float()  # [batch, head, query, key]
        scores["previous"].append(pattern[:, :, everything, everything - 1].mean(dim=(0, 2)))
        scores["duplicate"].append(pattern[:, :, second, second - length].mean(dim=(0, 2)))
        scores["induction"].append(pattern[:, :, second, second - length + 1].mean(dim=(0, 2)))
    return RepeatScores(
        previous_token=torch.stack(scores["previous"]).cpu(),
        duplicate_token=torch.stack(scores["duplicate"]).cpu(),
        induction=torch.stack(scores["induction"]).cpu(),
        logits=logits,
    )
