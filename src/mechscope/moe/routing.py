"""Routing over a corpus, streamed: one forward pass per batch, the routing of its real tokens yielded.

`routing` tokenizes the prompts once, buckets them by length (`mechscope.core.batching.plan_batches`, the
bulk path's planner, so padding costs little) and runs each batch once under a capture of the router sites.
Each batch's routing is handed over as a `RoutingBatch` holding only its non-padding tokens and is not
kept: memory stays at one batch, whatever the corpus size (router logits only when asked for).

Examples:
    >>> import mechscope as ms
    >>> lm = ms.load("toy-moe")
    >>> prompts = ["The capital of France is", "Two plus two is", "Hello"]
    >>> batches = list(routing(lm, prompts, batch_size=2))
    >>> len(batches), sorted(row for b in batches for row in b.rows.tolist())
    (2, [0, 1, 2])
    >>> b = batches[0]
    >>> b.expert_index[0].shape == (b.tokens, lm.arch.top_k), b.router_logits is None
    (True, True)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mechscope.core.batching import plan_batches
from mechscope.errors import InputError
from mechscope.moe.info import moe_layers
from mechscope.progress import bar

if TYPE_CHECKING:
    from torch import Tensor

    from mechscope.core.cache import Cache
    from mechscope.core.lm import LanguageModel


@dataclass(frozen=True)
class RoutingBatch:
    """The routing of one batch's real tokens, prompt after prompt, each prompt's tokens in order.

    Attributes:
        rows: ``[batch]`` the caller's index of each prompt of the batch (batches are bucketed by length).
        lengths: ``[batch]`` each prompt's token count (``expert_index[layer].split(lengths.tolist())``
            gives the prompts one by one).
        input_ids: ``[tokens]`` the tokens themselves.
        expert_index, expert_weight: layer -> ``[tokens, top_k]``, the router's own outputs.
        router_logits: layer -> ``[tokens, expert]``, or None when not asked for.
    """

    rows: Tensor
    lengths: Tensor
    input_ids: Tensor
    expert_index: dict[int, Tensor]
    expert_weight: dict[int, Tensor]
    router_logits: dict[int, Tensor] | None

    @property
    def tokens(self) -> int:
        """How many real tokens the batch holds."""
        return int(self.input_ids.shape[0])


def routing(
    lm: LanguageModel,
    prompts: Sequence[str],
    *,
    batch_size: int = 32,
    max_tokens: int | None = None,
    layers: Sequence[int] | None = None,
    with_logits: bool = False,
    progress: bool = False,
) -> Iterator[RoutingBatch]:
    """Stream the routing of every prompt, one `RoutingBatch` per forward pass.

    The prompts are checked, tokenized and planned before this returns (so a bad input fails here, not at
    the first ``next``); the forward passes run as the batches are consumed.

    Args:
        batch_size, max_tokens: at most this many prompts, and padded tokens, per forward pass.
        layers: the MoE layers to read (default: all of them).
        with_logits: also yield the router logits.
        progress: a progress bar on stderr (only on a terminal; see `mechscope.progress`).

    Examples:
        Batches are bucketed by length (``rows`` says whose prompts they hold); ``lengths`` splits them back:

        >>> import mechscope as ms
        >>> lm = ms.load("toy-moe")
        >>> prompts = ["The capital of France is Paris.", "Hi", "<call>time(city=Bern)</call>"]
        >>> for batch in routing(lm, prompts, batch_size=2, layers=[1], with_logits=True):
        ...     first = [chosen[:, 0].tolist() for chosen in batch.expert_index[1].split(batch.lengths.tolist())]
        ...     print(batch.rows.tolist(), tuple(batch.router_logits[1].shape), first)
        [1, 0] (12, 4) [[2, 0, 0], [2, 1, 1, 0, 0, 3, 0, 3, 2]]
        [2] (10, 4) [[2, 2, 2, 2, 2, 2, 2, 2, 2, 2]]

    Raises:
        MoEError: the model has no experts.
        SiteError: a layer is outside the model or has no router.
        InputError: no prompts, an empty prompt, a prompt too long for the model, or a bad batch size.
    """
    from mechscope.core.bulk import token_ids  # imports torch: only when called (see mechscope.moe)

    if isinstance(prompts, str):
        raise InputError("routing takes a list of prompts; for one prompt use mechscope.moe.trace")
    chosen = moe_layers(lm, layers)
    ids = token_ids(lm, prompts)
    plan = [
        batch for window in plan_batches([len(r) for r in ids], batch_size, max_tokens=max_tokens) for batch in window
    ]
    kinds = ("expert_index", "expert_weight", "router_logits") if with_logits else ("expert_index", "expert_weight")
    sites = [f"{kind}.{layer}" for layer in chosen for kind in kinds]
    return _stream(lm, ids, plan, sites, chosen, with_logits, progress)


def _stream(
    lm: LanguageModel,
    ids: list[list[int]],
    plan: list[list[int]],
    sites: list[str],
    layers: list[int],
    with_logits: bool,
    progress: bool,
) -> Iterator[RoutingBatch]:
    import torch

    with bar("routing", len(ids), enabled=progress) as shown:
        for batch in plan:
            padded = lm.tokenizer.pad({"input_ids": [ids[i] for i in batch]}, padding=True, return_tensors="pt")
            encoded = lm.encode({"input_ids": padded["input_ids"], "attention_mask": padded["attention_mask"]})
            # The capture closes before the batch is handed over: no hook stays on the model between batches,
            # even if the caller stops iterating.
            with lm.capture(sites) as cache, torch.no_grad():
                lm.model(**encoded, use_cache=False)  # the logits are dropped here
            mask = encoded["attention_mask"].bool()
            yield RoutingBatch(
                rows=torch.tensor(batch),
                lengths=mask.sum(dim=1).cpu(),
                input_ids=encoded["input_ids"][mask],
                expert_index=_real_tokens(cache, mask, "expert_index", layers),
                expert_weight=_real_tokens(cache, mask, "expert_weight", layers),
                router_logits=_real_tokens(cache, mask, "router_logits", layers) if with_logits else None,
            )
            if shown is not None:
                shown.advance(len(batch))


def _real_tokens(cache: Cache, mask: Tensor, kind: str, layers: list[int]) -> dict[int, Tensor]:
    """layer -> ``[tokens, ...]``: a router site's ``[batch, pos, ...]`` value at the real tokens only."""
    values = {layer: cache[f"{kind}.{layer}"] for layer in layers}
    return {layer: value[mask.to(value.device)] for layer, value in values.items()}
