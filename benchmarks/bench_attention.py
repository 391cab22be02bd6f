"""Attention-analysis cost (issue 5's speed targets), CPU float32, GPT-2-small-shaped random model.

- patterns of all layers and heads for one 128-token prompt: target <= 1.3x a plain *eager* forward;
- head-role scores for all heads over 32 sequences: one batched forward pass (checked by counting passes).

Run: .venv/bin/python benchmarks/bench_attention.py [--quick]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

import mechscope as ms
from mechscope.attention.patterns import patterns
from mechscope.attention.roles import head_roles
from mechscope.testing.tiny_models import build_gpt2_small


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    reps = 5 if args.quick else 15
    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_gpt2_small(Path(tmp) / "gpt2s")
        lm = ms.load(folder, attn_implementation="eager")
        ids = torch.randint(0, 50257, (1, 128), generator=torch.Generator().manual_seed(0))
        variants = {
            "plain eager forward": lambda: lm.model(input_ids=ids),
            "patterns, all layers and heads": lambda: patterns(lm, ids),
        }
        for fn in variants.values():
            fn()
        samples: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(reps):
            for name in random.sample(list(variants), len(variants)):
                start = time.perf_counter()
                variants[name]()
                samples[name].append(time.perf_counter() - start)
        base = statistics.median(samples["plain eager forward"])
        print("| variant | median | ratio to plain eager |\n|---|---:|---:|")
        for name, values in samples.items():
            print(f"| {name} | {statistics.median(values) * 1e3:.1f} ms | {statistics.median(values) / base:.3f}x |")
        passes = 0

        def count(module: torch.nn.Module, args: object, output: object) -> None:
            nonlocal passes
            passes += 1

        handle = lm.model.register_forward_hook(count)
        try:
            head_roles(lm, count=32, length=20)
        finally:
            handle.remove()
        print(f"\nhead_roles over 32 sequences: {passes} forward passes (1 for the attention scores, 1 for copying)")


if __name__ == "__main__":
    main()
