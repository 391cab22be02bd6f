"""The HTML lens report, loaded in a real headless browser (Debian's chromium)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path

import pytest

import mechscope as ms
from mechscope.lens.logit import LogitLens
from mechscope.lens.results import LensGrid, LensResult
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

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "script":
            self.scripts += 1
        if tag == "td" and "cell" in values.get("class", ""):
            self.cells[int(values["data-layer"]), int(values["data-position"])] = values
        if tag == "polyline":
            self.curves.append(values["data-token"])


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
