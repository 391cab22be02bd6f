"""Pooled activations of texts at a few layers: the one capture every concept tool runs.

Texts stream through `LanguageModel.forward_batches` (bucketed by length, so little padding is computed,
and padding never enters a pool); each text yields one row per layer, returned in the caller's order.
Poolings (`POOLINGS`):

* ``mean`` — the mean of ``resid_post`` over the text's real tokens (the seed system's pooling);
* ``term`` — the mean over the tokens that overlap the concept's term (its last occurrence in the text);
* ``term_last`` — the state at the term's last token: what the model holds once it has read the term,
  which is what a per-token monitor later sees (lenses meant for monitoring are fitted on this).

Examples:
    >>> import mechscope as ms
    >>> lm = ms.load("toy")
    >>> rows = pooled(lm, ["France", "The capital of France is"], [-1])
    >>> rows[3].shape
    torch.Size([2, 128])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from mechscope.core.layers import resolve_layers
from mechscope.errors import InputError

if TYPE_CHECKING:
    from torch import Tensor

    from mechscope.core.lm import LanguageModel
    from mechscope.core.positions import PassInfo

POOLINGS = ("mean", "term", "term_last")


def resolve(lm: LanguageModel, layers: Sequence[int]) -> list[int]:
    """``layers`` (negative counts from the end: ``-1`` is the last layer's output) as absolute indices.

    Raises:
        SiteError: a layer outside the model.
    """
    return resolve_layers(list(layers), lm.arch.n_layers)


def pooled(
    lm: LanguageModel,
    texts: Sequence[str],
    layers: Sequence[int],
    *,
    pooling: str = "mean",
    terms: Sequence[str] | None = None,
    batch_size: int = 64,
    max_tokens: int | None = None,
    progress: bool = False,
) -> dict[int, Tensor]:
    """Each text's ``resid_post`` at each layer, pooled: ``{layer: [n, d]}`` float32.

    Args:
        pooling: ``mean``, ``term`` or ``term_last`` (see the module docstring).
        terms: with ``term`` poolings, the concept's term in each text.

    Layer ``i`` is the output of decoder (or encoder) layer ``i``; ``-1`` is the last one, which equals
    ``output_hidden_states[-1]`` for models whose final norm is not part of that entry (encoders such as
    BERT; decoders in transformers put the final norm there).

    Raises:
        InputError: no texts, an empty text, one longer than the model's context, an unknown pooling, or
            a term that is not in its text.
        SiteError: a layer outside the model.
    """
    chosen = resolve(lm, layers)
    sites = [f"resid_post.{layer}" for layer in chosen]
    if pooling != "mean":
        return _term_pooled(lm, list(texts), chosen, pooling, terms, batch_size)
    with torch.no_grad(), lm.capture(sites, positions="mean", to="cpu", dtype=torch.float32) as cache:
        lm.forward_batches(list(texts), batch_size=batch_size, max_tokens=max_tokens, progress=progress)
    return {layer: cache[site] for layer, site in zip(chosen, sites, strict=True)}


def term_positions(lm: LanguageModel, text: str, term: str) -> list[int]:
    """The token positions of ``text`` (special tokens counted) that overlap the last occurrence of ``term``.

    The match ignores case, so a generated context that writes "Dog" still finds the term "dog".

    Raises:
        InputError: the term is not in the text, or the tokenizer gives no character offsets.
    """
    start = text.lower().rfind(term.lower())
    if start < 0:
        raise InputError(f"the term {term!r} does not occur in the text {text!r}")
    end = start + len(term)
    try:
        offsets = lm.tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
    except NotImplementedError:
        raise InputError("term pooling needs a fast tokenizer (with character offsets); use pooling='mean'") from None
    chosen = [i for i, (a, b) in enumerate(offsets) if b > a and a < end and b > start]
    if not chosen:
        raise InputError(f"no token of {text!r} covers the term {term!r}")
    return chosen


def _term_pooled(
    lm: LanguageModel,
    texts: list[str],
    layers: list[int],
    pooling: str,
    terms: Sequence[str] | None,
    batch_size: int,
) -> dict[int, Tensor]:
    if pooling not in POOLINGS:
        raise InputError(f"unknown pooling '{pooling}'; use one of {', '.join(POOLINGS)}")
    if terms is None or len(terms) != len(texts):
        raise InputError(f"pooling '{pooling}' needs the term of every text")
    spans = [term_positions(lm, text, term) for text, term in zip(texts, terms, strict=True)]
    if pooling == "term_last":
        spans = [span[-1:] for span in spans]
    sites = [f"resid_post.{layer}" for layer in layers]
    # Positions are per text, so these passes run in the order given: sort by length first to pad little.
    lengths = [len(row) for row in lm.tokenizer(texts)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    out = {layer: torch.empty(len(texts), lm.arch.d_model) for layer in layers}
    done = 0

    def sink(values: dict[str, Tensor], info: PassInfo) -> None:
        nonlocal done
        mask = info.current_mask()
        for r in range(mask.shape[0]):
            text = order[done + r]
            columns = mask[r].nonzero().flatten()[spans[text]].to(values[sites[0]].device)
            for layer, site in zip(layers, sites, strict=True):
                out[layer][text] = values[site][r, columns].float().mean(dim=0).cpu()
        done += mask.shape[0]

    with torch.no_grad(), lm.capture(sites, positions="all", sink=sink):
        lm.forward_batches([texts[i] for i in order], batch_size=batch_size)
    return out
