"""Attention patterns, their aggregation, entropy, focus and sink mass.

Patterns come from the ``attn_pattern`` site, so they are the model's own eager attention probabilities
(models loaded with sdpa switch to eager for the capture). Grouped-query and multi-query attention are
reported per query head, as transformers computes them. Shapes: ``[batch, head, query, key]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

import torch
from torch import Tensor

from mechscope.attention.results import FocusEdge
from mechscope.core.layers import resolve_layer, resolve_layers
from mechscope.core.lm import LanguageModel
from mechscope.errors import InputError, SiteError


class Aggregation(StrEnum):
    """How to reduce a layer's heads: keep them, average, take the maximum, or keep the last query only."""

    PER_HEAD = "per_head"
    MEAN = "mean"
    MAX = "max"
    LAST_QUERY = "last_query"


def patterns(
    lm: LanguageModel, prompts: str | Sequence[str] | Tensor, layers: Sequence[int] | None = None
) -> dict[int, Tensor]:
    """``{layer: [batch, head, query, key]}`` attention probabilities for prompts (padded as a batch) or ids."""
    chosen = resolve_layers(layers, lm.arch.n_layers)
    inputs: str | list[str] | Tensor = prompts if isinstance(prompts, str | Tensor) else list(prompts)
    with torch.no_grad(), lm.capture([f"attn_pattern.{i}" for i in chosen]) as cache:
        lm.forward(inputs)
    return {i: cache[f"attn_pattern.{i}"] for i in chosen}


def aggregate(pattern: Tensor, how: Aggregation | str = Aggregation.PER_HEAD) -> Tensor:
    """Reduce ``[batch, head, query, key]``: per head (unchanged), mean or max over heads
    (``[batch, query, key]``), or the last query row only (``[batch, head, key]``)."""
    how = Aggregation(how)
    if how is Aggregation.MEAN:
        return pattern.mean(dim=1)
    if how is Aggregation.MAX:
        return pattern.amax(dim=1)
    if how is Aggregation.LAST_QUERY:
        return pattern[:, :, -1]
    return pattern


def entropy(pattern: Tensor) -> Tensor:
    """Entropy in nats of each attention row: ``[batch, head, query]`` (zero-probability keys add nothing)."""
    logs = torch.where(pattern > 0, pattern.clamp(min=torch.finfo(pattern.dtype).tiny).log(), 0.0)
    return -(pattern * logs).sum(dim=-1)


def sink_mass(pattern: Tensor, mask: Tensor | None = None) -> Tensor:
    """``[batch, head]``: mean attention each head pays to the first real token (the BOS / sink).

    With a left-padded ``mask`` (``[batch, key]``) the first real token is found per row; padded query
    rows are left out of the mean.
    """
    batch = pattern.shape[0]
    if mask is None:
        first = torch.zeros(batch, dtype=torch.long, device=pattern.device)
        rows = torch.ones(batch, pattern.shape[2], dtype=torch.bool, device=pattern.device)
    else:
        first = mask.int().argmax(dim=1).to(pattern.device)
        rows = mask.bool().to(pattern.device)
    index = first.view(batch, 1, 1, 1).expand(-1, pattern.shape[1], pattern.shape[2], 1)
    to_first = pattern.gather(3, index)[..., 0]  # [batch, head, query]
    weights = rows.unsqueeze(1).float()
    return (to_first * weights).sum(-1) / weights.sum(-1).clamp(min=1)


def focus(
    lm: LanguageModel, prompt: str, layer: int, *, threshold: float = 0.3, head: int | None = None
) -> list[FocusEdge]:
    """Every (head, query, key) of one prompt at ``layer`` whose attention weight exceeds ``threshold``."""
    layer = resolve_layer(layer, lm.arch.n_layers)
    pattern = patterns(lm, prompt, [layer])[layer][0]  # [head, query, key]
    tokens = lm.token_texts(lm.tokenize([prompt])["input_ids"][0])
    return focus_edges(pattern, tokens, layer, threshold=threshold, head=head)


def focus_edges(
    pattern: Tensor, tokens: Sequence[str], layer: int, *, threshold: float = 0.3, head: int | None = None
) -> list[FocusEdge]:
    """The edges of one prompt's ``[head, query, key]`` pattern above ``threshold`` (only ``head``'s if given)."""
    if not 0.0 < threshold <= 1.0:
        raise InputError(f"threshold must be in (0, 1], got {threshold}")
    if head is not None:
        if not 0 <= head < pattern.shape[0]:
            raise SiteError(f"head {head} is out of range: the model has {pattern.shape[0]} heads")
        pattern = pattern[head : head + 1]
    edges = []
    for h, q, k in (pattern > threshold).nonzero().tolist():
        edges.append(
            FocusEdge(
                layer=layer,
                head=h if head is None else head,
                query=q,
                key=k,
                weight=float(pattern[h, q, k]),
                query_token=tokens[q],
                key_token=tokens[k],
            )
        )
    return edges
