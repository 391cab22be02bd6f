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
    """``{layer: [batch, head, query, key]}`` attention probabilities for prompts (padded as a batch) or ids.

    Examples:
        >>> import mechscope as ms
        >>> lm = ms.load("toy")
        >>> found = patterns(lm, ["The capital of France is", "Two plus two is"], layers=[0, -1])
        >>> {layer: tuple(pattern.shape) for layer, pattern in found.items()}  # left-padded to 11 tokens
        {0: (2, 4, 11, 11), 3: (2, 4, 11, 11)}
        >>> bool(found[0].sum(dim=-1).allclose(torch.ones(2, 4, 11)))  # each query's row is a distribution
        True
    """
    chosen = resolve_layers(layers, lm.arch.n_layers)
    inputs: str | list[str] | Tensor = prompts if isinstance(prompts, str | Tensor) else list(prompts)
    with torch.no_grad(), lm.capture([f"attn_pattern.{i}" for i in chosen]) as cache:
        lm.forward(inputs)
    return {i: cache[f"attn_pattern.{i}"] for i in chosen}


def aggregate(pattern: Tensor, how: Aggregation | str = Aggregation.PER_HEAD) -> Tensor:
    """Reduce ``[batch, head, query, key]``: per head (unchanged), mean or max over heads
    (``[batch, query, key]``), or the last query row only (``[batch, head, key]``).

    Examples:
        >>> import mechscope as ms
        >>> pattern = patterns(ms.load("toy"), "The capital of France is", [0])[0]
        >>> tuple(pattern.shape)
        (1, 4, 7, 7)
        >>> tuple(aggregate(pattern, "mean").shape), tuple(aggregate(pattern, Aggregation.LAST_QUERY).shape)
        ((1, 7, 7), (1, 4, 7))
    """
    how = Aggregation(how)
    if how is Aggregation.MEAN:
        return pattern.mean(dim=1)
    if how is Aggregation.MAX:
        return pattern.amax(dim=1)
    if how is Aggregation.LAST_QUERY:
        return pattern[:, :, -1]
    return pattern


def entropy(pattern: Tensor) -> Tensor:
    """Entropy in nats of each attention row: ``[batch, head, query]`` (zero-probability keys add nothing).

    Examples:
        Uniform attention over 4 keys has entropy ``log 4``; toy's head 0.0, a previous-token head, has none:

        >>> import mechscope as ms
        >>> entropy(torch.full((1, 1, 1, 4), 0.25))
        tensor([[[1.3863]]])
        >>> pattern = patterns(ms.load("toy"), "The capital of France is", [0])[0]
        >>> entropy(pattern).mean(dim=-1).round(decimals=2)  # [batch, head]: mean over the queries
        tensor([[0.0000, 1.1200, 0.6200, 0.9100]])
    """
    logs = torch.where(pattern > 0, pattern.clamp(min=torch.finfo(pattern.dtype).tiny).log(), 0.0)
    return -(pattern * logs).sum(dim=-1)


def sink_mass(pattern: Tensor, mask: Tensor | None = None) -> Tensor:
    """``[batch, head]``: mean attention each head pays to the first real token (the BOS / sink).

    With a left-padded ``mask`` (``[batch, key]``) the first real token is found per row; padded query
    rows are left out of the mean.

    Examples:
        With the batch's mask, the padded first prompt gets the same sink mass as on its own:

        >>> import mechscope as ms
        >>> lm = ms.load("toy")
        >>> prompts = ["The capital of France is", "Two plus two is"]
        >>> sink_mass(patterns(lm, prompts[0], [0])[0]).round(decimals=2)
        tensor([[0.2900, 0.3100, 0.7200, 0.3300]])
        >>> mask = lm.tokenize(prompts)["attention_mask"]
        >>> sink_mass(patterns(lm, prompts, [0])[0], mask).round(decimals=2)
        tensor([[0.2900, 0.3100, 0.7200, 0.3300],
                [0.1800, 0.3000, 0.6300, 0.2900]])
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
    """Every (head, query, key) of one prompt at ``layer`` whose attention weight exceeds ``threshold``.

    Examples:
        Toy's head 0.0 sends each token's attention to the token before it:

        >>> import mechscope as ms
        >>> edges = focus(ms.load("toy"), "The capital of France is", 0, threshold=0.9, head=0)
        >>> [(edge.query_token, edge.key_token) for edge in edges][2:]
        [(' capital', 'The'), (' of', ' capital'), (' F', ' of'), ('rance', ' F'), (' is', 'rance')]
    """
    layer = resolve_layer(layer, lm.arch.n_layers)
    pattern = patterns(lm, prompt, [layer])[layer][0]  # [head, query, key]
    tokens = lm.token_texts(lm.tokenize([prompt])["input_ids"][0])
    return focus_edges(pattern, tokens, layer, threshold=threshold, head=head)


def focus_edges(
    pattern: Tensor, tokens: Sequence[str], layer: int, *, threshold: float = 0.3, head: int | None = None
) -> list[FocusEdge]:
    """The edges of one prompt's ``[head, query, key]`` pattern above ``threshold`` (only ``head``'s if given).

    Examples:
        >>> pattern = torch.tensor([[[1.0, 0.0], [0.2, 0.8]]])  # one head, two tokens
        >>> edges = focus_edges(pattern, ["<bos>", "cat"], layer=0, threshold=0.5)
        >>> [(edge.head, edge.query_token, edge.key_token, round(edge.weight, 2)) for edge in edges]
        [(0, '<bos>', '<bos>', 1.0), (0, 'cat', 'cat', 0.8)]
    """
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
