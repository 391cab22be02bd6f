"""The web app (`mechscope ui`): a lens request's latency, and the page's first render, on ``toy``.

Run from the repository root:

    .venv/bin/python benchmarks/bench_ui.py [--reps 100] [--no-browser] [--json out.json]

Starts ``mechscope ui -m toy --port 0`` as its own process (as a user would), then:

- **lens request**: ``POST /api/lens/grid`` for "The capital of France is", one at a time from a client on
  127.0.0.1; median of the round trip, of the server's own time (its ``Server-Timing`` header: from the
  request reaching the app to the reply), and, as the baseline, the same `lens_grid` call in this process
  (the library, no HTTP). Target: <= 150 ms median.
- **page** (headless Debian chromium through Playwright): the first render (navigation start until the model's
  name is drawn, i.e. the page's script ran and its first API reply arrived; target <= 1 s), and a lens
  heatmap drawn after a click (the browser's time beside the server's).
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.server import running  # noqa: E402

PROMPT = "The capital of France is"


def server_ms(response: httpx.Response) -> float:
    """The app's own time for a reply, from its ``Server-Timing: app;dur=...`` header."""
    return float(response.headers["Server-Timing"].split("dur=", 1)[1])


def bench_requests(base: str, reps: int) -> dict[str, float]:
    """Sequential lens requests: round trip and server time, beside the in-process library call."""
    import mechscope as ms
    from mechscope.api import tasks

    lm = ms.load("toy")
    body = {"prompt": PROMPT, "top_k": 3}
    round_trip, server, library = [], [], []
    # TCP_NODELAY, as browsers set it: without it the client's body waits for the ACK of its headers (~40 ms)
    transport = httpx.HTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
    with httpx.Client(timeout=120, transport=transport) as client:
        for _ in range(5):  # warm-up: first requests build the thread pool and caches
            client.post(base + "api/lens/grid", json=body).raise_for_status()
            tasks.lens_grid(lm, PROMPT, top_k=3)
        for _ in range(reps):
            started = time.perf_counter()
            response = client.post(base + "api/lens/grid", json=body)
            round_trip.append((time.perf_counter() - started) * 1000)
            response.raise_for_status()
            server.append(server_ms(response))
            started = time.perf_counter()
            tasks.lens_grid(lm, PROMPT, top_k=3)
            library.append((time.perf_counter() - started) * 1000)
    return {
        "lens_round_trip_ms_median": statistics.median(round_trip),
        "lens_server_ms_median": statistics.median(server),
        "lens_library_ms_median": statistics.median(library),
        "requests": reps,
    }


def bench_page(url: str, reps: int) -> dict[str, float]:
    """First render and a lens heatmap in headless chromium."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        return {}
    first, heatmap, heatmap_server = [], [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        for _ in range(reps):
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(url)
            page.wait_for_function("document.querySelector('#model-name')?.textContent.trim().length > 0")
            first.append(page.evaluate("performance.now()"))
            with page.expect_response(lambda r: r.url.endswith("/api/lens/grid")) as reply:
                started = page.evaluate("performance.now()")
                page.click("#lens-run")
            page.wait_for_selector("#lens-heatmap rect.cell")
            heatmap.append(page.evaluate("performance.now()") - started)
            heatmap_server.append(float(reply.value.headers["server-timing"].split("dur=", 1)[1]))
            page.close()
        browser.close()
    return {
        "first_render_ms_median": statistics.median(first),
        "heatmap_after_click_ms_median": statistics.median(heatmap),
        "heatmap_server_ms_median": statistics.median(heatmap_server),
        "page_loads": reps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=100)
    parser.add_argument("--page-reps", type=int, default=10)
    parser.add_argument("--no-browser", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result: dict[str, Any] = {"model": "toy"}
    with running("-m", "toy", "--port", "0") as server:
        result |= bench_requests(server.base, args.reps)
        if not args.no_browser:
            result |= bench_page(server.url, args.page_reps)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
