"""Logit-lens cost next to a plain forward (issue 4's speed targets), CPU float32.

- lens at the last position over all layers, batch 8 x 128, GPT-2-small-shaped random model (target <= 1.15x);
- lens at all positions over all layers (reported);
- `mechscope analyze` on the bundled organism from a cold start (target < 3 s), and the import time alone.

Run: .venv/bin/python benchmarks/bench_lens.py [--quick]
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import mechscope as ms
from mechscope.lens.logit import LogitLens
from mechscope.testing.tiny_models import build_gpt2_small


def timed(fn, reps: int) -> list[float]:  # type: ignore[no-untyped-def]
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    reps = 3 if args.quick else 9
    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory() as tmp:
        lm = ms.load(build_gpt2_small(Path(tmp) / "gpt2s"))
        ids = torch.randint(0, 50257, (8, 128), generator=torch.Generator().manual_seed(0))
        lens = LogitLens(lm)
        sites = [f"resid_post.{i}" for i in range(lm.arch.n_layers)]

        def plain() -> None:
            lm.model(input_ids=ids)

        def lens_last() -> None:
            lens.layer_logits(ids)  # what LogitLens.run computes before formatting its results

        def lens_all() -> None:
            with lm.capture(sites) as cache:
                lm.forward(ids)
            [lm.arch.logits(cache[s]) for s in sites[:-1]]

        variants = {"plain forward": plain, "lens, last position": lens_last, "lens, all positions": lens_all}
        for fn in variants.values():
            fn()
        samples: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(reps):
            order = list(variants)
            random.shuffle(order)
            for name in order:
                samples[name] += timed(variants[name], 1)
        base = statistics.median(samples["plain forward"])
        print("| variant | median | ratio to plain |\n|---|---:|---:|")
        for name, values in samples.items():
            median = statistics.median(values)
            print(f"| {name} | {median * 1e3:.0f} ms | {median / base:.3f}x |")
    python = sys.executable
    mechscope_bin = str(Path(python).parent / "mechscope")
    start = time.perf_counter()
    subprocess.run([python, "-c", "import mechscope"], check=True)
    import_s = time.perf_counter() - start
    start = time.perf_counter()
    subprocess.run([mechscope_bin, "analyze", "-p", "The capital of France is"], check=True, capture_output=True)
    analyze_s = time.perf_counter() - start
    print(f"\ncold `python -c 'import mechscope'`: {import_s:.2f} s")
    print(f"cold `mechscope analyze -p 'The capital of France is'` (organism toy): {analyze_s:.2f} s (target < 3 s)")


if __name__ == "__main__":
    main()
