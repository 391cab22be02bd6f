"""Masked-mean-pooled activations of texts at a few layers: the one capture every concept tool runs.

Texts stream through `LanguageModel.forward_batches` (bucketed by length, so little padding is computed,
and padding never enters a mean); each text yields one row per layer, the mean of ``resid_post`` over its
real tokens, returned in the caller's order.

Example:
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

if TYPE_CHECKING:
    from torch import Tensor

    from mechscope.core.lm import LanguageModel


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
    batch_size: int = 64,
    max_tokens: int | None = None,
    progress: bool = False,
) -> dict[int, Tensor]:
    """The masked mean of ``resid_post`` over each text's tokens at each layer: ``{layer: [n, d]}`` float32.

    Layer ``i`` is the output of decoder (or encoder) layer ``i``; ``-1`` is the last one, which equals
    ``output_hidden_states[-1]`` for models whose final norm is not part of that entry (encoders such as
    BERT; decoders in transformers put the final norm there).

    Raises:
        InputError: no texts, an empty text, or one longer than the model's context.
        SiteError: a layer outside the model.
    """
    chosen = resolve(lm, layers)
    sites = [f"resid_post.{layer}" for layer in chosen]
    with torch.no_grad(), lm.capture(sites, positions="mean", to="cpu", dtype=torch.float32) as cache:
        lm.forward_batches(list(texts), batch_size=batch_size, max_tokens=max_tokens, progress=progress)
    return {layer: cache[site] for layer, site in zip(chosen, sites, strict=True)}
