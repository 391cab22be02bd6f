"""Activation patching: which (layer, position) activations of a clean run restore its behaviour.

The corrupted prompt is run once per layer as a batch with one row per position; row ``p`` takes the
corrupted run's activations at that layer with position ``p`` replaced by the clean run's. Each layer
therefore costs one batched forward pass. Effects are normalised: 0 is the corrupted metric, 1 the clean.

Example (on the toy organism, only the last token's residual carries the answer to the next token):
    >>> import mechscope as ms
    >>> from mechscope.causal.metrics import LogitDiff
    >>> lm = ms.load("toy")
    >>> metric = LogitDiff(lm, correct=" Paris", wrong=" Tokyo")
    >>> clean, corrupted = "The capital of France is", "The capital of Japan is"
    >>> result = activation_patching(lm, clean, corrupted, metric)
    >>> result.clean_metric > 0 > result.corrupted_metric  # " Paris" wins on the clean prompt, " Tokyo" on the other
    True
    >>> {result.tokens[position] for _, position, _ in result.top(4)}
    {' is'}
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor

from mechscope.causal.metrics import Metric, prepare
from mechscope.causal.results import AttributionResult, PatchingResult
from mechscope.core import ops
from mechscope.core.layers import resolve_layers
from mechscope.core.lm import LanguageModel
from mechscope.errors import InputError, SiteError
from mechscope.progress import track

__all__ = ["activation_patching", "attribution_patching", "correlation"]

PATCHABLE = ("resid_pre", "resid_post", "attn_out", "mlp_out", "head_out")
ATTRIBUTABLE = ("resid_pre", "resid_post", "attn_out", "mlp_out")


def _prompt_pair(lm: LanguageModel, clean: str, corrupted: str) -> tuple[Tensor, Tensor]:
    """Both prompts' token ids, which patching by position needs to be of equal length."""
    clean_ids = lm.tokenize([clean])["input_ids"]
    corrupted_ids = lm.tokenize([corrupted])["input_ids"]
    if clean_ids.shape != corrupted_ids.shape:
        raise InputError(
            f"the clean prompt has {clean_ids.shape[1]} tokens and the corrupted one {corrupted_ids.shape[1]}; "
            "patching by position needs prompts of equal length"
        )
    return clean_ids, corrupted_ids


def _clean_run(
    lm: LanguageModel, clean: str, corrupted: str, metric: Metric, site: str, layers: Sequence[int] | None
) -> tuple[Tensor, Tensor, list[int], list[str], Mapping[str, Tensor], float]:
    """What both patching methods start from: the prompts' ids, the layers and sites, the clean run.

    ``metric`` is fitted to the clean logits here (for metrics that measure against the clean run).
    """
    clean_ids, corrupted_ids = _prompt_pair(lm, clean, corrupted)
    chosen = resolve_layers(layers, lm.arch.n_layers)
    names = [f"{site}.{i}" for i in chosen]
    with torch.no_grad(), lm.capture(names) as clean_cache:
        clean_logits = lm.forward(clean_ids)
    clean_metric = float(prepare(metric, clean_logits)(clean_logits)[0])
    return clean_ids, corrupted_ids, chosen, names, clean_cache, clean_metric


def activation_patching(
    lm: LanguageModel,
    clean: str,
    corrupted: str,
    metric: Metric,
    *,
    site: str = "resid_post",
    layers: Sequence[int] | None = None,
    progress: bool = False,
) -> PatchingResult:
    """Patch each (layer, position) of ``site`` from the clean run into the corrupted run and measure.

    Ctrl-C during the sweep returns the layers done so far, marked ``partial``.

    Examples:
        >>> import mechscope as ms
        >>> from mechscope.causal import LogitDiff
        >>> lm = ms.load("toy")
        >>> metric = LogitDiff(lm, correct=" Paris", wrong=" Tokyo")
        >>> clean, corrupted = "The capital of France is", "The capital of Japan is"
        >>> result = activation_patching(lm, clean, corrupted, metric)
        >>> result.layers, result.tokens[-1], round(result.clean_metric, 1), round(result.corrupted_metric, 1)
        ([0, 1, 2, 3], ' is', 9.9, -8.5)
        >>> [round(row[-1], 1) for row in result.effects]  # the last token's residual restores " Paris"
        [1.0, 1.0, 1.0, 1.0]
        >>> attn = activation_patching(lm, clean, corrupted, metric, site="attn_out")
        >>> [round(row[-1], 1) for row in attn.effects]  # the attention outputs: layer 0 carries it all
        [1.0, -0.1, 0.2, 0.4]

    Raises:
        InputError: the prompts tokenize to different lengths, or the clean and corrupted metrics are equal.
        SiteError: ``site`` is not one of resid_pre, resid_post, attn_out, mlp_out, head_out.
    """
    if site not in PATCHABLE:
        raise SiteError(f"cannot patch '{site}' by layer and position; use one of {', '.join(PATCHABLE)}")
    run = _clean_run(lm, clean, corrupted, metric, site, layers)
    clean_ids, corrupted_ids, chosen, names, clean_cache, clean_metric = run
    with torch.no_grad():
        with lm.capture(names) as corrupted_cache:
            corrupted_metric = float(metric(lm.forward(corrupted_ids))[0])
        if clean_metric == corrupted_metric:
            raise InputError("the clean and corrupted prompts give the same metric; nothing to restore")
        length = clean_ids.shape[1]
        batch = corrupted_ids.expand(length, -1)
        effects: list[list[float]] = []
        steps = track(names, f"patching {site}", enabled=progress)  # the bar advances as layers finish
        partial = False
        try:
            _patch_layers(
                lm, steps, clean_cache, corrupted_cache, batch, metric, clean_metric, corrupted_metric, effects
            )
        except KeyboardInterrupt:
            partial = True
    tokens = lm.token_texts(clean_ids[0])
    return PatchingResult(
        site=site,
        clean_prompt=clean,
        corrupted_prompt=corrupted,
        tokens=tokens,
        layers=chosen[: len(effects)],
        clean_metric=clean_metric,
        corrupted_metric=corrupted_metric,
        effects=effects,
        partial=partial,
        metric=getattr(metric, "name", None),
    )


def _patch_layers(
    lm: LanguageModel,
    names: Iterable[str],
    clean_cache: Mapping[str, Tensor],
    corrupted_cache: Mapping[str, Tensor],
    batch: Tensor,
    metric: Metric,
    clean_metric: float,
    corrupted_metric: float,
    effects: list[list[float]],
) -> None:
    """Append each layer's normalised effects to ``effects`` (so an interruption keeps the finished ones)."""
    length = batch.shape[0]
    with torch.no_grad():
        for name in names:
            corrupted_value = corrupted_cache[name]
            source = corrupted_value.expand(length, *corrupted_value.shape[1:]).clone()
            rows = torch.arange(length)
            source[rows, rows] = clean_cache[name][0]  # row p: position p from the clean run
            with lm.intervene({name: ops.set(source)}):
                patched = metric(lm.forward(batch))
            effects.append(((patched - corrupted_metric) / (clean_metric - corrupted_metric)).tolist())


def attribution_patching(
    lm: LanguageModel,
    clean: str,
    corrupted: str,
    metric: Metric,
    *,
    site: str = "resid_post",
    layers: Sequence[int] | None = None,
) -> AttributionResult:
    """The first-order estimate of `activation_patching`: ``grad(metric) . (clean - corrupted)`` per cell.

    Costs one forward pass of the clean prompt and one forward plus backward pass of the corrupted one,
    whatever the number of layers and positions. Gradients are taken with ``torch.autograd.grad``, so
    nothing accumulates in the model's parameters. Sites: the residual-type ones (``head_out`` is a view
    taken inside a hook, off the autograd path; patch it with `activation_patching`).

    Examples:
        >>> import mechscope as ms
        >>> from mechscope.causal import LogitDiff
        >>> lm = ms.load("toy")
        >>> metric = LogitDiff(lm, correct=" Paris", wrong=" Tokyo")
        >>> clean, corrupted = "The capital of France is", "The capital of Japan is"
        >>> estimate = attribution_patching(lm, clean, corrupted, metric)
        >>> [round(row[-1], 2) for row in estimate.effects]  # the last position, layer by layer
        [0.54, 0.68, 0.76, 0.7]
        >>> exact = activation_patching(lm, clean, corrupted, metric)
        >>> round(correlation(estimate.effects, exact.effects), 2)  # the estimate ranks the cells as patching does
        0.99
    """
    if site not in ATTRIBUTABLE:
        raise SiteError(f"attribution patching supports {', '.join(ATTRIBUTABLE)}; got '{site}'")
    run = _clean_run(lm, clean, corrupted, metric, site, layers)
    clean_ids, corrupted_ids, chosen, names, clean_cache, clean_metric = run
    with lm.capture(names, keep_grad=True) as live:
        value = metric(lm.forward(corrupted_ids, grad=True))[0]
    grads = torch.autograd.grad(value, [live[name] for name in names])
    corrupted_metric = float(value.detach())
    if clean_metric == corrupted_metric:
        raise InputError("the clean and corrupted prompts give the same metric; nothing to restore")
    scale = clean_metric - corrupted_metric
    effects = [
        ((grad[0] * (clean_cache[name][0] - live[name][0].detach())).flatten(1).sum(-1) / scale).tolist()
        for name, grad in zip(names, grads, strict=True)
    ]
    return AttributionResult(
        site=site,
        tokens=lm.token_texts(clean_ids[0]),
        layers=chosen,
        clean_metric=clean_metric,
        corrupted_metric=corrupted_metric,
        effects=effects,
        metric=getattr(metric, "name", None),
    )


def correlation(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> float:
    """Pearson correlation of two equally shaped effect grids (e.g. attribution vs activation patching).

    Examples:
        >>> round(correlation([[1, 2], [3, 4]], [[2, 4], [6, 8]]), 6)  # one grid a multiple of the other
        1.0
        >>> round(correlation([[1, 2, 3]], [[3, 2, 1]]), 6)
        -1.0
    """
    x, y = torch.tensor(a, dtype=torch.float64).flatten(), torch.tensor(b, dtype=torch.float64).flatten()
    x, y = x - x.mean(), y - y.mean()
    return float((x * y).sum() / (x.norm() * y.norm()).clamp(min=1e-12))
