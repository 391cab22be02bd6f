"""The web app in a real browser: ``mechscope ui`` as its own process, driven through Debian's chromium by Playwright.

Each test opens the page the server printed, works it as a person would (types, clicks, drags the slider) and
reads the answer from the DOM the browser built: the lens heatmap's last-layer top token on "The capital of
France is" must be " Paris"; moving the steering slider must change the steered text; the patching map must
fill with the restoration of every (layer, position); the MoE view must draw `toy-moe`'s routing. A test fails
on any JavaScript dialog (an escaping bug running ``alert``), console error or uncaught page error.

Screenshots are kept as test artifacts (``<test>--<step>.png`` in ``$MECHSCOPE_TEST_ARTIFACTS`` or
``build/test-artifacts/``). Skipped when Playwright or chromium is missing (scripts/setup.sh installs chromium).

Every ``wait_for_function`` predicate is written as a function (``"() => ..."``): Playwright ``eval``s a bare
expression again on each poll, which the app's ``script-src 'self'`` policy refuses once the first check is false,
while a function is evaluated once and then called.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

pytest.importorskip("fastapi", reason="the web app needs the ui extra (fastapi, uvicorn)")
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("chromium is not installed (scripts/setup.sh installs it with apt-get)", allow_module_level=True)

from tests.pages import PNG_SIGNATURE, artifact_name, artifacts, record_trouble  # noqa: E402
from tests.server import Server, running  # noqa: E402

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.browser

WAIT_MS = 120_000  # a busy 2-core machine: generous waits, never a timing assertion
HOSTILE = '<script>alert(1)</script> "><img src=x onerror=alert(1)>'


@pytest.fixture(scope="module")
def toy_server(toy_ui: Server) -> Server:
    return toy_ui


@dataclass
class Tab:
    """A test's page and the trouble it saw (dialogs, console errors, page errors)."""

    page: Page
    test: str
    problems: list[str] = field(default_factory=list)

    def shot(self, step: str) -> Path:
        """Keep a full-page screenshot of this step."""
        target = artifacts() / f"{self.test}--{step}.png"
        self.page.screenshot(path=str(target), full_page=True)
        assert target.read_bytes().startswith(PNG_SIGNATURE)
        return target

    def open(self, url: str, view: str = "lens") -> Page:
        """Open the app and switch to ``view`` once the model's name is drawn."""
        self.page.goto(url)
        self.page.wait_for_function(
            "() => document.querySelector('#model-name')?.textContent.trim().length > 0", timeout=WAIT_MS
        )
        self.page.click(f"button.tab[data-view={view}]")
        assert self.page.locator(f"section#view-{view}").is_visible()
        return self.page


@pytest.fixture
def tab(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Tab]:
    context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 800})
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    opened = Tab(page, artifact_name(request))
    record_trouble(page, opened.problems)
    yield opened
    try:
        opened.shot("end")
        assert not opened.problems, opened.problems
    finally:
        context.close()


def cell_attributes(page: Page, selector: str) -> list[dict[str, str]]:
    """The attributes of every element matching ``selector``."""
    return page.eval_on_selector_all(
        selector, "cells => cells.map(c => Object.fromEntries([...c.attributes].map(a => [a.name, a.value])))"
    )


def run_lens(page: Page, prompt: str) -> None:
    """Type ``prompt``, run the lens and wait until the heatmap of that prompt is drawn."""
    page.fill("#lens-prompt", prompt)
    with page.expect_response(lambda r: r.url.endswith("/api/lens/grid")) as reply:
        page.click("#lens-run")
    assert reply.value.status == 200
    page.wait_for_selector("#lens-heatmap rect.cell")


# --- lens ----------------------------------------------------------------------------------------------


def test_lens_heatmap_names_paris_at_the_last_layer(tab: Tab, toy_server: Server) -> None:
    page = tab.open(toy_server.url)
    run_lens(page, "The capital of France is")
    cells = cell_attributes(page, "#lens-heatmap rect.cell")
    layers = sorted({int(c["data-layer"]) for c in cells})
    positions = sorted({int(c["data-pos"]) for c in cells})
    assert layers == [0, 1, 2, 3] and positions == list(range(7))  # <bos> + 6 tokens, every layer
    last = page.locator(f'#lens-heatmap rect.cell[data-layer="{layers[-1]}"][data-pos="{positions[-1]}"]')
    assert last.get_attribute("data-top-token") == " Paris"
    last.hover()
    tooltip = page.locator("#tooltip")
    tooltip.wait_for(state="visible")
    assert "Paris" in tooltip.inner_text()
    curves = {c["data-token"] for c in cell_attributes(page, "#lens-curves path.curve")}
    assert " Paris" in curves  # the tracked token's probability through the layers
    tab.shot("lens")


def test_hostile_prompt_stays_text(tab: Tab, toy_server: Server) -> None:
    page = tab.open(toy_server.url)
    scripts = page.evaluate("document.scripts.length")
    run_lens(page, HOSTILE)
    assert page.evaluate("document.scripts.length") == scripts
    assert page.locator("img").count() == 0
    labels = page.locator("#lens-heatmap text").all_text_contents()
    assert any("<" in label for label in labels)  # the markup is shown as the tokens it is
    tab.shot("hostile")


def test_every_view_exports_json_svg_png_and_python(tab: Tab, toy_server: Server) -> None:
    page = tab.open(toy_server.url)
    run_lens(page, "The capital of France is")
    toolbar = "section#view-lens"
    with page.expect_download() as got:
        page.click(f"{toolbar} button.download-json")
    saved = json.loads(Path(got.value.path()).read_text(encoding="utf-8"))
    assert got.value.suggested_filename == "mechscope-lens.json"
    assert "Paris" in json.dumps(saved)
    with page.expect_download() as got:
        page.click(f"{toolbar} button.download-svg")
    svg = Path(got.value.path()).read_text(encoding="utf-8")
    assert got.value.suggested_filename == "mechscope-lens.svg" and 'xmlns="http://www.w3.org/2000/svg"' in svg
    with page.expect_download() as got:
        page.click(f"{toolbar} button.download-png")
    assert Path(got.value.path()).read_bytes().startswith(PNG_SIGNATURE)
    page.click(f"{toolbar} button.copy-python")
    code = page.locator(f"{toolbar} pre.python-code")
    sync_api.expect(code).to_contain_text("lens_grid", timeout=WAIT_MS)
    assert "ms.Analyzer.from_pretrained('toy')" in code.inner_text()


# --- attention, ablation, weights ------------------------------------------------------------------------


def test_attention_view_draws_every_head_and_the_tables(tab: Tab, toy_server: Server) -> None:
    page = tab.open(toy_server.url, "attention")
    page.click('button.layer-button[data-layer="1"]')
    page.wait_for_selector("svg.head-pattern")
    assert page.locator("svg.head-pattern").count() == 4
    page.wait_for_selector("table#head-roles tbody tr")
    assert page.locator("table#head-roles tbody tr").count() == 16  # 4 layers x 4 heads
    tab.shot("attention")


def test_ablation_view_and_a_click_on_a_component(tab: Tab, toy_server: Server) -> None:
    page = tab.open(toy_server.url, "ablation")
    page.click("#ablate-run")
    page.wait_for_selector("#ablate-heatmap rect.cell")
    cells = page.locator("#ablate-heatmap rect.cell")
    assert cells.count() == 16
    cells.first.click()
    page.wait_for_function("() => document.querySelector('#ablate-detail').textContent.includes('Paris')")
    tab.shot("ablation")


def test_weights_table_sorts(tab: Tab, toy_server: Server) -> None:
    page = tab.open(toy_server.url, "weights")
    page.click("#weights-run")
    page.wait_for_selector("table#weights-table tbody tr")
    assert page.locator("table#weights-table tbody tr").count() == 39  # every tensor of toy's checkpoint
    header = page.locator('table#weights-table th[data-key="frobenius_norm"]')
    header.click()
    column = page.eval_on_selector(
        "table#weights-table", "t => [...t.querySelectorAll('th')].findIndex(h => h.dataset.key === 'frobenius_norm')"
    )
    values = page.eval_on_selector_all(
        f"table#weights-table tbody tr td:nth-child({column + 1})", "cells => cells.map(c => c.textContent)"
    )
    numbers = [float(v) for v in values if v.strip() not in ("", "–", "-")]
    direction = "asc" if "sorted-asc" in (header.get_attribute("class") or "") else "desc"
    assert numbers == sorted(numbers, reverse=direction == "desc") and len(numbers) == 39
    page.wait_for_selector("svg#weights-plot path.series")
    tab.shot("weights")


# --- steering: the slider changes the output --------------------------------------------------------------


def test_moving_the_steering_slider_changes_the_output(tab: Tab, toy_server: Server) -> None:
    page = tab.open(toy_server.url, "steering")
    with page.expect_response(lambda r: r.url.endswith("/api/directions/contrast")):
        page.click("#steer-make")
    page.wait_for_function("() => document.querySelector('#steer-direction').options.length > 0")

    def steer_to(value: str) -> tuple[str, str]:
        with page.expect_response(lambda r: r.url.endswith("/api/steer")):
            page.locator("#steer-coefficient").fill(value)  # sets the range input and fires input + change
        page.wait_for_function(
            "v => document.querySelector('#steer-coefficient-value').textContent.includes(v)", arg=value
        )
        page.wait_for_function("() => document.querySelector('#steer-steered').textContent.trim().length > 0")
        page.wait_for_load_state("networkidle")
        return page.inner_text("#steer-plain"), page.inner_text("#steer-steered")

    plain, steered = steer_to("0")
    assert steered == plain  # coefficient 0 is the plain model
    tab.shot("steer-0")
    plain_again, pirate = steer_to("6")
    assert plain_again == plain and pirate != plain
    tab.shot("steer-6")


# --- patching: the restoration map, then one cell --------------------------------------------------------


def test_patching_map_and_a_cell_downstream(tab: Tab, toy_server: Server) -> None:
    page = tab.open(toy_server.url, "patching")
    page.click("#patch-run")
    page.wait_for_selector("#patch-heatmap rect.cell")
    cells = cell_attributes(page, "#patch-heatmap rect.cell")
    assert len(cells) == 4 * 7  # layers x positions of "The capital of France is"
    last = {int(c["data-layer"]): float(c["data-effect"]) for c in cells if c["data-pos"] == "6"}
    assert all(effect == pytest.approx(1.0, abs=0.05) for effect in last.values())  # the last token restores
    assert page.locator("#patch-cancel").is_disabled()  # the job is over
    page.locator('#patch-heatmap rect.cell[data-layer="1"][data-pos="6"]').click()
    page.wait_for_selector("#patch-detail table tr")
    detail = page.inner_text("#patch-detail")
    assert "Paris" in detail and "Tokyo" in detail
    tab.shot("patching")


# --- MoE on toy-moe, and a public server's token ------------------------------------------------------


def test_moe_view_on_toy_moe(tab: Tab) -> None:
    with running("-m", "toy-moe", "--port", "0") as server:
        page = tab.open(server.url, "moe")
        page.click("#moe-run")
        page.wait_for_selector("svg#moe-routing rect.cell")
        page.wait_for_selector("svg#moe-utilization rect.cell")
        routing = cell_attributes(page, "svg#moe-routing rect.cell")
        assert {int(c["data-expert"]) for c in routing} <= {0, 1, 2, 3}
        assert len({int(c["data-layer"]) for c in routing}) == 4
        shares = cell_attributes(page, "svg#moe-utilization rect.cell")
        by_layer: dict[str, float] = {}
        for c in shares:
            by_layer[c["data-layer"]] = by_layer.get(c["data-layer"], 0.0) + float(c["data-share"])
        assert all(total == pytest.approx(2.0, abs=1e-3) for total in by_layer.values())  # top-2 routing
        assert "4" in page.inner_text("#moe-info")
        tab.shot("moe")
    assert server.process.returncode == 0  # Ctrl-C stopped it cleanly


def test_dense_model_greys_out_the_moe_tab(tab: Tab, toy_server: Server) -> None:
    tab.open(toy_server.url)
    moe = tab.page.locator("button.tab[data-view=moe]")
    assert moe.is_disabled() and (moe.get_attribute("title") or "")


def test_a_public_server_page_works_with_its_token(tab: Tab, public_toy_ui: Server) -> None:
    page = tab.open(public_toy_ui.url.replace("0.0.0.0", "127.0.0.1"))
    run_lens(page, "The capital of France is")
    last = page.locator('#lens-heatmap rect.cell[data-layer="3"][data-pos="6"]')
    assert last.get_attribute("data-top-token") == " Paris"
