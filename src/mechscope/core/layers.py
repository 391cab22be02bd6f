"""Layers by index: one resolver for every analysis, and the layer strategies of the lens and the CLI.

Negative layers count from the end (``-1`` is the last layer). A layer outside the model raises
`SiteError` naming the valid range; nothing ever wraps around (layer 9 of a 4-layer model is an error,
not layer 1).

This module imports no torch, so the checkpoint tools can use it without loading a model.

Examples:
    >>> resolve_layer(-1, 4)
    3
    >>> parse_layers("0,2-3", 4)
    [0, 2, 3]
    >>> resolve_layers([9], 4)
    Traceback (most recent call last):
    ...
    mechscope.errors.SiteError: layer 9 is out of range: the model has 4 layers (0..3, or -4..-1 from the end)
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from enum import StrEnum

from mechscope.errors import SiteError

_RANGE = re.compile(r"^(-?\d+)\s*-\s*(-?\d+)$")


def resolve_layer(layer: int, n_layers: int) -> int:
    """``layer`` as an index in ``0..n_layers-1`` (negative counts from the end).

    Examples:
        >>> resolve_layer(2, 4), resolve_layer(-1, 4)  # -1 is the last of 4 layers
        (2, 3)
        >>> resolve_layer(4, 4)  # never wraps around
        Traceback (most recent call last):
        ...
        mechscope.errors.SiteError: layer 4 is out of range: the model has 4 layers (0..3, or -4..-1 from the end)

    Raises:
        SiteError: ``layer`` is outside the model.
    """
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise SiteError(f"a layer is a whole number, got {layer!r}")
    if not -n_layers <= layer < n_layers:
        raise SiteError(
            f"layer {layer} is out of range: the model has {n_layers} layers "
            f"(0..{n_layers - 1}, or -{n_layers}..-1 from the end)"
        )
    return layer + n_layers if layer < 0 else layer


def resolve_layers(layers: Iterable[int] | None, n_layers: int) -> list[int]:
    """Each of ``layers`` resolved (in the order given, duplicates dropped); ``None`` means every layer.

    Examples:
        >>> resolve_layers([3, 0, -1], 4)  # -1 is layer 3 again: kept once, where it first appears
        [3, 0]
        >>> resolve_layers(None, 4)
        [0, 1, 2, 3]
    """
    if layers is None:
        return list(range(n_layers))
    chosen: list[int] = []
    for layer in layers:
        resolved = resolve_layer(layer, n_layers)
        if resolved not in chosen:
            chosen.append(resolved)
    if not chosen:
        raise SiteError("no layers given; name at least one, e.g. 0 or -1")
    return chosen


class LayerStrategy(StrEnum):
    """How to choose layers; ``EVENLY_SPACED`` takes every ``step``-th layer and always the last."""

    ALL = "all"
    EVENLY_SPACED = "evenly_spaced"
    FIRST_MIDDLE_LAST = "first_middle_last"
    CUSTOM = "custom"


def select_layers(
    n_layers: int, strategy: LayerStrategy = LayerStrategy.ALL, step: int = 4, custom: list[int] | None = None
) -> list[int]:
    """The sorted layer indices ``strategy`` picks in a model of ``n_layers`` layers.

    Examples:
        >>> select_layers(10, LayerStrategy.EVENLY_SPACED, step=4)  # every 4th layer, and the last
        [0, 4, 8, 9]
        >>> select_layers(10, LayerStrategy.FIRST_MIDDLE_LAST)
        [0, 5, 9]
        >>> select_layers(10, LayerStrategy.CUSTOM, custom=[-1, 2])
        [2, 9]

    Raises:
        SiteError: a custom layer is out of range, or the step is not positive.
    """
    if strategy is LayerStrategy.ALL:
        return list(range(n_layers))
    if strategy is LayerStrategy.EVENLY_SPACED:
        if step < 1:
            raise SiteError(f"layer step must be at least 1, got {step}")
        return sorted({*range(0, n_layers, step), n_layers - 1})
    if strategy is LayerStrategy.FIRST_MIDDLE_LAST:
        return sorted({0, n_layers // 2, n_layers - 1})
    if not custom:
        raise SiteError("a custom layer strategy needs at least one layer")
    return sorted(resolve_layers(custom, n_layers))


def parse_layers(text: str, n_layers: int) -> list[int]:
    """Parse a ``--layers`` value: ``all``, ``every:4``, ``first,middle,last``, ``0,3,-1`` or ranges ``10-20``.

    Examples:
        >>> parse_layers("every:4", 12), parse_layers("first,middle,last", 12)
        ([0, 4, 8, 11], [0, 6, 11])
        >>> parse_layers("0,9-10,-1", 12), parse_layers("9--1", 12)  # a range may end counted from the last
        ([0, 9, 10, 11], [9, 10, 11])
        >>> parse_layers("5-3", 12)
        Traceback (most recent call last):
        ...
        mechscope.errors.SiteError: bad layer range '5-3': the start is after the end

    Raises:
        SiteError: the text is malformed or names a layer outside the model.
    """
    text = text.strip().lower()
    if text == "all":
        return select_layers(n_layers)
    if text.startswith("every:"):
        try:
            step = int(text.split(":", 1)[1])
        except ValueError:
            raise SiteError(f"bad --layers '{text}'; write every:N with a whole number N") from None
        return select_layers(n_layers, LayerStrategy.EVENLY_SPACED, step=step)
    if text in ("first,middle,last", "fml"):
        return select_layers(n_layers, LayerStrategy.FIRST_MIDDLE_LAST)
    custom: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        match = _RANGE.match(part)
        try:
            if match:
                # an end counted from the last layer (``2--1``) is resolved before the range is expanded
                lo, hi = (resolve_layer(int(match.group(i)), n_layers) for i in (1, 2))
                if lo > hi:
                    raise SiteError(f"bad layer range '{part}': the start is after the end")
                custom.extend(range(lo, hi + 1))
            else:
                custom.append(int(part))
        except ValueError:
            raise SiteError(
                f"bad --layers '{text}'; use all, every:N, first,middle,last, a list such as 0,3,-1 or a range 2-5"
            ) from None
    return select_layers(n_layers, LayerStrategy.CUSTOM, custom=custom)
