"""Head role scores: previous-token, duplicate-token, induction and copying, for every head at once.

The attention scores come from one batched forward pass over ``count`` sequences ``<bos> r r`` (``r`` is
``length`` random ordinary tokens):

* previous-token: attention from each position to the one before it;
* duplicate-token: attention from a token of the second copy to the same token in the first copy;
* induction (prefix matching): attention from a token of the second copy to the token *after* its first
  occurrence — the standard score of Olsson et al.

The copying score looks at a head's OV circuit through the model's own modules: for single-token inputs
each position attends only to itself, so ``head_out`` is the head's value of that token; writing it through
the attention output projection (only that head's slice) and reading the result out with the lens read-out
gives the head's direct effect on the logits. The score is the share of tokens that the head promotes to
their own top-10 (families without an unembedding get none).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from pydantic import BaseModel
from torch import Tensor

from mechscope.core.lm import LanguageModel

ROLES = ("previous_token", "duplicate_token", "induction", "copying")


class HeadRoles(BaseModel):
    """Role scores ``[layer][head]`` in [0, 1]; ``copying`` is None without an unembedding."""

    previous_token: list[list[float]]
    duplicate_token: list[list[float]]
    induction: list[list[float]]
    copying: list[list[float]] | None
    sequences: int
    length: int

    def top(self, role: str, k: int = 5) -> list[tuple[int, int, float]]:
        """The ``k`` best ``(layer, head, score)`` for ``role``."""
        scores = getattr(self, role)
        if scores is None:
            return []
        flat = [(layer, head, value) for layer, row in enumerate(scores) for head, value in enumerate(row)]
        return sorted(flat, key=lambda item: -item[2])[:k]


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


def head_roles(lm: LanguageModel, *, count: int = 32, length: int = 20, seed: int = 0) -> HeadRoles:
    """Every head's role scores (see the module docstring); one forward pass for the attention scores."""
    scores = repeat_scores(lm, repeated_sequences(lm, count, length, seed), length)
    copying = copying_scores(lm, seed=seed) if lm.arch.unembed() is not None else None
    return HeadRoles(
        previous_token=scores.previous_token.tolist(),
        duplicate_token=scores.duplicate_token.tolist(),
        induction=scores.induction.tolist(),
        copying=copying,
        sequences=count,
        length=length,
    )


def copying_scores(lm: LanguageModel, *, tokens: int = 256, top: int = 10, seed: int = 0) -> list[list[float]]:
    """Per head, the share of ``tokens`` sampled ids that the head's direct OV path puts in their own top-``top``."""
    pool = ordinary_token_ids(lm)
    ids = torch.tensor(random.Random(seed).sample(pool, min(tokens, len(pool))), device=lm.device)
    sites = [f"head_out.{i}" for i in range(lm.arch.n_layers)]
    with torch.no_grad():
        with lm.capture(sites) as cache:
            lm.forward(ids.unsqueeze(1))  # one token per row: it can only attend to itself
        scores = []
        for layer in range(lm.arch.n_layers):
            values = cache[sites[layer]][:, 0]  # [tokens, head, head_dim]
            o_proj = lm.arch.part("o_proj", layer)
            zero = o_proj(torch.zeros_like(values.flatten(1)))
            row = []
            for head in range(lm.arch.n_heads):
                only = torch.zeros_like(values)
                only[:, head] = values[:, head]
                direct = o_proj(only.flatten(1)) - zero  # this head's write into the residual
                logits = lm.arch.logits(direct)
                own = logits.gather(1, ids.unsqueeze(1))
                rank = (logits > own).sum(dim=1)
                row.append(float((rank < top).float().mean()))
            scores.append(row)
    return scores
