"""A small chart kit for the reports: an SVG heatmap, a line chart, a colour legend, a table and offline downloads.

Every chart is a standalone SVG document (it carries its ``xmlns``): drawn inline in the page inside a
`figure`, whose buttons save that same element as an SVG or PNG file (`mechscope.viz.save`). Results download
as JSON through `download_json`. Every string that reaches the markup goes through ``html.escape`` (labels and
tokens are user data); numbers are formatted here.

>>> svg = line_chart([Series("p", [0, 2, 3], [0.1, 0.5, 0.9])], x_title="layer", y_title="probability")
>>> svg.startswith('<svg xmlns="http://www.w3.org/2000/svg"')
True
>>> ticks(0, 10, 200, 40)
[0, 2, 4, 6, 8, 10]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from html import escape
from urllib.parse import quote

from mechscope.text import show_whitespace
from mechscope.viz.colors import MISSING, Scale, ink
from mechscope.viz.raster import png_data_uri, rgb
from mechscope.viz.save import save_buttons

SVG_NS = "http://www.w3.org/2000/svg"
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def num(value: float) -> str:
    """A short, readable number (three significant digits)."""
    return f"{value:.3g}"


def clip(label: str, limit: int = 12) -> str:
    """``label`` cut to ``limit`` characters (with an ellipsis); not yet escaped."""
    return label if len(label) <= limit else label[: limit - 1] + "…"


def _attrs(values: dict[str, str]) -> str:
    return "".join(f' {escape(k, quote=True)}="{escape(v, quote=True)}"' for k, v in values.items())


def legend(scale: Scale, *, steps: int = 24, width: int = 192) -> str:
    """A colour bar for ``scale`` that names the quantity and states its minimum and maximum.

    A categorical scale gets one swatch per category instead, each labelled with its number.
    """
    if scale.kind == "categorical":
        return _swatches(scale)
    step = width / steps
    rects = "".join(
        f'<rect x="{i * step:.1f}" y="0" width="{step + 0.5:.1f}" height="12" '
        f'fill="{scale.colour(scale.low + (scale.high - scale.low) * (i + 0.5) / steps)}"/>'
        for i in range(steps)
    )
    bar = f'<svg xmlns="{SVG_NS}" width="{width}" height="12" aria-hidden="true">{rects}</svg>'
    middle = ' <span class="scale-mid">(0 is white)</span>' if scale.kind == "diverging" else ""
    return (
        f'<div class="legend-scale" data-scale="{escape(scale.name, quote=True)}" data-min="{num(scale.low)}" '
        f'data-max="{num(scale.high)}" data-kind="{scale.kind}"><span class="scale-name">{escape(scale.name)}:</span> '
        f'<span class="scale-min">{num(scale.low)}</span> {bar} <span class="scale-max">{num(scale.high)}</span>'
        f"{middle}</div>"
    )


def _swatches(scale: Scale) -> str:
    count = int(scale.high) + 1
    items = "".join(
        f'<span class="swatch" style="display:inline-block;padding:0 4px;margin-right:2px;'
        f'background:{scale.colour(i)};color:{ink(scale.colour(i))}">{i}</span>'
        for i in range(count)
    )
    return (
        f'<div class="legend-scale" data-scale="{escape(scale.name, quote=True)}" data-min="0" '
        f'data-max="{count - 1}" data-kind="categorical"><span class="scale-name">{escape(scale.name)}:</span> '
        f'<span class="scale-min">0</span> … <span class="scale-max">{count - 1}</span> {items}</div>'
    )


def heatmap(
    values: Sequence[Sequence[float]],
    *,
    rows: Sequence[str],
    columns: Sequence[str],
    scale: Scale,
    x_title: str,
    y_title: str,
    cell: int = 18,
    tip: Callable[[int, int, float], str] | None = None,
    cell_attrs: Callable[[int, int, float], dict[str, str]] | None = None,
    text: Callable[[int, int, float], str] | None = None,
    cell_width: int | None = None,
    raster: dict[str, str] | None = None,
    label: str = "heatmap",
) -> str:
    """An SVG heatmap, ``values[row][column]`` coloured on ``scale``, rows and columns labelled, axis titles.

    ``tip(row, column, value)`` is the hover text of a cell (as a ``<title>``); ``cell_attrs`` adds attributes;
    ``text`` writes a short label in each cell (in black or white, whichever reads on its colour); NaN cells
    (no value) are drawn in the light grey `MISSING`, off the scale. Cells are ``cell`` pixels high and
    ``cell_width`` (default ``cell``) wide. ``raster`` (the image's attributes, may be empty) draws the cells
    as one PNG image instead of one rect each (`mechscope.viz.raster`), for dense grids: ``tip``,
    ``cell_attrs`` and ``text`` are then not drawn; a ``data-values`` path lets the page's script show values
    on hover (`mechscope.viz.save`).
    """
    font = max(7, min(11, int(cell * 0.7)))
    chars = 10
    wide = cell_width or cell
    label_w = int(min(chars, max((len(t) for t in (*rows, *columns)), default=1)) * font * 0.62) + 6
    left, top = 16 + label_w, 16 + label_w
    width, height = left + len(columns) * wide + 8, top + len(rows) * cell + 8
    parts = [
        f'<svg xmlns="{SVG_NS}" width="{width}" height="{height}" font-family="ui-monospace, monospace" '
        f'font-size="{font}" role="img" aria-label="{escape(label, quote=True)}">',
        f'<text x="{left + len(columns) * wide / 2:.1f}" y="11" text-anchor="middle" font-family="sans-serif">'
        f"{escape(x_title)}</text>",
        f'<text transform="rotate(-90 11 {top + len(rows) * cell / 2:.1f})" x="11" y="{top + len(rows) * cell / 2:.1f}"'
        f' text-anchor="middle" font-family="sans-serif">{escape(y_title)}</text>',
    ]
    for c, name in enumerate(columns):
        x, y = left + (c + 0.5) * wide + font / 3, top - 3
        parts.append(
            f'<text transform="rotate(-90 {x:.1f} {y})" x="{x:.1f}" y="{y}">{escape(clip(name, chars))}</text>'
        )
    for r, name in enumerate(rows):
        baseline = top + (r + 0.5) * cell + font / 3
        parts.append(f'<text x="{left - 3}" y="{baseline:.1f}" text-anchor="end">{escape(clip(name, chars))}</text>')

    def fill(value: float) -> str:
        return MISSING if math.isnan(value) else scale.colour(value)

    if raster is not None:
        pixels = [[rgb(fill(value)) for value in row] for row in values]
        parts.append(
            f'<image class="raster"{_attrs(raster)} x="{left}" y="{top}" width="{len(columns) * wide}" '
            f'height="{len(rows) * cell}" preserveAspectRatio="none" style="image-rendering:pixelated" '
            f'href="{png_data_uri(pixels)}"/>'
        )
    else:
        for r, row in enumerate(values):
            for c, value in enumerate(row):
                parts.append(
                    _cell(left + c * wide, top + r * cell, wide, cell, fill(value), r, c, value, cell_attrs, tip)
                )
                if text:
                    parts.append(
                        f'<text class="cell-text" x="{left + (c + 0.5) * wide:.1f}" '
                        f'y="{top + (r + 0.5) * cell + font / 3:.1f}" text-anchor="middle" fill="{ink(fill(value))}" '
                        f'pointer-events="none">{escape(text(r, c, value))}</text>'
                    )
    parts.append("</svg>")
    return "".join(parts)


def _cell(
    x: float,
    y: float,
    width: int,
    height: int,
    colour: str,
    r: int,
    c: int,
    value: float,
    cell_attrs: Callable[[int, int, float], dict[str, str]] | None,
    tip: Callable[[int, int, float], str] | None,
) -> str:
    extra = _attrs(cell_attrs(r, c, value)) if cell_attrs else ""
    title = f"<title>{escape(tip(r, c, value))}</title>" if tip else ""
    return f'<rect{extra} x="{x}" y="{y}" width="{width}" height="{height}" fill="{colour}">{title}</rect>'


@dataclass
class Series:
    """One line of a `line_chart`: a label and its points; ``data`` becomes ``data-*`` attributes."""

    label: str
    xs: Sequence[float]
    ys: Sequence[float]
    data: dict[str, str] = field(default_factory=dict)


def ticks(low: float, high: float, pixels: float, gap: float = 36) -> list[int]:
    """Integer ticks in ``low .. high`` at a 1-2-5 step, at least ``gap`` pixels apart on a ``pixels`` axis."""
    span = max(high - low, 1e-9)
    step, scale = 1, 1
    while pixels * step / span < gap:
        for factor in (2, 5, 10):
            step = factor * scale
            if pixels * step / span >= gap:
                break
        else:
            scale *= 10
            continue
        break
    first = int(-(-low // step) * step)
    return list(range(first, int(high) + 1, step))


def spread(ys: Sequence[float], gap: float, low: float, high: float) -> list[float]:
    """``ys`` moved apart so that no two are closer than ``gap``, kept within ``low .. high``, order kept."""
    order = sorted(range(len(ys)), key=lambda i: ys[i])
    placed = [float(ys[i]) for i in order]
    for i in range(1, len(placed)):
        placed[i] = max(placed[i], placed[i - 1] + gap)
    if placed and placed[-1] > high:
        placed[-1] = high
        for i in range(len(placed) - 2, -1, -1):
            placed[i] = min(placed[i], placed[i + 1] - gap)
    placed = [max(low, y) for y in placed]
    out = [0.0] * len(ys)
    for rank, i in enumerate(order):
        out[i] = placed[rank]
    return out


def line_chart(
    series: Sequence[Series],
    *,
    x_title: str,
    y_title: str,
    y_low: float = 0.0,
    y_high: float = 1.0,
    width: int = 600,
    height: int = 280,
    label: str = "line chart",
) -> str:
    """An SVG line chart: each x at its real position, axis titles, ticks and end labels that do not overlap."""
    left, right, top, bottom = 52, 110, 14, 44
    xs = [x for s in series for x in s.xs]
    x_low, x_high = (min(xs), max(xs)) if xs else (0.0, 1.0)
    if x_high == x_low:
        x_low, x_high = x_low - 1, x_high + 1
    plot_w, plot_h = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + plot_w * (x - x_low) / (x_high - x_low)

    def py(y: float) -> float:
        level = (min(max(y, y_low), y_high) - y_low) / ((y_high - y_low) or 1.0)
        return top + plot_h * (1 - level)

    base = top + plot_h
    parts = [
        f'<svg xmlns="{SVG_NS}" class="line-chart" width="{width}" height="{height}" font-family="sans-serif" '
        f'font-size="11" role="img" aria-label="{escape(label, quote=True)}">',
        f'<line x1="{left}" y1="{base}" x2="{left + plot_w}" y2="{base}" stroke="#999"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{base}" stroke="#999"/>',
    ]
    for tick in ticks(x_low, x_high, plot_w):
        x = px(tick)
        parts.append(
            f'<line x1="{x:.1f}" y1="{base}" x2="{x:.1f}" y2="{base + 4}" stroke="#999"/>'
            f'<text class="x-tick" x="{x:.1f}" y="{base + 16}" text-anchor="middle">{tick}</text>'
        )
    for i in range(5):
        value = y_low + (y_high - y_low) * i / 4
        y = py(value)
        parts.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#eee"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{num(value)}</text>'
        )
    parts.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" text-anchor="middle">{escape(x_title)}</text>'
        f'<text transform="rotate(-90 14 {top + plot_h / 2:.1f})" x="14" y="{top + plot_h / 2:.1f}" '
        f'text-anchor="middle">{escape(y_title)}</text>'
    )
    ends = spread([py(s.ys[-1]) if s.ys else base for s in series], 13, top + 4, base)
    for n, (line, end) in enumerate(zip(series, ends, strict=True)):
        colour = PALETTE[n % len(PALETTE)]
        name = escape(line.label)
        points = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(line.xs, line.ys, strict=True))
        data = _attrs({f"data-{k}": v for k, v in line.data.items()})
        parts.append(
            f'<polyline class="curve"{data} points="{points}" fill="none" stroke="{colour}" stroke-width="2">'
            f"<title>{name}</title></polyline>"
        )
        parts.extend(
            f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5" fill="{colour}"><title>{name}: {num(x)}, {num(y)}'
            "</title></circle>"
            for x, y in zip(line.xs, line.ys, strict=True)
        )
        if line.ys:
            parts.append(
                f'<text class="end-label" x="{left + plot_w + 6}" y="{end + 4:.1f}" fill="{colour}" '
                f'font-family="ui-monospace, monospace">{escape(clip(line.label, 14))}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


def table(header: Sequence[str], rows: Sequence[Sequence[str | float | int]], *, css: str = "data") -> str:
    """An HTML table; strings are escaped, floats shown with three significant digits."""

    def cell(value: str | float | int) -> str:
        if isinstance(value, float):
            return f'<td class="num">{num(value)}</td>'
        if isinstance(value, int):
            return f'<td class="num">{value}</td>'
        return f"<td>{escape(value)}</td>"

    head = "".join(f"<th>{escape(name)}</th>" for name in header)
    body = "".join(f"<tr>{''.join(cell(v) for v in row)}</tr>" for row in rows)
    return f'<table class="{escape(css, quote=True)}"><tr>{head}</tr>{body}</table>'


#: Characters left as they are in a ``data:`` URI: none of them ends an attribute, starts markup or a fragment.
_URI_SAFE = "=:/;,.-_()'!*~@$+?"


def download_json(text: str, filename: str, what: str = "JSON", *, result: bool = False) -> str:
    """A link that saves the JSON ``text`` as ``filename`` offline (a ``data:`` link: it works without script).

    ``result`` marks it as the page's result, which the page's script reads to show values on hover over
    raster heatmaps (so the numbers are in the page once).
    """
    href = "data:application/json;charset=utf-8," + quote(text, safe=_URI_SAFE)
    marker = " data-result" if result else ""
    return (
        f'<a class="download"{marker} download="{escape(filename, quote=True)}" href="{href}">'
        f"download {escape(what)}</a>"
    )


def figure(
    svg: str,
    *,
    filename: str,
    caption: str = "",
    css: str = "chart",
    data: dict[str, str] | None = None,
    scroll: str = "",
    focusable: bool = False,
) -> str:
    """``svg`` in a ``<figure>`` with its caption and the buttons that save it as SVG or PNG (`save_buttons`).

    ``scroll`` (a CSS class) puts the drawing in a `scroller` that opens at its right end; ``focusable`` lets a
    click or the keyboard focus the figure (the stylesheet enlarges a focused small multiple).
    """
    text = f"{escape(caption)} " if caption else ""
    extra = _attrs({f"data-{k}": v for k, v in (data or {}).items()}) + (' tabindex="0"' if focusable else "")
    drawing = scroller(svg, css=scroll) if scroll else svg
    return (
        f'<figure class="{escape(css, quote=True)}"{extra}>{drawing}'
        f"<figcaption>{text}{save_buttons(filename)}</figcaption></figure>"
    )


def visible(token: str) -> str:
    """``token`` with whitespace made visible, escaped for HTML.

    >>> visible(" <b>")
    '␣&lt;b&gt;'
    """
    return escape(show_whitespace(token), quote=True)


def metric_name(name: str | None) -> str:
    """The metric as the header names it (``name`` may be missing from results saved before it was recorded)."""
    return name if name else "not recorded"


#: The scroller: right-to-left so that it opens at its right end (the last positions), content left-to-right.
SCROLLER = "overflow-x:auto;direction:rtl;max-width:100%;width:fit-content"
INNER = "direction:ltr;display:inline-block"


def scroller(inner: str, *, css: str = "scroll") -> str:
    """``inner`` in a horizontally scrollable box that opens scrolled to the right (the last columns)."""
    return f'<div class="{escape(css, quote=True)}" style="{SCROLLER}"><div style="{INNER}">{inner}</div></div>'
