"""The colour maps of the reports: one documented `Scale` per quantity, never a table normalised on its own peak.

Two maps. `sequential` runs from white (the low end) to dark blue (the high end), for probabilities and scores in
[0, 1] (or any range with a natural bottom, such as entropy in nats, 0 .. log(n)). `diverging` runs from blue
(negative) through white (0) to red (positive), symmetric around 0, for signed quantities (effects, logit
differences). Both return CSS ``rgb(...)`` strings and clamp values outside their range to its ends.

>>> sequential(0.0), sequential(1.0)
('rgb(255,255,255)', 'rgb(8,48,107)')
>>> diverging(0.0, 2.0)
'rgb(255,255,255)'
>>> Scale("probability", 0.0, 1.0).colour(0.5) == sequential(0.5)
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: Sequential anchors, white to dark blue (after ColorBrewer "Blues").
_BLUES = ((255, 255, 255), (198, 219, 239), (107, 174, 214), (33, 113, 181), (8, 48, 107))
#: The positive half of the diverging map, white to dark red (after ColorBrewer "RdBu"); the negative half is
#: its mirror, red and blue swapped, so that ``-v`` is exactly as far from white as ``v``.
_REDS = ((255, 255, 255), (253, 219, 199), (244, 165, 130), (214, 96, 77), (150, 20, 40))
_BLUE_HALF = tuple((b, g, r) for r, g, b in _REDS)


#: The categorical colours (after ColorBrewer "Paired" and Tableau 10): distinct hues, light and dark pairs.
CATEGORIES = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
    (174, 199, 232),
    (255, 187, 120),
)

#: Cells with no value (not measured, no such tensor, off the scale) in every heatmap: light grey, not white.
MISSING = "rgb(236,236,236)"


def _ramp(anchors: tuple[tuple[int, int, int], ...], level: float) -> tuple[int, int, int]:
    level = 0.0 if math.isnan(level) else max(0.0, min(1.0, level))
    where = level * (len(anchors) - 1)
    i = min(int(where), len(anchors) - 2)
    t = where - i
    a, b = anchors[i], anchors[i + 1]
    red, green, blue = (round(a[c] + (b[c] - a[c]) * t) for c in range(3))
    return red, green, blue


def _css(rgb: tuple[int, int, int]) -> str:
    return f"rgb({rgb[0]},{rgb[1]},{rgb[2]})"


def sequential(value: float, low: float = 0.0, high: float = 1.0) -> str:
    """White at ``low`` to dark blue at ``high`` (clamped), monotone in darkness."""
    span = (high - low) or 1.0
    return _css(_ramp(_BLUES, (value - low) / span))


def diverging(value: float, limit: float = 1.0) -> str:
    """Blue for ``-limit``, white for 0, red for ``+limit`` (clamped); ``-v`` is the mirror of ``v``.

    >>> diverging(1.0), diverging(-1.0)
    ('rgb(150,20,40)', 'rgb(40,20,150)')
    """
    limit = abs(limit) or 1.0
    level = value / limit
    return _css(_ramp(_REDS if level >= 0 else _BLUE_HALF, abs(level)))


def categorical(index: int) -> str:
    """The colour of category ``index`` (cycling through `CATEGORIES`).

    >>> categorical(0), categorical(12) == categorical(0)
    ('rgb(31,119,180)', True)
    """
    return _css(CATEGORIES[index % len(CATEGORIES)])


def luminance(css: str) -> float:
    """The relative luminance (0 black .. 1 white) of an ``rgb(r,g,b)`` string.

    >>> luminance("rgb(255,255,255)"), luminance("rgb(0,0,0)")
    (1.0, 0.0)
    """
    red, green, blue = (int(part) / 255 for part in css.removeprefix("rgb(").removesuffix(")").split(","))
    return 0.2126 * red + 0.7152 * green + 0.0722 * blue


def ink(background: str) -> str:
    """A text colour readable on ``background``: white on dark cells, near-black on light ones."""
    return "#fff" if luminance(background) < 0.5 else "#222"


@dataclass(frozen=True)
class Scale:
    """One quantity's colour scale: its name (with unit), its range and its kind.

    A sequential scale maps ``low`` .. ``high``; a diverging one maps ``-high`` .. ``high`` with 0 white
    (``low`` is then ``-high``); a categorical one gives each integer ``low`` .. ``high`` its own colour of
    `CATEGORIES` (cycling past 12: a page also writes the category in the cell), for labels such as experts.
    """

    name: str
    low: float
    high: float
    kind: str = "sequential"

    @classmethod
    def signed(cls, name: str, limit: float) -> Scale:
        """A diverging scale symmetric around 0: ``-limit`` .. ``limit``."""
        limit = abs(limit) or 1.0
        return cls(name, -limit, limit, "diverging")

    @classmethod
    def categories(cls, name: str, count: int) -> Scale:
        """A categorical scale of ``count`` categories, 0 .. count - 1."""
        return cls(name, 0.0, float(max(count, 1) - 1), "categorical")

    def colour(self, value: float) -> str:
        """The CSS colour of ``value`` on this scale."""
        if self.kind == "categorical":
            return categorical(int(value))
        if self.kind == "diverging":
            return diverging(value, self.high)
        return sequential(value, self.low, self.high)

    def level(self, value: float) -> float:
        """Where ``value`` falls on the scale, 0 (``low``) .. 1 (``high``), clamped."""
        span = (self.high - self.low) or 1.0
        return max(0.0, min(1.0, (value - self.low) / span))


#: The one scale of probabilities and of scores in [0, 1] (attention weights, sink mass, role scores).
UNIT = Scale("probability / score", 0.0, 1.0)


def entropy_scale(n_keys: int) -> Scale:
    """Entropy in nats of a distribution over ``n_keys`` keys: 0 (one key) .. log(n_keys) (uniform).

    >>> round(entropy_scale(4).high, 4)
    1.3863
    """
    return Scale("entropy (nats)", 0.0, math.log(max(2, n_keys)))
