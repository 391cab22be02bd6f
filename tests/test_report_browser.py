"""The HTML lens report, loaded in a real headless browser (Debian's chromium)."""

from __future__ import annotations

import math
import shutil
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest

import mechscope as ms
from mechscope.attention.results import LayerAttention
from mechscope.attention.summary import layer_attention
from mechscope.lens.logit import LogitLens
from mechscope.lens.results import LensGrid, LensResult
from mechscope.viz.attention_report import render_attention_html
from mechscope.viz.lens_report import render_lens_html

pytestmark = pytest.mark.browser
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
EVIL = "<script>alert(1)</script>"


def dump_dom(page: Path) -> str:
    """Load ``page`` in headless chromium and return the DOM it built."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed and could not be (scripts/setup.sh installs it with apt-get)")
    flags = "--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking"
    with tempfile.TemporaryDirectory() as profile:
        command = [CHROMIUM, *flags.split(), "--disable-component-update", "--disable-sync"]
        done = subprocess.run(
            [*command, f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


class Cells(HTMLParser):
    """Collects the heatmap cells, the tracked curves and any script elements of a DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: dict[tuple[int, int], dict[str, str]] = {}
        self.curves: list[str] = []
        self.scripts = 0
        self.legends: list[dict[str, str]] = []
        self.multiples: list[str] = []
        self.weights = 0
        self.downloads: dict[str, str] = {}
        self._span = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "script":
            self.scripts += 1
        css = values.get("class", "").split()
        if tag == "div" and "legend-scale" in css:
            self.legends.append(values)
        if tag == "span" and ("scale-min" in css or "scale-max" in css):
            self._span = css[0]
        if tag == "figure" and "multiple" in css:
            self.multiples.append(values["data-head"])
        if tag == "rect" and css == ["w"]:
            self.weights += 1
        if tag == "a" and "download" in values:
            self.downloads[values["download"]] = values["href"]
        if tag == "td" and "cell" in values.get("class", ""):
            self.cells[int(values["data-layer"]), int(values["data-position"])] = values
        if tag == "polyline":
            self.curves.append(values["data-token"])

    def handle_data(self, data: str) -> None:
        if self._span and self.legends:
            self.legends[-1][self._span] = data
            self._span = ""


def test_report_of_a_real_model_shows_every_cell(load_tiny: Callable[..., ms.LanguageModel], tmp_path: Path) -> None:
    lm = load_tiny("llama")
    lens = LogitLens(lm)
    prompt = "The capital of France is"
    result = lens.run([prompt], track=["cat"])[0]
    grid = lens.grid(prompt)
    page = tmp_path / "lens.html"
    page.write_text(render_lens_html(result, grid, model="tiny llama"), encoding="utf-8")
    dom = Cells()
    dom.feed(dump_dom(page))
    assert len(dom.cells) == lm.arch.n_layers * len(grid.tokens)
    last = dom.cells[lm.arch.n_layers - 1, len(grid.tokens) - 1]
    assert last["data-token"] == result.predicted_token
    assert float(last["data-prob"]) == pytest.approx(result.predicted.prob, abs=1e-4)
    assert dom.curves[0] == result.predicted_token and dom.scripts == 0
    legend = dom.legends[0]  # the heatmap's colour scale, with its range stated in the text
    assert (legend["data-min"], legend["data-max"]) == ("0", "1")
    assert (legend["scale-min"], legend["scale-max"]) == ("0", "1")
    svg = unquote(dom.downloads["tracked-tokens.svg"].removeprefix("data:image/svg+xml;charset=utf-8,"))
    assert ET.fromstring(svg).tag == "{http://www.w3.org/2000/svg}svg"
    saved = unquote(dom.downloads["lens-result.json"].removeprefix("data:application/json;charset=utf-8,"))
    assert LensResult.model_validate_json(saved) == result


def test_attention_report_draws_every_head(load_tiny: Callable[..., ms.LanguageModel], tmp_path: Path) -> None:
    lm = load_tiny("llama")
    result = layer_attention(lm, "The cat sat on the mat", 1)
    page = tmp_path / "attention.html"
    page.write_text(render_attention_html(result, title="tiny llama"), encoding="utf-8")
    dom = Cells()
    dom.feed(dump_dom(page))
    n_heads = len(result.patterns)
    assert n_heads == lm.arch.n_heads and dom.multiples == [str(h) for h in range(n_heads)]
    assert dom.weights == len(result.tokens) ** 2 and dom.scripts == 0
    scales = {legend["data-scale"]: (legend["data-min"], legend["data-max"]) for legend in dom.legends}
    assert scales["probability / score"] == ("0", "1")
    assert float(scales["entropy (nats)"][1]) == pytest.approx(math.log(len(result.tokens)), abs=0.01)
    for name, href in dom.downloads.items():
        if name.endswith(".svg"):
            svg = unquote(href.removeprefix("data:image/svg+xml;charset=utf-8,"))
            assert ET.fromstring(svg).tag == "{http://www.w3.org/2000/svg}svg", name
    saved = unquote(dom.downloads["attention-L1.json"].removeprefix("data:application/json;charset=utf-8,"))
    assert LayerAttention.model_validate_json(saved) == result


def test_attention_tokens_are_escaped(tmp_path: Path) -> None:
    result = LayerAttention(
        prompt=EVIL,
        tokens=[EVIL, "b"],
        layer=0,
        threshold=0.3,
        patterns=[[[1.0, 0.0], [0.5, 0.5]]],
        focus=[],
        entropy=[[0.3]],
        sink_mass=[[0.7]],
        roles={EVIL: [[0.2]]},
    )
    html = render_attention_html(result, title=EVIL)
    assert EVIL not in html and "<script" not in html
    page = tmp_path / "evil-attention.html"
    page.write_text(html, encoding="utf-8")
    dom = Cells()
    dom.feed(dump_dom(page))
    assert dom.scripts == 0 and dom.multiples == ["0"]


def test_token_strings_are_escaped(tmp_path: Path) -> None:
    result = LensResult.model_validate(
        {
            "prompt": EVIL,
            "tokens": [EVIL],
            "position": 0,
            "predicted": {"token": EVIL, "token_id": 1, "prob": 0.9, "logit": 3.0},
            "layer_predictions": [
                {
                    "layer": 0,
                    "top": [{"token": EVIL, "token_id": 1, "prob": 0.9, "logit": 3.0}],
                    "entropy": 0.1,
                    "kl_to_final": 0.0,
                }
            ],
            "token_evolutions": [
                {"token": EVIL, "token_id": 1, "layers": [0], "ranks": [0], "probs": [0.9], "logits": [3.0]}
            ],
            "layer_transitions": [],
            "emergence_layer": 0,
        }
    )
    grid = LensGrid(prompt=EVIL, tokens=[EVIL], layers=[0], cells=[[{"top": [result.predicted.model_dump()]}]])
    html = render_lens_html(result, grid, model=EVIL)
    assert EVIL not in html
    page = tmp_path / "evil.html"
    page.write_text(html, encoding="utf-8")
    dom = Cells()
    dom.feed(dump_dom(page))
    assert dom.scripts == 0
    assert dom.cells[0, 0]["data-token"] == EVIL  # the browser decodes the escaped attribute back to the text
