"""Causal-tool cost (issue 6's speed targets), CPU float32, GPT-2-small-shaped random model.

- a 12-layer x all-heads ablation sweep with a logit metric: target <= 1.2x the same number of plain forward
  passes, batched the same way (one batch of 12 rows per layer);
- attribution patching over all layers x positions: target <= 3 plain forward+backward passes.

Run: .venv/bin/python benchmarks/bench_causal.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import mechscope as ms
from mechscope.causal.ablation import sweep
from mechscope.causal.patching import attribution_patching
from mechscope.testing.tiny_models import build_gpt2_small


def median_time(fn, reps: int) -> float:  # type: ignore[no-untyped-def]
    fn()
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    reps = 2 if args.quick else 5
    with tempfile.TemporaryDirectory() as tmp:
        lm = ms.load(build_gpt2_small(Path(tmp) / "gpt2s"))
        prompt = " ".join(["the cat sat on the mat"] * 5)
        ids = lm.tokenize([prompt])["input_ids"]
        n_layers, n_heads = lm.arch.n_layers, lm.arch.n_heads
        corrupted = prompt.replace(" sat", " mat", 1)  # both single tokens: the same length

        def metric(logits: torch.Tensor) -> torch.Tensor:
            return logits[:, -1, 0] - logits[:, -1, 1]

        def plain_batched() -> None:
            with torch.no_grad():
                for _ in range(n_layers + 1):  # the clean run + one batch per layer, as the sweep does
                    lm.model(input_ids=ids.expand(n_heads, -1))

        def head_sweep() -> None:
            sweep(lm, prompt, component="head", metric=metric)

        def plain_forward_backward() -> None:
            out = lm.model(input_ids=ids).logits
            metric(out).sum().backward()
            lm.model.zero_grad(set_to_none=True)

        def attribution() -> None:
            attribution_patching(lm, prompt, corrupted, metric)

        base = median_time(plain_batched, reps)
        swept = median_time(head_sweep, reps)
        fb = median_time(plain_forward_backward, reps)
        attributed = median_time(attribution, reps)
        print(f"prompt {ids.shape[1]} tokens, {n_layers} layers x {n_heads} heads")
        print("| measurement | median | ratio | target |\n|---|---:|---:|---:|")
        print(f"| plain, {n_layers + 1} batched passes of {n_heads} rows | {base * 1e3:.0f} ms | 1.000x | |")
        print(f"| head ablation sweep (logit metric) | {swept * 1e3:.0f} ms | {swept / base:.3f}x | <= 1.2x |")
        print(f"| plain forward + backward | {fb * 1e3:.0f} ms | 1.000x | |")
        ratio = attributed / fb
        print(f"| attribution patching, all layers x positions | {attributed * 1e3:.0f} ms | {ratio:.2f}x | <= 3x |")


if __name__ == "__main__":
    main()
