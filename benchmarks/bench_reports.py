"""HTML report size and render time for a 32-layer x 32-head model (issue 16: < 5 MB, < 2 s in headless Chromium).

Run from the repository root (about a minute on 2 cores):

    .venv/bin/python benchmarks/bench_reports.py [--tokens 32] [--reps 5] [--keep DIR]

The model is a random-init Llama of that shape (32 layers, 32 heads of width 8, d_model 256) with the test
tokenizer, built and reloaded through the real loading code. The results are real analyses on one prompt of
``--tokens`` tokens: the logit lens (every layer and position, a tracked token), the attention page of one
layer (every head, and layers x heads tables of every role), activation patching of ``resid_post`` at every
(layer, position), a head ablation sweep (all 1,024 heads), its circuit, a comparison with a second seed and
the weight diff between the two seeds. Each page is written to disk, then opened by ``file://`` in Debian's
chromium driven by Playwright; the render time is from navigation start to the second animation frame after
the load event (so layout and first paint are done), median of ``--reps`` fresh page loads in one browser.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

import mechscope as ms
from mechscope.attention.summary import layer_attention
from mechscope.causal import TargetProb, activation_patching, sweep
from mechscope.causal.circuit import from_ablation
from mechscope.lens.compare import compare
from mechscope.lens.logit import LogitLens
from mechscope.testing.tiny_models import build_tiny_model
from mechscope.viz.ablation_report import render_ablation_html
from mechscope.viz.attention_report import render_attention_html
from mechscope.viz.circuit_report import render_circuit_html
from mechscope.viz.compare_report import render_compare_html
from mechscope.viz.lens_report import render_lens_html
from mechscope.viz.patching_report import render_patching_html
from mechscope.viz.weights_diff_report import render_weights_diff_html
from mechscope.weights.diff import diff_checkpoints

SHAPE = {"num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32, "hidden_size": 256}
SIZE_LIMIT_MB, RENDER_LIMIT_S = 5.0, 2.0


def pages(folder: Path, tokens: int) -> dict[str, Callable[[], str]]:
    """Each report's renderer, on real results of the 32 x 32 model."""
    a = build_tiny_model("llama", folder / "a", seed=0, **SHAPE)
    b = build_tiny_model("llama", folder / "b", seed=1, **SHAPE)
    lm, other = ms.load(a), ms.load(b)
    words = [
        "the",
        "cat",
        "sat",
        "on",
        "the",
        "mat",
        "and",
        "looked",
        "at",
        "the",
        "dog",
        "which",
        "ran",
        "to",
        "the",
        "park",
        "near",
        "the",
        "river",
    ]
    prompt = " ".join(words[i % len(words)] for i in range(tokens))
    ids = lm.tokenize(prompt)["input_ids"][0][:tokens]
    prompt = lm.tokenizer.decode(ids)
    corrupted = lm.tokenizer.decode(torch.roll(ids, 1))
    target = lm.token_texts(ids[-1:])[0]
    lens = LogitLens(lm)
    lensed = lens.run([prompt], track=[target])[0]
    grid = lens.grid(prompt)
    attention = layer_attention(lm, prompt, 1)
    metric = TargetProb(lm, target)
    patching = activation_patching(lm, prompt, corrupted, metric)
    ablation = sweep(lm, prompt, component="head", metric=TargetProb(lm, target))
    compared = compare(lm, other, prompt)
    diffed = diff_checkpoints(a, b)
    return {
        "lens": lambda: render_lens_html(lensed, grid, model="32x32"),
        "attention": lambda: render_attention_html(attention, title="32x32"),
        "patching": lambda: render_patching_html(patching, model="32x32"),
        "ablation (heads)": lambda: render_ablation_html(ablation, model="32x32"),
        "circuit": lambda: render_circuit_html(from_ablation(ablation, threshold=0.0, top=40)),
        "compare": lambda: render_compare_html(compared),
        "weights diff": lambda: render_weights_diff_html(diffed),
    }


def render_seconds(browser: object, url: str, reps: int) -> float:
    """Median seconds from navigation start to two animation frames after ``load``."""
    times = []
    for _ in range(reps):
        page = browser.new_page()  # type: ignore[attr-defined]
        start = time.perf_counter()
        page.goto(url, wait_until="load")
        page.evaluate("() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")
        times.append(time.perf_counter() - start)
        page.close()
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--keep", type=Path, default=None, help="Keep the pages in this folder.")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium is not installed (scripts/setup.sh installs it)")
    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as playwright:
        out = args.keep or Path(tmp) / "pages"
        out.mkdir(parents=True, exist_ok=True)
        renderers = pages(Path(tmp), args.tokens)
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        print(f"| page ({args.tokens} tokens) | size | build | render (median of {args.reps}) | within target |")
        print("|---|---:|---:|---:|---|")
        for name, render in renderers.items():
            start = time.perf_counter()
            html = render()
            built = time.perf_counter() - start
            path = out / f"{name.split()[0]}.html"
            path.write_text(html, encoding="utf-8")
            size = path.stat().st_size / 1e6
            seconds = render_seconds(browser, path.as_uri(), args.reps)
            ok = size < SIZE_LIMIT_MB and seconds < RENDER_LIMIT_S
            print(f"| {name} | {size:.2f} MB | {built:.2f} s | {seconds:.2f} s | {'yes' if ok else 'NO'} |")
        browser.close()


if __name__ == "__main__":
    main()
