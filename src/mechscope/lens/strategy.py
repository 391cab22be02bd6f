"""Which layers an analysis looks at: all, every n-th, first/middle/last, or a custom list."""

from __future__ import annotations

from enum import StrEnum

from mechscope.errors import SiteError


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
    layers = []
    for layer in custom or []:
        if not -n_layers <= layer < n_layers:
            raise SiteError(f"layer {layer} is out of range: the model has {n_layers} layers (0..{n_layers - 1})")
        layers.append(layer % n_layers)
    if not layers:
        raise SiteError("a custom layer strategy needs at least one layer")
    return sorted(set(layers))


def parse_layers(text: str, n_layers: int) -> list[int]:
    """Parse a CLI ``--layers`` value: ``all``, ``every:4``, ``first,middle,last`` or ``0,3,-1``."""
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
    try:
        custom = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SiteError(
            f"bad --layers '{text}'; use all, every:N, first,middle,last or a list such as 0,3,-1"
        ) from None
    return select_layers(n_layers, LayerStrategy.CUSTOM, custom=custom)
