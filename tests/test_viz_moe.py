"""The MoE pages: one prompt's routing and a corpus's utilization, on the shared kit, checked from the markup."""

from __future__ import annotations

import math
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

import mechscope as ms
from mechscope.cli.main import app
from mechscope.moe.results import RoutingTrace, Utilization
from mechscope.viz.moe_report import render_trace_html, render_utilization_html
from tests.pages import SVG, assert_self_contained, figure_svgs

EVIL = "<script>alert(1)</script>"


class Cells(HTMLParser):
    """The legends and the heatmap cells (``rect`` with ``data-layer``) of a page, by class."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.legends: list[dict[str, str]] = []
        self.cells: dict[str, list[dict[str, str]]] = {}
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if "legend-scale" in values.get("class", ""):
            self.legends.append(values)
        if tag == "rect" and "data-layer" in values:
            self.cells.setdefault(values["class"], []).append(values)


@pytest.fixture(scope="module")
def toy_moe() -> ms.LanguageModel:
    return ms.load("toy-moe")


def test_trace_page_draws_each_layer_and_token_on_documented_scales(toy_moe: ms.LanguageModel) -> None:
    trace = ms.moe.trace(toy_moe, "The capital of France is <call>weather(city=Paris)</call>")
    html = render_trace_html(trace, model="toy-moe")
    assert_self_contained(html)
    page = Cells(html)
    n_layers, n_tokens = len(trace.layers), len(trace.tokens)
    assert len(page.cells["route"]) == 3 * n_layers * n_tokens  # top expert, its weight, the entropy
    scales = {legend["data-scale"]: legend for legend in page.legends}
    assert scales["top-1 expert"]["data-kind"] == "categorical"
    assert scales["top-1 expert"]["data-max"] == str(trace.n_experts - 1)
    assert (scales["routing weight"]["data-min"], scales["routing weight"]["data-max"]) == ("0", "1")
    assert float(scales["router entropy (nats)"]["data-max"]) == pytest.approx(math.log(trace.n_experts), abs=0.01)
    top, weight, entropy = figure_svgs(html)
    written = [t.text for t in top.iter(f"{SVG}text") if t.get("class") == "cell-text"]
    assert written == [str(routing.experts[p][0]) for routing in trace.layers for p in range(n_tokens)]
    hover = [r.findtext(f"{SVG}title") for r in weight.iter(f"{SVG}rect")]
    first = trace.layers[0]
    chosen = ", ".join(f"E{e} {w:.3f}" for e, w in zip(first.experts[0], first.weights[0], strict=True))
    assert chosen in (hover[0] or "")  # every chosen expert and its weight on hover
    values = [float(r.get("data-value", "nan")) for r in entropy.iter(f"{SVG}rect")]
    expected = [h for routing in trace.layers for h in routing.entropy]
    assert values == pytest.approx(expected, abs=5e-3)


def test_trace_page_escapes_tokens() -> None:
    trace = RoutingTrace(
        prompt=EVIL,
        tokens=[EVIL, "b"],
        n_experts=4,
        top_k=2,
        weight_dtype="float32",
        logit_dtype="float32",
        layers=[{"layer": 0, "experts": [[1, 2], [3, 0]], "weights": [[0.6, 0.4], [0.7, 0.3]], "entropy": [1.0, 0.5]}],
    )
    html = render_trace_html(trace, model=EVIL)
    assert EVIL not in html and "&lt;script&gt;" in html
    assert_self_contained(html)


def test_utilization_page_shows_shares_and_cold_experts(toy_moe: ms.LanguageModel) -> None:
    prompts = ["The capital of France is", "<call>weather(city=Paris)</call>", "Two plus two is"]
    result = ms.moe.utilization(toy_moe, prompts, cold_threshold=0.3)
    html = render_utilization_html(result)
    assert_self_contained(html)
    page = Cells(html)
    cells = page.cells["share"]
    assert len(cells) == len(result.layers) * result.n_experts
    [svg] = figure_svgs(html)
    written = [t.text for t in svg.iter(f"{SVG}text") if t.get("class") == "cell-text"]
    for u, row in zip(result.layers, range(len(result.layers)), strict=True):
        shown = written[row * result.n_experts : (row + 1) * result.n_experts]
        assert shown == ["cold" if e in u.cold else f"{s:.2f}" for e, s in enumerate(u.share)]
    assert any(u.cold for u in result.layers)  # the threshold was set high enough to mark some
    [legend] = page.legends
    assert (legend["data-min"], legend["data-max"]) == ("0", "1")
    assert f"perfectly balanced is {result.top_k / result.n_experts:.3g}" in html
    assert Utilization.model_validate_json(result.model_dump_json()) == result


def test_cli_heatmap_and_utilization_html(tmp_path: Path) -> None:
    runner = CliRunner()
    page = tmp_path / "routing.html"
    done = runner.invoke(app, ["moe", "heatmap", "-p", "The capital of France is", "--html", str(page)])
    assert done.exit_code == 0, done.output
    assert "MoE routing" in page.read_text(encoding="utf-8")
    usage = tmp_path / "usage.html"
    done = runner.invoke(app, ["moe", "utilization", "-p", "The capital of France is", "--html", str(usage)])
    assert done.exit_code == 0, done.output
    assert_self_contained(usage.read_text(encoding="utf-8"))
