"""Every HTML report opened in a real headless browser: Debian's chromium, driven by Playwright.

One browser serves the whole module; each test gets its own page (in a fresh browser context), and the pages it
shows are written to ``tmp_path`` and opened by their ``file://`` URL. A test fails on any JavaScript dialog (an
escaping bug running ``alert``), on any console error (a script error, or markup that the page's
Content-Security-Policy refused) and on any uncaught page error. The checks read the DOM as the browser built and
laid it out: elements drawn, their boxes, what scrolls, what a click enlarges, the files the save buttons download.

Screenshots are kept as test artifacts: every test saves a full-page screenshot of each page it showed, named after
the test (``<test>--<page>.png``), in the folder ``$MECHSCOPE_TEST_ARTIFACTS`` or, by default,
``build/test-artifacts/`` at the repository root (``build/`` is ignored by git).

The module is skipped when Playwright or chromium is missing (scripts/setup.sh installs chromium with apt-get;
Playwright's own browser download is not used).
"""

from __future__ import annotations

import base64
import math
import re
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import pytest
from pydantic import BaseModel

import mechscope as ms
from mechscope.attention.results import LayerAttention
from mechscope.attention.summary import layer_attention
from mechscope.causal.results import AblationEffect, AblationResult, CircuitGraph, Edge, Node, PatchingResult
from mechscope.lens.logit import LogitLens
from mechscope.lens.results import LensGrid, LensResult
from mechscope.viz.ablation_report import render_ablation_html
from mechscope.viz.attention_report import render_attention_html
from mechscope.viz.circuit_report import EMPTY, effect_text, render_circuit_html
from mechscope.viz.compare_report import render_compare_html
from mechscope.viz.lens_report import render_lens_html
from mechscope.viz.patching_report import render_patching_html
from mechscope.viz.save import SCRIPT
from mechscope.viz.weights_diff_report import render_weights_diff_html
from mechscope.weights.diff_results import ParamDiff, WeightDiff
from tests.pages import PNG_SIGNATURE, artifact_name, artifacts, png_size, record_trouble
from tests.samples import comparison, head_sweep

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Locator, Page

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("chromium is not installed (scripts/setup.sh installs it with apt-get)", allow_module_level=True)

pytestmark = pytest.mark.browser

EVIL = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'
HOSTILE = (EVIL, IMG)
SVG = "{http://www.w3.org/2000/svg}"
JSON_PREFIX = "data:application/json;charset=utf-8,"
PROMPT = "The capital of France is"
CLICK_MS = 60  # how long a click holds the mouse button down (see `download`)


# --- the browser, one page per test ---------------------------------------------------------------------------


@dataclass
class Viewer:
    """A test's browser page: `show` writes a report to a file and opens it; trouble on the page is recorded."""

    page: Page
    folder: Path
    test: str
    problems: list[str] = field(default_factory=list)
    shown: list[str] = field(default_factory=list)

    def show(self, html: str, name: str) -> Page:
        """Open ``html`` (saved as ``<name>.html``) by its file URL; the page shown before is screenshotted first."""
        self.keep()
        path = self.folder / f"{name}.html"
        path.write_text(html, encoding="utf-8")
        self.page.goto(path.as_uri())
        self.shown.append(name)
        self.check()
        return self.page

    def keep(self) -> None:
        """Save the full-page screenshot of the page now shown, named after the test and the page."""
        if self.shown:
            target = artifacts() / f"{self.test}--{self.shown[-1]}.png"
            self.page.screenshot(path=str(target), full_page=True)
            assert target.read_bytes().startswith(PNG_SIGNATURE)

    def check(self) -> None:
        """No dialog opened, nothing was logged as an error, no script failed."""
        assert not self.problems, self.problems


@pytest.fixture
def view(browser: Browser, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Viewer]:
    context = browser.new_context(accept_downloads=True, viewport={"width": 1024, "height": 768})
    page = context.new_page()
    viewer = Viewer(page, tmp_path, artifact_name(request))
    record_trouble(page, viewer.problems)
    yield viewer
    try:
        viewer.keep()
        viewer.check()
    finally:
        context.close()


# --- reading the page ----------------------------------------------------------------------------------------


def boxes(page: Page, selector: str) -> list[dict[str, Any]]:
    """Every element matching ``selector``: its attributes and its laid-out box (``x``, ``y``, ``w``, ``h``)."""
    return page.eval_on_selector_all(
        selector,
        """elements => elements.map(e => {
            const box = e.getBoundingClientRect(), attrs = {};
            for (const a of e.attributes) attrs[a.name] = a.value;
            return {attrs, text: e.textContent, x: box.x, y: box.y, w: box.width, h: box.height};
        })""",
    )


def legends(page: Page) -> dict[str, dict[str, str]]:
    """Each colour legend by the quantity it names: its data range and the range its text states."""
    found = {}
    for legend in page.locator("div.legend-scale").all():
        assert legend.is_visible()
        found[legend.get_attribute("data-scale") or ""] = {
            "min": legend.get_attribute("data-min") or "",
            "max": legend.get_attribute("data-max") or "",
            "text min": legend.locator(".scale-min").inner_text(),
            "text max": legend.locator(".scale-max").inner_text(),
            "text": legend.inner_text(),
        }
    return found


def heatmap_cells(figure: Locator) -> int:
    """How many cells the heatmap of ``figure`` draws, each laid out: a rect per cell, or a pixel of its raster image.

    Dense heatmaps (the attention page's small multiples) are one PNG image of one pixel per cell
    (`mechscope.viz.raster`); the others one rect per cell.
    """
    drawn = figure.locator("svg").first.evaluate(
        """svg => [...svg.querySelectorAll("rect, image.raster")].map(e => {
            const box = e.getBoundingClientRect();
            return {tag: e.tagName, href: e.getAttribute("href") || "", w: box.width, h: box.height};
        })"""
    )
    assert drawn and all(e["w"] > 0 and e["h"] > 0 for e in drawn)
    cells = 0
    for element in drawn:
        if element["tag"] == "rect":
            cells += 1
            continue
        assert element["href"].startswith("data:image/png;base64,")
        width, height = png_size(base64.b64decode(element["href"].removeprefix("data:image/png;base64,")))
        cells += width * height
    return cells


def download(page: Page, target: Locator) -> tuple[str, bytes]:
    """What clicking ``target`` downloads: the file's suggested name and its bytes.

    The click holds the button down for a moment, as a person does: chromium lets a tab download a file without
    asking once, then again only after a user interaction, which the press registers; an instant press and
    release can lose that race against the download it starts, and the download is then refused silently.
    """
    with page.expect_download() as started:
        target.click(delay=CLICK_MS)
    saved = started.value
    assert saved.failure() is None, saved.failure()
    return saved.suggested_filename, Path(saved.path()).read_bytes()


def check_figure_downloads(page: Page) -> int:
    """Each figure's two save buttons download its own drawing, as SVG and as a PNG at twice its size."""
    figures = page.locator("figure")
    for i in range(figures.count()):
        figure = figures.nth(i)
        drawn = figure.locator("svg").first
        rects, elements = drawn.locator("rect").count(), drawn.locator("*").count()
        width = float(drawn.get_attribute("width") or "nan")
        svg_button = figure.locator('button.save[data-save="svg"]')
        stem = svg_button.get_attribute("data-file")
        name, data = download(page, svg_button)
        assert name == f"{stem}.svg"
        root = ET.fromstring(data)
        assert root.tag == f"{SVG}svg"
        assert len(list(root.iter(f"{SVG}rect"))) == rects, name
        assert len(list(root.iter())) - 1 == elements, name  # the whole drawing, every element
        assert float(root.get("width", "nan")) == width
        name, data = download(page, figure.locator('button.save[data-save="png"]'))
        assert name == f"{stem}.png" and data.startswith(PNG_SIGNATURE)
        assert png_size(data)[0] == 2 * width, name
    return figures.count()


def check_json(page: Page, filename: str, model: type[BaseModel], result: BaseModel) -> None:
    """The JSON link's ``data:`` URL decodes to the result, and clicking it downloads the same result."""
    link = page.locator(f'a.download[download="{filename}"]')
    href = link.get_attribute("href") or ""
    assert href.startswith(JSON_PREFIX)
    assert model.model_validate_json(unquote(href.removeprefix(JSON_PREFIX))) == result
    name, data = download(page, link)
    assert name == filename and model.model_validate_json(data) == result


def inside(box: dict[str, Any], frame: dict[str, Any]) -> bool:
    return box["x"] >= frame["x"] - 0.5 and box["x"] + box["w"] <= frame["x"] + frame["w"] + 0.5


# --- the results ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(load_tiny: Callable[..., ms.LanguageModel]) -> ms.LanguageModel:
    return load_tiny("llama")


def lens_run(lm: ms.LanguageModel) -> tuple[LensResult, LensGrid]:
    lens = LogitLens(lm)
    return lens.run([PROMPT], track=["a", "e"])[0], lens.grid(PROMPT)


def hostile_lens() -> tuple[LensResult, LensGrid]:
    score = {"token": EVIL, "token_id": 1, "prob": 0.9, "logit": 3.0}
    other = {"token": IMG, "token_id": 2, "prob": 0.05, "logit": 0.1}
    result = LensResult.model_validate(
        {
            "prompt": f"{EVIL} {IMG}",
            "tokens": [EVIL, IMG],
            "position": 1,
            "predicted": score,
            "layer_predictions": [{"layer": 0, "top": [score, other], "entropy": 0.1, "kl_to_final": 0.0}],
            "token_evolutions": [
                {"token": t, "token_id": 1, "layers": [0], "ranks": [0], "probs": [0.9], "logits": [3.0]}
                for t in HOSTILE
            ],
            "layer_transitions": [],
            "emergence_layer": 0,
        }
    )
    grid = LensGrid(prompt=result.prompt, tokens=[EVIL, IMG], layers=[0], cells=[[{"top": [score, other]}] * 2])
    return result, grid


def hostile_attention() -> LayerAttention:
    return LayerAttention(
        prompt=f"{EVIL} {IMG}",
        tokens=[EVIL, IMG],
        layer=0,
        threshold=0.3,
        patterns=[[[1.0, 0.0], [0.5, 0.5]]],
        focus=[],
        entropy=[[0.3]],
        sink_mass=[[0.7]],
        roles={EVIL: [[0.2]]},
    )


def patching(tokens: list[str], prompt: str = PROMPT) -> PatchingResult:
    layers = [0, 1, 2]
    effects = [[(layer + 1) * (p - 1) / (3 * len(tokens)) for p in range(len(tokens))] for layer in layers]
    effects[2][-1] = 1.7  # beyond the scale: clamped
    return PatchingResult(
        site="resid_post",
        clean_prompt=prompt,
        corrupted_prompt="The capital of Japan is",
        tokens=tokens,
        layers=layers,
        clean_metric=2.5,
        corrupted_metric=-1.0,
        effects=effects,
        metric="logit diff ␣Paris − ␣Tokyo",
    )


def criterion_sweep(word: str = "Paris") -> AblationResult:
    effects = [
        AblationEffect(component="mlp", layer=i, text=f"text {i}: {word}\nline two", criterion=i % 2 == 0)
        for i in range(4)
    ]
    return AblationResult(
        prompt=f"Say {word}",
        component="mlp",
        method="zero",
        clean_text=f"clean {word}",
        clean_criterion=True,
        effects=effects,
    )


def graph(label: str = "head L1.0", title: str = "demo") -> CircuitGraph:
    return CircuitGraph(
        title=title,
        origin="ablation",
        nodes=[
            Node(id="input", label="input"),
            Node(id="a", label=label, layer=0, effect=0.35),
            Node(id="b", label="mlp L1", layer=1, effect=-0.125),
            Node(id="c", label="head L1.3", layer=1, effect=0.05),
            Node(id="output", label="output"),
        ],
        edges=[
            Edge(source="input", target="a", weight=0.35),
            Edge(source="a", target="b", weight=0.125),
            Edge(source="a", target="c", weight=-0.05),
            Edge(source="b", target="output", weight=0.125),
            Edge(source="c", target="output", weight=0.05),
        ],
    )


def empty_graph() -> CircuitGraph:
    return CircuitGraph(
        title="empty",
        origin="patching",
        nodes=[Node(id="input", label="input"), Node(id="output", label="output")],
        edges=[],
    )


def _param(name: str, layer: int | None, block: str, base: float, diff: float) -> ParamDiff:
    relative = diff / base if base else (math.inf if diff else 0.0)
    return ParamDiff(
        param_name=name,
        layer_index=layer,
        block_type=block,
        shape=(4, 4),
        base_dtype="float32",
        finetuned_dtype="float32",
        base_norm=base,
        finetuned_norm=base + diff,
        diff_norm=diff,
        relative_change=relative,
        cosine=1.0,
        rank=1 if diff else 0,
        effective_rank=1.0 if diff else 0.0,
        top_singular_values=[diff] if diff else [],
    )


def weight_diff(name: str = "self_attn.q_proj", base: str = "base") -> WeightDiff:
    params = [
        _param(f"model.layers.0.{name}.weight", 0, "attn_q", 2.0, 1.0),
        _param("model.layers.0.mlp.up_proj.weight", 0, "mlp_up", 2.0, 0.0),
        _param("model.layers.1.input_layernorm.bias", 1, "norm", 0.0, 0.5),  # zero in the base: ∞
        _param("model.layers.1.mlp.up_proj.weight", 1, "mlp_up", 4.0, 0.4),
        _param("model.embed_tokens.weight", None, "embed", 3.0, 0.0),
    ]
    return WeightDiff.build(params, base=base, finetuned="tuned", top_k=4, rank_rtol=None, created_at="now")


@dataclass
class Report:
    """A page and what it must hold: its figures' count and, per JSON link, the result it downloads."""

    html: str
    figures: int
    results: dict[str, BaseModel]


def report(kind: str, lm: ms.LanguageModel) -> Report:
    """The report of each kind, on the tiny model for the lens and the attention pages."""
    if kind in ("lens", "lens-log"):
        result, grid = lens_run(lm)
        html = render_lens_html(result, grid, model="tiny llama", log_prob=kind == "lens-log")
        return Report(html, 2, {"lens-result.json": result, "lens-grid.json": grid})
    if kind == "attention":
        attention = layer_attention(lm, "The cat sat on the mat", 1)
        html = render_attention_html(attention, title="tiny llama")
        return Report(html, len(attention.patterns) + 1, {"attention-L1.json": attention})
    if kind == "patching":
        patched = patching([f" t{i}" for i in range(12)])
        return Report(render_patching_html(patched), 1, {"patching-result.json": patched})
    if kind in ("ablation", "ablation-criterion"):
        ablated = head_sweep() if kind == "ablation" else criterion_sweep()
        return Report(render_ablation_html(ablated), int(kind == "ablation"), {"ablation-result.json": ablated})
    if kind in ("circuit", "circuit-empty"):
        circuit = graph() if kind == "circuit" else empty_graph()
        return Report(render_circuit_html(circuit), 1, {"circuit.json": circuit})
    if kind == "compare":
        compared = comparison()
        return Report(render_compare_html(compared), 1, {"compare-result.json": compared})
    assert kind == "weights-diff"
    diff = weight_diff()
    return Report(render_weights_diff_html(diff), 2, {"weights-diff.json": diff})


KINDS = [
    "lens",
    "lens-log",
    "attention",
    "patching",
    "ablation",
    "ablation-criterion",
    "circuit",
    "circuit-empty",
    "compare",
    "weights-diff",
]


# --- 1. the lens page -------------------------------------------------------------------------------------------


def test_lens_page_of_a_real_model(view: Viewer, tiny: ms.LanguageModel) -> None:
    result, grid = lens_run(tiny)
    page = view.show(render_lens_html(result, grid, model="tiny llama"), "lens")
    cells = boxes(page, "rect.cell")
    n_layers, n_tokens = tiny.arch.n_layers, len(grid.tokens)
    assert len(cells) == n_layers * n_tokens
    drawn = {(int(c["attrs"]["data-layer"]), int(c["attrs"]["data-position"])): c for c in cells}
    assert set(drawn) == {(layer, p) for layer in range(n_layers) for p in range(n_tokens)}
    assert all(c["w"] > 0 and c["h"] > 0 and "data-token" in c["attrs"] for c in cells)
    last = drawn[n_layers - 1, n_tokens - 1]["attrs"]
    assert last["data-token"] == result.predicted_token
    assert float(last["data-prob"]) == pytest.approx(result.predicted.prob, abs=1e-4)
    scale = legends(page)["probability of the top token"]
    assert (scale["min"], scale["max"], scale["text min"], scale["text max"]) == ("0", "1", "0", "1")
    assert re.search(r"probability of the top token:\s*0\s+1", scale["text"])
    curves = boxes(page, "polyline.curve")
    assert [c["attrs"]["data-token"] for c in curves] == [e.token for e in result.token_evolutions]
    assert curves[0]["attrs"]["data-token"] == result.predicted_token
    assert all(len(c["attrs"]["points"].split()) == n_layers and c["w"] > 0 for c in curves)
    [y_title] = [t for t in boxes(page, "svg.line-chart text") if t["text"] == "probability"]
    assert y_title["h"] > y_title["w"]  # drawn vertically, along the y axis

    page = view.show(render_lens_html(result, grid, model="tiny llama", log_prob=True), "lens-log")
    titles = [t for t in boxes(page, "svg.line-chart text") if "log probability" in t["text"]]
    assert [t["text"] for t in titles] == ["log probability (ln p)"]
    assert titles[0]["h"] > titles[0]["w"]
    assert len(boxes(page, "polyline.curve")) == len(result.token_evolutions)


# --- 2. the attention page -----------------------------------------------------------------------------------


def test_attention_page_draws_every_head_and_enlarges_one(view: Viewer, tiny: ms.LanguageModel) -> None:
    result = layer_attention(tiny, "The cat sat on the mat", 1)
    page = view.show(render_attention_html(result, title="tiny llama"), "attention")
    n_heads, n_tokens = tiny.arch.n_heads, len(result.tokens)
    multiples = page.locator("figure.multiple")
    assert multiples.count() == n_heads == len(result.patterns)
    assert [multiples.nth(h).get_attribute("data-head") for h in range(n_heads)] == [str(h) for h in range(n_heads)]
    for h in range(n_heads):
        assert heatmap_cells(multiples.nth(h)) == n_tokens**2
    assert heatmap_cells(page.locator("figure.main-pattern")) == n_tokens**2
    scales = legends(page)
    unit = scales["probability / score"]
    assert (unit["min"], unit["max"], unit["text min"], unit["text max"]) == ("0", "1", "0", "1")
    entropy = scales["entropy (nats)"]
    assert entropy["min"] == entropy["text min"] == "0" and entropy["max"] == entropy["text max"]
    assert float(entropy["max"]) == pytest.approx(math.log(n_tokens), abs=0.01)

    q, k = n_tokens - 1, 1  # hover a cell of head 0: its weight shows, from a rect's title or the page's script
    image = multiples.nth(0).locator("image.raster")
    if image.count():
        box = image.bounding_box()
        assert box is not None
        image.hover(position={"x": (k + 0.5) * box["width"] / n_tokens, "y": (q + 0.5) * box["height"] / n_tokens})
        hover = page.locator(".hover-tip").inner_text()
    else:
        hover = multiples.nth(0).locator("rect").nth(q * n_tokens + k).locator("title").text_content() or ""
    assert hover.endswith(f": {result.patterns[0][q][k]:.3f}"), hover
    assert result.tokens[q] in hover and result.tokens[k] in hover

    chosen = multiples.nth(1)
    before = chosen.locator("svg").bounding_box()
    chosen.click()
    after = chosen.locator("svg").bounding_box()
    assert before is not None and after is not None
    assert after["width"] > 2 * before["width"] and after["height"] > 2 * before["height"]
    assert page.evaluate("document.activeElement.getAttribute('data-head')") == "1"
    other = multiples.nth(0).locator("svg").bounding_box()
    assert other is not None and other["width"] == pytest.approx(before["width"])  # only the clicked one


# --- 3. the patching page ------------------------------------------------------------------------------------


def test_patching_page_opens_at_the_last_positions(view: Viewer) -> None:
    tokens = [f" w{i}" for i in range(60)]
    result = patching(tokens)
    page = view.show(render_patching_html(result, model="toy"), "patching")
    [scale] = legends(page).values()
    assert (scale["min"], scale["max"], scale["text min"], scale["text max"]) == ("-1", "1", "-1", "1")
    assert "0 is white" in scale["text"]
    cells = boxes(page, "rect[data-position]")
    assert {(int(c["attrs"]["data-layer"]), int(c["attrs"]["data-position"])) for c in cells} == {
        (layer, p) for layer in result.layers for p in range(len(tokens))
    }
    assert len(cells) == len(result.layers) * len(tokens)
    scroller = page.locator("div.scroll.patching")
    assert page.evaluate("s => s.scrollWidth > s.clientWidth", scroller.element_handle())  # it does scroll
    [frame] = boxes(page, "div.scroll.patching")
    [first] = boxes(page, 'rect[data-layer="0"][data-position="0"]')
    [last] = boxes(page, f'rect[data-layer="0"][data-position="{len(tokens) - 1}"]')
    assert inside(last, frame) and not inside(first, frame)
    assert first["x"] + first["w"] <= frame["x"]  # the start of the prompt is off to the left


# --- 4. the ablation pages -----------------------------------------------------------------------------------


def test_ablation_pages(view: Viewer) -> None:
    page = view.show(render_ablation_html(head_sweep(), model="toy"), "heads")
    [scale] = legends(page).values()
    assert (scale["min"], scale["max"], scale["text min"], scale["text max"]) == ("-0.5", "0.5", "-0.5", "0.5")
    cells = boxes(page, "figure rect[data-delta]")
    assert {(c["attrs"]["data-layer"], c["attrs"]["data-index"]) for c in cells} == {
        (str(layer), str(head)) for layer in range(2) for head in range(3)
    }
    assert all(c["w"] > 0 for c in cells)
    assert "p(␣Paris)" in page.locator("header").inner_text()

    sweep = criterion_sweep()
    page = view.show(render_ablation_html(sweep), "criterion")
    rows = page.locator("table.criterion tr:has(td)")
    assert rows.count() == len(sweep.effects) + 1
    texts = page.locator("table.criterion td.text")
    assert [texts.nth(i).inner_text() for i in range(texts.count())] == [
        sweep.clean_text,
        *[e.text for e in sweep.effects],
    ]
    assert all(texts.nth(i).is_visible() for i in range(texts.count()))
    assert page.locator("tr.flipped").count() == 2


# --- 5. the circuit page -------------------------------------------------------------------------------------


def test_circuit_page_shows_effects_and_weights(view: Viewer) -> None:
    circuit = graph()
    page = view.show(render_circuit_html(circuit), "circuit")
    inner = [n for n in circuit.nodes if n.id not in ("input", "output")]
    assert page.locator("g.node").count() == len(circuit.nodes)
    for node in inner:
        group = page.locator(f'g.node[data-id="{node.id}"]')
        effect = group.locator("text.effect")
        assert effect.is_visible() and effect.text_content() == effect_text(node.effect)
        text_box, node_box = effect.bounding_box(), group.locator("rect").bounding_box()
        assert text_box is not None and node_box is not None
        assert node_box["x"] <= text_box["x"] and text_box["x"] + text_box["width"] <= node_box["x"] + node_box["width"]
    edges = page.locator("g.edge")
    assert edges.count() == len(circuit.edges)
    for edge in circuit.edges:
        weight = page.locator(f'g.edge[data-source="{edge.source}"][data-target="{edge.target}"] text.weight')
        assert weight.is_visible() and weight.text_content() == effect_text(edge.weight)

    page = view.show(render_circuit_html(empty_graph()), "circuit-empty")
    said = page.locator("text.empty")
    assert said.is_visible() and said.text_content() == EMPTY
    assert page.locator("g.edge").count() == 0 and page.locator("g.node").count() == 2
    assert EMPTY in page.locator("p.legend.empty").inner_text()


# --- 6. the compare page -------------------------------------------------------------------------------------


def test_compare_page_draws_the_kl_chart(view: Viewer) -> None:
    result = comparison()
    page = view.show(render_compare_html(result), "compare")
    [curve] = boxes(page, "svg.line-chart polyline.curve")
    with_kl = [row for row in result.layers if row.kl_a_to_b is not None]
    assert len(curve["attrs"]["points"].split()) == len(with_kl) and curve["w"] > 0
    assert page.locator("svg.line-chart circle").count() == len(with_kl)
    texts = [t["text"] for t in boxes(page, "svg.line-chart text")]
    assert "layer of model A" in texts and "KL(A‖B) (nats)" in texts
    assert page.locator('tr.layer[data-same="false"]').count() == 1

    page = view.show(render_compare_html(comparison(token_level=False)), "compare-no-kl")
    assert page.locator("svg.line-chart").count() == 0 and page.locator("p.no-kl").is_visible()


# --- 7. the weight diff page ---------------------------------------------------------------------------------


def test_weights_diff_lists_only_changed_tensors(view: Viewer) -> None:
    diff = weight_diff()
    page = view.show(render_weights_diff_html(diff), "weights-diff")
    rows = page.locator("tr.param")
    listed = [rows.nth(i).get_attribute("data-name") for i in range(rows.count())]
    changed = [p.param_name for p in diff.ranked_params() if p.diff_norm > 0]
    assert listed == changed and len(listed) == 3
    assert [rows.nth(i).locator("td.name").inner_text() for i in range(rows.count())] == changed
    assert all(rows.nth(i).is_visible() for i in range(rows.count()))
    assert "∞" in rows.nth(0).inner_text()  # the tensor that was zero in the base comes first
    assert page.locator("figure").count() == 2


# --- 8. every page's downloads -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_downloads(view: Viewer, tiny: ms.LanguageModel, kind: str) -> None:
    made = report(kind, tiny)
    page = view.show(made.html, kind)
    assert check_figure_downloads(page) == made.figures
    assert page.locator("a.download").count() == len(made.results)
    for filename, result in made.results.items():
        check_json(page, filename, type(result), result)


# --- 9. hostile strings --------------------------------------------------------------------------------------


def hostile_page(kind: str) -> tuple[str, list[tuple[str, str]]]:
    """A page of ``kind`` with both hostile strings in its user data, and attributes that must carry them."""
    both = f"{EVIL} {IMG}"
    if kind == "lens":
        result, grid = hostile_lens()
        return render_lens_html(result, grid, model=EVIL), [("rect.cell", "data-token")]
    if kind == "attention":
        return render_attention_html(hostile_attention(), title=IMG), [("table.overview", "data-score")]
    if kind == "patching":
        return render_patching_html(patching(["The", EVIL, IMG, " is"], both), model=IMG), []
    if kind == "ablation":
        return render_ablation_html(head_sweep(both, metric=EVIL), model=IMG), []
    if kind == "ablation-criterion":
        return render_ablation_html(criterion_sweep(both)), []
    if kind == "circuit":
        return render_circuit_html(graph(EVIL, title=IMG)), []
    if kind == "compare":
        return render_compare_html(comparison(EVIL, both)), []
    assert kind == "weights-diff"
    return render_weights_diff_html(weight_diff(IMG, base=EVIL)), [("tr.param", "data-name")]


@pytest.mark.parametrize(
    "kind", ["lens", "attention", "patching", "ablation", "ablation-criterion", "circuit", "compare", "weights-diff"]
)
def test_hostile_strings_stay_text(view: Viewer, kind: str) -> None:
    html, attributes = hostile_page(kind)
    page = view.show(html, kind)
    page.wait_for_timeout(50)  # an injected handler would have run by now
    view.check()  # no dialog, no refused inline script or image in the console
    assert page.evaluate("[...document.scripts].map(s => s.textContent)") == [SCRIPT]
    assert page.locator("img, [onerror], iframe, object, embed").count() == 0
    text = page.locator("body").inner_text()
    assert EVIL in text and IMG in text
    for selector, attribute in attributes:
        values = [e["attrs"][attribute] for e in boxes(page, selector)]
        assert any(s in v for s in HOSTILE for v in values), values  # the browser reads the text back
    raster = page.locator("image[data-values]")
    if raster.count():  # a raster heatmap: the page's script writes the hovered cell's tokens into the page
        raster.first.hover(position={"x": 1, "y": 1})
        tip = page.locator(".hover-tip")
        assert tip.is_visible() and EVIL in tip.inner_text()
        view.check()
        assert page.locator("img, [onerror]").count() == 0


# --- 10. the mixture-of-experts pages --------------------------------------------------------------------------

MOE_PAGES = {
    "moe-trace": ("moe-trace.json", 1),
    "moe-utilization": ("moe-utilization.json", 1),
    "moe-specialization": ("moe-specialization.json", 1),
    "moe-pipeline": ("moe-pipeline.json", 1),
    "moe-coactivation": ("moe-coactivation.json", 1),
    "moe-predict": ("moe-predict.json", 1),
    "moe-vocab": ("moe-vocab.json", 0),
    "moe-compression": ("moe-compression.json", 1),
}


@pytest.fixture(scope="module")
def moe_pages() -> dict[str, tuple[str, BaseModel]]:
    """Each MoE page drawn from a real result on the toy-moe organism (small corpus)."""
    from mechscope.viz import moe_compression_report, moe_paths_report, moe_report, moe_vocab_report
    from mechscope.viz import moe_specialization_report as spec
    from mechscope.zoo.corpus import text_documents

    lm = ms.load("toy-moe")
    corpus = [d.text for d in text_documents(seed=5, count=24) if d.text]
    results: dict[str, BaseModel] = {
        "moe-trace": ms.moe.trace(lm, corpus[0]),
        "moe-utilization": ms.moe.utilization(lm, corpus),
        "moe-specialization": ms.moe.specialization(lm, {"a": corpus[:12], "b": corpus[12:]}),
        "moe-pipeline": ms.moe.pipeline(lm, corpus),
        "moe-coactivation": ms.moe.coactivation(lm, corpus, layer=1),
        "moe-predict": ms.moe.predict(lm, corpus, from_layers=[1], to_layers=[1]),
        "moe-vocab": ms.moe.vocab(lm, layers=[1], top_k=5, prompts=corpus),
        "moe-compression": ms.moe.compression(lm, 1, prompts=corpus, ranks=[4]),
    }
    renderers: dict[str, Callable[[Any], str]] = {
        "moe-trace": moe_report.render_trace_html,
        "moe-utilization": moe_report.render_utilization_html,
        "moe-specialization": spec.render_specialization_html,
        "moe-pipeline": moe_paths_report.render_pipeline_html,
        "moe-coactivation": moe_paths_report.render_coactivation_html,
        "moe-predict": moe_paths_report.render_prediction_html,
        "moe-vocab": moe_vocab_report.render_vocab_html,
        "moe-compression": moe_compression_report.render_compression_html,
    }
    return {kind: (renderers[kind](result), result) for kind, result in results.items()}


@pytest.mark.parametrize("kind", list(MOE_PAGES))
def test_moe_pages_draw_and_download(view: Viewer, moe_pages: dict[str, tuple[str, BaseModel]], kind: str) -> None:
    html, result = moe_pages[kind]
    filename, least_figures = MOE_PAGES[kind]
    page = view.show(html, kind)
    view.check()  # no console error: the page's one script ran under its Content-Security-Policy
    assert check_figure_downloads(page) >= least_figures
    check_json(page, filename, type(result), result)
