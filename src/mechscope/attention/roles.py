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

import torch

from mechscope.attention.results import ROLES, HeadRoles
from mechscope.core.lm import LanguageModel
from mechscope.core.repeats import ordinary_token_ids, repeat_scores, repeated_sequences

__all__ = ["ROLES", "HeadRoles", "copying_scores", "head_roles"]


def head_roles(lm: LanguageModel, *, count: int = 32, length: int = 20, seed: int = 0) -> HeadRoles:
    """Every head's role scores (see the module docstring); one forward pass for the attention scores.

    Examples:
        The heads planted in toy win their roles: 0.0 previous-token, 1.1 duplicate-token, 1.0 induction.

        >>> import mechscope as ms
        >>> roles = head_roles(ms.load("toy"), count=8, length=12)
        >>> best = {}
        >>> for role in ("previous_token", "duplicate_token", "induction"):
        ...     scores = getattr(roles, role)  # [layer][head]
        ...     best[role] = max((s, layer, head) for layer, row in enumerate(scores) for head, s in enumerate(row))
        >>> {role: (layer, head, round(s, 2)) for role, (s, layer, head) in best.items()}
        {'previous_token': (0, 0, 1.0), 'duplicate_token': (1, 1, 0.98), 'induction': (1, 0, 1.0)}
    """
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
    """Per head, the share of ``tokens`` sampled ids that the head's direct OV path puts in their own top-``top``.

    Examples:
        >>> import mechscope as ms
        >>> scores = copying_scores(ms.load("toy"), tokens=64)  # [layer][head], shares in [0, 1]
        >>> len(scores), len(scores[0]), scores[1][0]
        (4, 4, 0.125)
    """
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
