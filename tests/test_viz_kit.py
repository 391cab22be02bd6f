"""The chart kit of the reports (issue 16): colour maps, legends, line chart positions, escaping, downloads."""

from __future__ import annotations

import itertools
import math
import xml.etree.ElementTree as ET
from urllib.parse import unquote

import pytest

from mechscope.viz.charts import Series, download_svg, heatmap, legend, line_chart, spread, table, ticks
from mechscope.viz.colors import UNIT, Scale, diverging, entropy_scale, luminance, sequential
from mechscope.viz.page import render_page

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
    for html in (chart, grid, legend(Scale(EVIL, 0, 1)), rendered, download_svg(grid, EVIL)):
        assert EVIL not in html and "<script" not in html
    ET.fromstring(chart)  # still well-formed XML
    ET.fromstring(grid)


def test_svg_download_decodes_to_the_svg() -> None:
    svg = heatmap([[0.1, 0.9]], rows=["q"], columns=["a", "b"], scale=UNIT, x_title="key", y_title="query")
    link = download_svg(svg, "figure.svg")
    href = link.split('href="', 1)[1].split('"', 1)[0]
    assert href.startswith("data:image/svg+xml;charset=utf-8,")
    assert unquote(href.split(",", 1)[1]) == svg
    assert ET.fromstring(unquote(href.split(",", 1)[1])).tag == f"{SVG}svg"
