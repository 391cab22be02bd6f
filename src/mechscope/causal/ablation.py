"""Ablation studies: knock out one component at a time and measure what the model does without it.

A sweep over one component kind evaluates many ablations in one batched pass: the prompt is repeated once
per ablation and row ``r`` has only its own component replaced (the other rows run untouched), so a
layer sweep with a logit metric costs one forward pass of a batch of ``n_layers`` rows, and a head sweep one
pass per layer with a row per head. Text criteria generate from the same batch.

Components: ``attn`` (``attn_out``), ``mlp`` (``mlp_out``), ``resid`` (``resid_post``), ``head``
(one head's ``head_out``), ``expert`` (one expert's ``expert_out``). Methods: ``zero``; ``mean`` (the mean
activation over reference prompts); ``resample`` (the activation of another prompt at the same positions,
or its mean over positions when the lengths differ).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

import torch
from torch import Tensor

from mechscope.causal.metrics import Metric, prepare
from mechscope.causal.results import AblationEffect, AblationResult
from mechscope.core.layers import resolve_layers
from mechscope.core.lm import LanguageModel
from mechscope.core.ops import OpContext
from mechscope.core.positions import Positions
from mechscope.core.sites import Site
from mechscope.errors import InputError
from mechscope.progress import track

E = TypeVar("E", bound=StrEnum)

#: A custom ablation: ``ablator(lm, group)`` is a context manager under which batch row ``r`` has the component
#: ``group[r]`` (a ``(layer, index)``) knocked out, e.g. `mechscope.moe.expert_ablation` (router edits). Its
#: ``method`` attribute, if any, names it in the result.
Ablator = Callable[[LanguageModel, list[tuple[int, int | None]]], AbstractContextManager[object]]


class Component(StrEnum):
    """What a sweep knocks out."""

    ATTN = "attn"
    MLP = "mlp"
    RESID = "resid"
    HEAD = "head"
    EXPERT = "expert"


class Method(StrEnum):
    """What replaces the knocked-out activation."""

    ZERO = "zero"
    MEAN = "mean"
    RESAMPLE = "resample"


_SITE = {
    Component.ATTN: "attn_out",
    Component.MLP: "mlp_out",
    Component.RESID: "resid_post",
    Component.HEAD: "head_out",
    Component.EXPERT: "expert_out",
}


@dataclass(frozen=True)
class RowOp:
    """An op that replaces the activation in some batch rows only: row ``rows[i]`` gets ``values[i]``.

    ``index`` selects a head (on ``head_out`` with every head, ``[batch, pos, head, head_dim]``); ``values``
    broadcast against one row's activation.
    """

    rows: tuple[int, ...]
    values: tuple[Tensor, ...]
    index: tuple[int | None, ...]
    positions: Positions = "all"

    def apply(self, x: Tensor, ctx: OpContext) -> Tensor:
        """A copy of ``x`` with each listed row (and head) set to its value; rows past the batch are skipped."""
        out = x.clone()
        for row, value, index in zip(self.rows, self.values, self.index, strict=True):
            if row >= x.shape[0]:
                continue
            target = out[row] if index is None else out[row, :, index]
            target[...] = value.to(device=x.device, dtype=x.dtype).expand_as(target)
        return out


def _named(check: Callable[[str], bool], name: str) -> Callable[[str], bool]:
    """``check`` under ``name``: the result and its page name the criterion by its ``__name__``."""
    check.__name__ = check.__qualname__ = name
    return check


def contains(text: str) -> Callable[[str], bool]:
    """Criterion: the generated text contains ``text``.

    Examples:
        >>> check = contains(" Paris")
        >>> check(" Paris is the capital."), check(" Tokyo."), check.__name__
        (True, False, "contains ' Paris'")
    """
    return _named(lambda generated: text in generated, f"contains {text!r}")


def regex(pattern: str) -> Callable[[str], bool]:
    """Criterion: the generated text matches ``pattern`` anywhere.

    Examples:
        >>> check = regex("[0-9]+")
        >>> check("Two plus two is 4."), check("Two plus two is four."), check.__name__
        (True, False, 'matches /[0-9]+/')
    """
    try:
        compiled = re.compile(pattern)
    except re.error as error:
        raise InputError(f"bad regex '{pattern}': {error}; write a Python regular expression") from None
    return _named(lambda generated: compiled.search(generated) is not None, f"matches /{pattern}/")


def function_call(generated: str) -> bool:
    """Criterion: the generated text holds a tool call (a ``<call>`` marker or ``name(arg=...)``).

    Examples:
        >>> function_call('get_weather(city="Paris")'), function_call("<call>search"), function_call(" Paris.")
        (True, True, False)
    """
    return "<call>" in generated or re.search(r"\b\w+\(\w+=", generated) is not None


def parse_criterion(spec: str) -> Callable[[str], bool]:
    """A CLI criterion: ``contains:<text>``, ``regex:<pattern>`` or ``function_call``.

    Examples:
        >>> check = parse_criterion("contains: Paris")
        >>> check.__name__, check(" Paris."), parse_criterion("function_call") is function_call
        ("contains ' Paris'", True, True)
        >>> parse_criterion("starts: Paris")
        Traceback (most recent call last):
        ...
        mechscope.errors.InputError: unknown criterion 'starts: Paris'; use contains:<text>, regex:<pattern> or ...
    """
    if spec == "function_call":
        return function_call
    kind, _, argument = spec.partition(":")
    if kind == "contains" and argument:
        return contains(argument)
    if kind == "regex" and argument:
        return regex(argument)
    raise InputError(f"unknown criterion '{spec}'; use contains:<text>, regex:<pattern> or function_call")


def _replacements(
    lm: LanguageModel,
    sites: list[str],
    method: Method,
    prompt_ids: Tensor,
    reference: Sequence[str] | None,
    resample_from: str | None,
) -> dict[str, Tensor | None]:
    """What replaces each site (``None``: zeros), broadcastable to one row; one forward pass for all sites."""
    if method is Method.ZERO:
        return dict.fromkeys(sites)
    if method is Method.MEAN:
        if not reference:
            raise InputError("mean ablation needs reference prompts to average over")
        with torch.no_grad(), lm.capture(sites, positions="mean") as cache:
            lm.forward(list(reference))
        return {site: cache[site].mean(dim=0) for site in sites}  # [*feature]
    if not resample_from:
        hint = "; reference= is for method='mean'" if reference else ""
        raise InputError(
            f"resample ablation takes its activations from one other prompt: pass resample_from='...' "
            f"(--resample-from on the command line){hint}"
        )
    other = lm.tokenize([resample_from])["input_ids"]
    aligned = other.shape == prompt_ids.shape
    with torch.no_grad(), lm.capture(sites, positions="all" if aligned else "mean") as cache:
        lm.forward(other)
    return {site: cache[site][0] for site in sites}  # [pos, *feature] or [*feature]


def _choice(kind: type[E], value: str, what: str) -> E:
    """``value`` as a member of the enum ``kind``, or a one-line error listing the choices."""
    try:
        return kind(value)
    except ValueError:
        raise InputError(f"unknown {what} '{value}'; use one of {', '.join(str(m.value) for m in kind)}") from None


def sweep(
    lm: LanguageModel,
    prompt: str,
    *,
    component: Component | str = Component.MLP,
    method: Method | str = Method.ZERO,
    metric: Metric | None = None,
    criterion: Callable[[str], bool] | None = None,
    layers: Sequence[int] | None = None,
    reference: Sequence[str] | None = None,
    resample_from: str | None = None,
    max_new_tokens: int = 20,
    progress: bool = False,
    indices: Sequence[int] | None = None,
    ablator: Ablator | None = None,
) -> AblationResult:
    """Ablate each component of one kind in turn (batched) and measure with ``metric`` or ``criterion``.

    ``indices`` restricts a head or expert sweep to those heads or experts. ``ablator`` replaces the sweep's
    own ops (and ``method``) with a custom per-row ablation (see `Ablator`); the batching stays the same.
    Stopping the sweep with Ctrl-C returns what was measured so far with ``partial=True``.

    Examples:
        A logit metric: one batched pass ablates each layer's MLP in its own row.

        >>> import mechscope as ms
        >>> from mechscope.causal import LogitDiff
        >>> lm = ms.load("toy")
        >>> metric = LogitDiff(lm, correct=" Paris", wrong=" Tokyo")
        >>> result = sweep(lm, "The capital of France is", component="mlp", metric=metric)
        >>> round(result.clean_metric, 1), [(e.layer, round(e.delta, 1)) for e in result.effects]
        (9.9, [(0, -10.0), (1, -9.3), (2, -2.0), (3, -5.3)])
        >>> heads = sweep(lm, "The capital of France is", component="head", metric=metric, layers=[0], indices=[0, 1])
        >>> [(e.layer, e.index, round(e.delta, 1)) for e in heads.effects]  # head 0.0 carries the answer
        [(0, 0, -12.9), (0, 1, 0.9)]

        A text criterion: each ablated row generates, and the criterion judges its text.

        >>> texts = sweep(lm, "The capital of France is", criterion=contains(" Paris"), max_new_tokens=2)
        >>> texts.clean_text, [e.layer for e in texts.effects if e.criterion]  # " Paris" survives ablating MLP 2 only
        (' Paris.', [2])
    """
    component, method = _choice(Component, component, "component"), _choice(Method, method, "method")
    if (metric is None) == (criterion is None):
        raise InputError("give exactly one of a logit metric or a text criterion")
    if ablator is not None and method is not Method.ZERO:
        raise InputError(f"a custom ablator replaces the method; leave method='zero' (got '{method.value}')")
    if component is Component.EXPERT and not lm.arch.is_moe:
        raise InputError(f"{lm.arch.family} has no experts to ablate")
    chosen = list(lm.arch.moe_layers if component is Component.EXPERT else range(lm.arch.n_layers))
    if layers is not None:
        chosen = resolve_layers(layers, lm.arch.n_layers)
    prompt_ids = lm.tokenize([prompt])["input_ids"]
    label = str(getattr(ablator, "method", method.value))
    result = AblationResult(prompt=prompt, component=component.value, method=label, effects=[])
    result.metric = getattr(metric, "name", None)
    clean = None if metric is None else CleanRow(metric)
    if metric is None:
        assert criterion is not None
        result.criterion = getattr(criterion, "__name__", None) or "criterion"
        result.clean_text = lm.generate(prompt, max_new_tokens=max_new_tokens)
        result.clean_criterion = criterion(result.clean_text)
    groups = _groups(lm, component, chosen, indices)
    steps = track(groups, f"ablating {component.value}", enabled=progress)  # advances as groups finish
    try:
        for group in steps:
            result.effects += _run_group(
                lm,
                prompt,
                prompt_ids,
                component,
                method,
                group,
                criterion,
                reference,
                resample_from,
                max_new_tokens,
                clean,
                ablator,
            )
            if clean is not None:
                result.clean_metric = clean.value
    except KeyboardInterrupt:
        result.partial = True
    if clean is not None and clean.value is None:  # interrupted before the first pass: measure clean alone
        with torch.no_grad():
            clean.take(lm.forward(prompt_ids))
        result.clean_metric = clean.value
    return result


class CleanRow:
    """The sweep's clean run, as one extra, untouched row of its first batched pass.

    One pass of ``rows + 1`` costs less than a pass of ``rows`` and a separate one-row pass (per-pass overhead
    dominates at these batch sizes). The ablations name their rows explicitly, so the last row runs clean.
    The metric is fitted to the clean logits (`prepare`) before it measures the ablated rows of that pass.
    """

    def __init__(self, metric: Metric) -> None:
        self.metric = metric
        self.value: float | None = None

    @property
    def rows(self) -> int:
        """Rows to add to the next pass: 1 until the clean run is taken."""
        return int(self.value is None)

    def take(self, clean_logits: Tensor) -> None:
        """Fit the metric to ``clean_logits`` (``[1, pos, vocab]``) and keep the clean value."""
        self.metric = prepare(self.metric, clean_logits)
        self.value = float(self.metric(clean_logits)[0])


def grid(
    lm: LanguageModel,
    prompt: str,
    components: Sequence[Component | str] = (Component.ATTN, Component.MLP),
    **options: object,
) -> AblationResult:
    """A (layer, component) grid: one sweep per component kind, joined into one result.

    Examples:
        >>> import mechscope as ms
        >>> from mechscope.causal import LogitDiff
        >>> lm = ms.load("toy")
        >>> metric = LogitDiff(lm, correct=" Paris", wrong=" Tokyo")
        >>> result = grid(lm, "The capital of France is", metric=metric)  # attn and mlp of every layer
        >>> result.component, len(result.effects), [(e.component, e.layer) for e in result.summary(3)]
        ('attn+mlp', 8, [('attn', 0), ('mlp', 0), ('mlp', 1)])
    """
    if not components:
        raise InputError("name at least one component for the grid")
    results = [sweep(lm, prompt, component=c, **options) for c in components]  # type: ignore[arg-type]
    joined = results[0].model_copy(update={"component": "+".join(r.component for r in results)})
    joined.effects = [effect for r in results for effect in r.effects]
    joined.partial = any(r.partial for r in results)
    return joined


def _groups(
    lm: LanguageModel, component: Component, layers: list[int], indices: Sequence[int] | None = None
) -> list[list[tuple[int, int | None]]]:
    """Batches of ``(layer, index)`` ablations that one forward pass evaluates together."""
    if component in (Component.HEAD, Component.EXPERT):
        base = _SITE[component]
        count = lm.arch.n_heads if component is Component.HEAD else lm.arch.n_experts
        chosen = list(range(count)) if indices is None else list(dict.fromkeys(indices))
        for layer in layers:
            lm.sites([f"{base}.{layer}.{index}" for index in chosen])  # SiteError naming the valid range
        return [[(layer, index) for index in chosen] for layer in layers]
    if indices is not None:
        raise InputError(f"indices= picks heads or experts; the {component.value} component has none")
    return [[(layer, None) for layer in layers]]


def _run_group(
    lm: LanguageModel,
    prompt: str,
    prompt_ids: Tensor,
    component: Component,
    method: Method,
    group: list[tuple[int, int | None]],
    criterion: Callable[[str], bool] | None,
    reference: Sequence[str] | None,
    resample_from: str | None,
    max_new_tokens: int,
    clean: CleanRow | None,
    ablator: Ablator | None = None,
) -> list[AblationEffect]:
    base = _SITE[component]
    sites = [
        f"{base}.{layer}.{index}" if component is Component.EXPERT else f"{base}.{layer}" for layer, index in group
    ]
    replacements = (
        {}
        if ablator is not None
        else _replacements(lm, sorted(set(sites)), method, prompt_ids, reference, resample_from)
    )
    plan: dict[str | Site, RowOp] = {}
    for row, ((_, index), site) in enumerate(zip(group, sites, strict=True) if ablator is None else ()):
        value = replacements[site]
        if component is Component.HEAD and value is not None:
            value = value[..., index, :]  # this head's slice of the all-heads activation
        fill = torch.zeros(()) if value is None else value
        slot = index if component is Component.HEAD else None
        previous = plan.get(site)
        if previous is None:
            plan[site] = RowOp((row,), (fill,), (slot,))
        else:
            plan[site] = RowOp((*previous.rows, row), (*previous.values, fill), (*previous.index, slot))
    name = component.value
    effects = []
    with lm.intervene(plan) if ablator is None else ablator(lm, group):
        if clean is not None:
            extra = clean.rows
            with torch.no_grad():
                logits = lm.forward(prompt_ids.expand(len(group) + extra, -1))
                if extra:
                    clean.take(logits[-1:])
                values = clean.metric(logits[: len(group)])
            assert clean.value is not None
            for (layer, index), value in zip(group, values.tolist(), strict=True):
                delta = value - clean.value
                effects.append(AblationEffect(component=name, layer=layer, index=index, metric=value, delta=delta))
        else:
            assert criterion is not None
            texts = lm.generate([prompt] * len(group), max_new_tokens=max_new_tokens)
            for (layer, index), text in zip(group, texts, strict=True):
                effects.append(
                    AblationEffect(component=name, layer=layer, index=index, text=text, criterion=criterion(text))
                )
    return effects
