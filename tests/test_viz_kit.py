"""The chart kit of the reports (issue 16): colour maps, legends, line chart positions, escaping, downloads."""

from __future__ import annotations

import base64
import itertools
import math
import struct
import xml.etree.ElementTree as ET
import zlib

import pytest

from mechscope.viz.charts import Series, figure, heatmap, legend, line_chart, spread, table, ticks
from mechscope.viz.colors import MISSING, UNIT, Scale, diverging, entropy_scale, luminance, sequential
from mechscope.viz.page import render_page
from mechscope.viz.raster import png, rgb
from tests.pages import assert_self_contained, figure_svgs, save_buttons

EVIL = "<script>alert(1)</script>"
SVG = "{http://www.w3.org/2000/svg}"


def _rgb(css: str) -> tuple[int, ...]:
    return tuple(int(p) for p in css.removeprefix("rgb(").removesuffix(")").split(","))


def test_diverging_is_white_at_zero_and_symmetric() -> None:
    assert diverging(0.0, 3.0) == "rgb(255,255,255)"
    for value in (0.1, 0.5, 1.0, 2.5):
        positive, negative = _rgb(diverging(value, 2.5)), _rgb(diverging(-value, 2.5))
        assert positive[0] >= positive[2] and negative[2] >= negative[0]  # red above 0, blue below
        assert negative == positive[::-1]  # the mirror: red and blue swapped, as far from white
    assert diverging(10.0, 1.0) == diverging(1.0, 1.0)  # clamped
    scale = Scale.signed("logit difference", -4.0)
    assert (scale.low, scale.high, scale.kind) == (-4.0, 4.0, "diverging")


def test_sequential_is_monotone() -> None:
    levels = [luminance(sequential(i / 50)) for i in range(51)]
    assert all(a > b for a, b in itertools.pairwise(levels))
    assert sequential(0.0) == "rgb(255,255,255)" and sequential(-1.0) == sequential(0.0)
    assert sequential(math.nan) == sequential(0.0)
    assert sequential(1.0, 0.0, 2.0) == sequential(0.5)


def test_entropy_has_its_own_range() -> None:
    assert entropy_scale(8).high == pytest.approx(math.log(8)) and entropy_scale(8).low == 0.0


def test_legend_states_its_range() -> None:
    html = legend(entropy_scale(4))
    assert 'data-min="0"' in html and 'data-max="1.39"' in html
    assert '<span class="scale-min">0</span>' in html and '<span class="scale-max">1.39</span>' in html
    assert "entropy (nats)" in html
    assert "0 is white" in legend(Scale.signed("effect", 2.0))


def test_line_chart_puts_x_at_real_positions() -> None:
    svg = line_chart([Series("p", [0, 2, 3], [0.0, 0.5, 1.0])], x_title="layer", y_title="probability")
    root = ET.fromstring(svg)
    line = root.find(f"{SVG}polyline")
    assert line is not None
    xs = [float(point.split(",")[0]) for point in line.attrib["points"].split()]
    step = (xs[2] - xs[0]) / 3
    assert xs[1] - xs[0] == pytest.approx(2 * step, abs=0.2)  # layer 2 is two steps from layer 0, not one
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert "layer" in texts and "probability" in texts


def test_ticks_and_end_labels_do_not_overlap() -> None:
    assert ticks(0, 31, 300, 36) == [0, 5, 10, 15, 20, 25, 30]
    placed = spread([50.0, 50.5, 51.0, 200.0], 13, 0, 210)
    ordered = sorted(placed)
    assert all(b - a >= 13 - 1e-9 for a, b in itertools.pairwise(ordered))
    assert max(spread([100.0, 100.0, 100.0], 13, 0, 105)) <= 105


def test_hostile_labels_are_escaped() -> None:
    chart = line_chart([Series(EVIL, [0, 1], [0.2, 0.3], data={"token": EVIL})], x_title=EVIL, y_title=EVIL)
    grid = heatmap([[0.5]], rows=[EVIL], columns=[EVIL], scale=UNIT, x_title=EVIL, y_title=EVIL, tip=lambda *_: EVIL)
    rendered = render_page(EVIL, model=EVIL, shows=EVIL, sections=[(EVIL, table([EVIL], [[EVIL]]))])
    for html in (chart, grid, legend(Scale(EVIL, 0, 1)), figure(grid, filename=EVIL, caption=EVIL)):
        assert EVIL not in html and "<script" not in html
    assert EVIL not in rendered
    assert_self_contained(rendered)  # the page's one script is the kit's own
    ET.fromstring(chart)  # still well-formed XML
    ET.fromstring(grid)


def test_figure_offers_svg_and_png_of_its_own_drawing() -> None:
    svg = heatmap([[0.1, 0.9]], rows=["q"], columns=["a", "b"], scale=UNIT, x_title="key", y_title="query")
    html = figure(svg, filename="figure.svg", caption="A figure.")
    assert save_buttons(html) == [("svg", "figure"), ("png", "figure")]
    [drawn] = figure_svgs(html)
    assert ET.tostring(drawn) == ET.tostring(ET.fromstring(svg))  # the file saved is the drawing shown
    assert "data:image/svg" not in html  # no second copy of the figure in the page


def test_heatmap_writes_cell_text_and_greys_missing_values() -> None:
    svg = heatmap(
        [[0.2, math.nan]],
        rows=["r"],
        columns=["a", "b"],
        scale=UNIT,
        x_title="x",
        y_title="y",
        text=lambda r, c, v: "n/a" if math.isnan(v) else f"{v:.1f}",
        cell_width=40,
    )
    root = ET.fromstring(svg)
    rects = list(root.iter(f"{SVG}rect"))
    assert [r.get("fill") for r in rects] == [UNIT.colour(0.2), MISSING] and rects[1].get("width") == "40"
    assert [t.text for t in root.iter(f"{SVG}text") if t.get("class") == "cell-text"] == ["0.2", "n/a"]


def _png_pixels(data: bytes) -> tuple[int, int, bytes]:
    """Width, height and raw RGB rows (filter bytes dropped) of an 8-bit RGB PNG, each chunk's CRC checked."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    at, chunks = 8, {}
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        (crc,) = struct.unpack(">I", data[at + 8 + length : at + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        chunks[kind] = body
        at += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (depth, colour) == (8, 2) and b"IEND" in chunks
    raw = zlib.decompress(chunks[b"IDAT"])
    stride = 1 + 3 * width
    rows = [raw[i * stride : (i + 1) * stride] for i in range(height)]
    assert all(row[0] == 0 for row in rows)
    return width, height, b"".join(row[1:] for row in rows)


def test_png_encodes_the_pixels_given() -> None:
    pixels = [[(255, 0, 0), (0, 255, 0), (0, 0, 255)], [(1, 2, 3), (4, 5, 6), (7, 8, 9)]]
    width, height, raw = _png_pixels(png(pixels))
    assert (width, height) == (3, 2)
    assert raw == bytes(channel for row in pixels for pixel in row for channel in pixel)
    with pytest.raises(ValueError):
        png([[(0, 0, 0)], [(0, 0, 0), (1, 1, 1)]])


def test_raster_heatmap_draws_one_image_of_the_cell_colours() -> None:
    values = [[0.0, 0.5], [1.0, math.nan]]
    svg = heatmap(
        values,
        rows=["a", "b"],
        columns=["c", "d"],
        scale=UNIT,
        x_title="x",
        y_title="y",
        cell=6,
        raster={"data-values": "patterns.0"},
    )
    root = ET.fromstring(svg)
    assert not list(root.iter(f"{SVG}rect"))
    [image] = root.iter(f"{SVG}image")
    assert image.get("data-values") == "patterns.0" and (image.get("width"), image.get("height")) == ("12", "12")
    data = base64.b64decode(image.get("href", "").removeprefix("data:image/png;base64,"))
    width, height, raw = _png_pixels(data)
    expected = [rgb(UNIT.colour(0.0)), rgb(UNIT.colour(0.5)), rgb(UNIT.colour(1.0)), rgb(MISSING)]
    assert (width, height) == (2, 2) and raw == bytes(channel for pixel in expected for channel in pixel)
