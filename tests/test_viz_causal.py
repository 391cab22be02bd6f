"""The patching and ablation reports: metric named, legends with their range, escaping, criterion texts, downloads."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import pytest

from mechscope.causal.results import AblationEffect, AblationResult, PatchingResult
from mechscope.viz.ablation_report import render_ablation_html
from mechscope.viz.patching_report import render_patching_html
from tests.pages import assert_self_contained, figure_svgs
from tests.samples import head_sweep

HOSTILE = "<script>alert(1)</script>"
SVG = "{http://www.w3.org/2000/svg}"


class Page(HTMLParser):
    """What the tests read from a page: header text, legends, links, scripts, elements by attribute."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.depth: dict[str, int] = {}
        self.header = ""
        self.legends: list[dict[str, str]] = []
        self.links: list[dict[str, str]] = []
        self.scripts = 0
        self.cells: list[dict[str, str]] = []
        self.text_cells: list[str] = []
        self._in_text = False
        self.styles: list[str] = []
        self.html = html
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        self.depth[tag] = self.depth.get(tag, 0) + 1
        if tag == "script":
            self.scripts += 1
        if "legend-scale" in values.get("class", ""):
            self.legends.append(values)
        if tag == "a" and "download" in values:
            self.links.append(values)
        if any(k.startswith("data-effect") or k.startswith("data-delta") for k in values):
            self.cells.append(values)
        if tag == "td" and values.get("class") == "text":
            self._in_text = True
            self.text_cells.append("")
        if "style" in values:
            self.styles.append(values["style"])

    def handle_endtag(self, tag: str) -> None:
        self.depth[tag] = self.depth.get(tag, 0) - 1
        if tag == "td":
            self._in_text = False

    def handle_data(self, data: str) -> None:
        if self.depth.get("header", 0) > 0:
            self.header += data
        if self._in_text:
            self.text_cells[-1] += data


def svg_downloads(page: Page) -> list[ET.Element]:
    """The figures' drawings: what their "download SVG" buttons save."""
    return figure_svgs(page.html)


def patching_result(tokens: list[str], metric: str | None = "logit diff ␣Paris − ␣Tokyo") -> PatchingResult:
    layers = [0, 1, 2]
    effects = [[(layer + 1) * (p - 1) / (3 * len(tokens)) for p in range(len(tokens))] for layer in layers]
    effects[2][-1] = 1.7  # beyond the scale: clamped, still fine
    return PatchingResult(
        site="resid_post",
        clean_prompt="The capital of France is " + HOSTILE,
        corrupted_prompt="The capital of Japan is",
        tokens=tokens,
        layers=layers,
        clean_metric=2.5,
        corrupted_metric=-1.0,
        effects=effects,
        metric=metric,
    )


def test_patching_report_names_metric_states_range_and_escapes() -> None:
    tokens = ["The", " capital", " of", HOSTILE, " is"]
    html = render_patching_html(patching_result(tokens), model="toy <m>")
    assert HOSTILE not in html and "toy <m>" not in html
    page = Page(html)
    assert page.scripts == 1
    assert_self_contained(html)
    assert "logit diff ␣Paris − ␣Tokyo" in page.header
    [scale] = page.legends
    assert scale["data-kind"] == "diverging" and (scale["data-min"], scale["data-max"]) == ("-1", "1")
    assert len(page.cells) == 3 * len(tokens)
    assert {c["data-position"] for c in page.cells} == {str(p) for p in range(len(tokens))}
    assert any("direction:rtl" in s and "overflow-x:auto" in s for s in page.styles)  # opens at the last positions
    [svg] = svg_downloads(page)
    texts = ["".join(t.itertext()) for t in svg.iter(f"{SVG}text")]
    assert "position (token)" in texts and "layer" in texts
    assert len(list(svg.iter(f"{SVG}rect"))) == 3 * len(tokens)
    assert any(link["download"].endswith(".json") for link in page.links)


def test_patching_report_loads_old_json_without_metric() -> None:
    data = patching_result(["a", "b"]).model_dump()
    del data["metric"]
    old = PatchingResult.model_validate(data)
    assert old.metric is None
    assert "not recorded" in Page(render_patching_html(old)).header


def test_ablation_head_sweep_heatmap() -> None:
    html = render_ablation_html(head_sweep(HOSTILE, HOSTILE), model="toy")
    assert HOSTILE not in html
    page = Page(html)
    assert page.scripts == 1 and HOSTILE in page.header  # named, but escaped
    assert_self_contained(html)
    [scale] = page.legends
    assert scale["data-kind"] == "diverging" and (scale["data-min"], scale["data-max"]) == ("-0.5", "0.5")
    assert len(page.cells) == 6
    [svg] = svg_downloads(page)
    texts = ["".join(t.itertext()) for t in svg.iter(f"{SVG}text")]
    assert "head" in texts and "layer" in texts


def test_ablation_layer_table_for_a_grid() -> None:
    effects = [
        AblationEffect(component=kind, layer=layer, metric=1.0, delta=0.2 * layer - 0.3)
        for kind in ("attn", "mlp")
        for layer in range(3)
    ]
    result = AblationResult(
        prompt="p", component="attn+mlp", method="mean", clean_metric=0.0, effects=effects, metric="−KL to clean"
    )
    page = Page(render_ablation_html(result))
    assert "−KL to clean" in page.header
    assert len(page.cells) == 6 and {c["data-component"] for c in page.cells} == {"attn", "mlp"}
    [scale] = page.legends
    assert scale["data-max"] == "0.3"  # the clean metric is 0: the largest change sets the scale
    assert not svg_downloads(page)


def test_ablation_criterion_table_shows_each_text() -> None:
    texts = [f"text {i} {HOSTILE}\nline two" for i in range(4)]
    effects = [
        AblationEffect(component="mlp", layer=i, text=text, criterion=i % 2 == 0) for i, text in enumerate(texts)
    ]
    result = AblationResult(
        prompt="Say hi",
        component="mlp",
        method="zero",
        clean_text="clean " + HOSTILE,
        clean_criterion=True,
        effects=effects,
        criterion="contains 'hi'",
    )
    html = render_ablation_html(result)
    assert HOSTILE not in html
    page = Page(html)
    assert page.text_cells == ["clean " + HOSTILE, *texts]
    assert "criterion (contains 'hi')" in page.header  # the criterion named, not only "a criterion"
    assert html.count("(flipped)") == 2
    assert any(link["download"].endswith(".json") for link in page.links)


@pytest.mark.parametrize("kind", ["patching", "ablation"])
def test_downloads_decode(kind: str) -> None:
    html = (
        render_patching_html(patching_result(["x"] * 40))
        if kind == "patching"
        else render_ablation_html(head_sweep(HOSTILE))
    )
    [svg] = svg_downloads(Page(html))
    assert svg.tag == f"{SVG}svg" and int(svg.get("width", "0")) > 0


def test_patching_end_to_end_on_toy(tmp_path: object) -> None:
    import mechscope as ms
    from mechscope.causal import LogitDiff, activation_patching

    lm = ms.load("toy")
    metric = LogitDiff(lm, correct=" Paris", wrong=" Tokyo")
    result = activation_patching(lm, "The capital of France is", "The capital of Japan is", metric)
    assert result.metric == "logit diff ␣Paris − ␣Tokyo"
    page = Page(render_patching_html(result, model="toy"))
    assert "logit diff ␣Paris − ␣Tokyo" in page.header
    assert len(page.cells) == len(result.layers) * len(result.tokens)
    [svg] = svg_downloads(page)
    assert svg.tag == f"{SVG}svg"
