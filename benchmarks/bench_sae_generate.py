"""Reading SAE features during `generate` next to plain `generate` (issue 23's speed target: <= 1.10x), CPU.

The bundled ``toy`` model (4 layers, d_model 128; ``--model gpt2s``: a random GPT-2-small-shaped model, 12
layers, d_model 768, built into a temporary folder) and a TopK SAE on ``resid_post.2`` (``d_sae`` = 16 ×
d_model, k 32). Each variant generates exactly 32 new tokens (greedy, ``min_new_tokens=32``) for a batch of
prompts; the reading variants wrap the call in ``lm.capture([site], sink=...)`` whose sink encodes each pass's
value with the SAE and keeps the active features (indices and values, as a feature monitor would):

* ``read all``: every token's features (the prompt pass, then one token per step);
* ``read last``: ``positions="last"``, the newest token's features only;
* ``capture, no encoding``: the same capture with a sink that does nothing (what the capture itself costs).

Within one repetition every variant runs once, in an order shuffled per repetition; the table gives each
variant's median and the median of the per-repetition ratios to plain. Before timing, the script checks that
reading changes no generated text and that the sink saw one pass per generated token.

    .venv/bin/python benchmarks/bench_sae_generate.py            # 15 repetitions
    .venv/bin/python benchmarks/bench_sae_generate.py --quick    # 5 repetitions
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

GENERATE = {"max_new_tokens": 32, "min_new_tokens": 32}
SITE = "resid_post.2"
PROMPTS = [
    "The capital of France is",
    "Two plus two is four, and the cat",
    "Once upon a time there was a small dog who",
    "The weather today is",
]


def timed(fns: dict[str, Callable[[], object]], reps: int, seed: int) -> dict[str, list[float]]:
    """Seconds per call of each variant: one warm-up each, then ``reps`` rounds in a shuffled order."""
    for fn in fns.values():
        fn()
    order = list(fns)
    shuffle = random.Random(seed)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        shuffle.shuffle(order)
        for name in order:
            start = time.perf_counter()
            fns[name]()
            samples[name].append(time.perf_counter() - start)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="5 repetitions instead of 15")
    parser.add_argument("--batch", type=int, default=4, help="prompts per generate call (1..4)")
    parser.add_argument("--model", choices=("toy", "gpt2s"), default="toy", help="gpt2s: GPT-2-small-shaped")
    parser.add_argument("--json", help="also write every sample to this file")
    args = parser.parse_args()
    torch.set_grad_enabled(False)

    import tempfile
    from pathlib import Path

    import mechscope as ms
    from mechscope.testing.tiny_models import build_gpt2_small

    with tempfile.TemporaryDirectory() as tmp:
        lm = ms.load("toy" if args.model == "toy" else build_gpt2_small(Path(tmp) / "gpt2s"))
        run(lm, args)


def run(lm: Any, args: argparse.Namespace) -> None:
    """Check, time and print the variants on ``lm``."""
    import mechscope as ms
    from mechscope.core.positions import PassInfo

    sae = ms.sae.SAE.random(lm.arch.d_model, 16 * lm.arch.d_model, SITE, k=32, seed=0)
    prompts = PROMPTS[: args.batch]
    kept: list[Any] = []

    def sink(values: dict[str, torch.Tensor], info: PassInfo) -> None:
        features = sae.encode(values[SITE])
        top = features.topk(sae.config.k or 1, dim=-1)  # the active ones (TopK: at most k per token)
        kept.append((top.indices, top.values))

    def plain() -> object:
        return lm.generate(prompts, **GENERATE)

    def reader(positions: str) -> Callable[[], object]:
        def read() -> object:
            kept.clear()
            with lm.capture([SITE], positions=positions, sink=sink):
                return lm.generate(prompts, **GENERATE)

        return read

    def capture_only() -> object:  # the capture's own cost, no encoding
        with lm.capture([SITE], positions="last", sink=lambda values, info: None):
            return lm.generate(prompts, **GENERATE)

    fns: dict[str, Callable[[], object]] = {"plain": plain, "read all": reader("all"), "read last": reader("last")}
    fns["capture, no encoding"] = capture_only
    texts = plain()
    for name in ("read all", "read last"):
        assert fns[name]() == texts, f"{name} changed the generated text"
        assert len(kept) == GENERATE["max_new_tokens"], f"{name}: {len(kept)} passes seen, not one per token"
    samples = timed(fns, 5 if args.quick else 15, seed=0)
    medians = {name: statistics.median(values) for name, values in samples.items()}
    print(f"\n{args.model}, SAE {sae.config.d_in}->{sae.d_sae} k={sae.config.k} at {SITE}, batch {len(prompts)}, "
          f"{GENERATE['max_new_tokens']} new tokens, torch threads {torch.get_num_threads()}, "
          f"{len(samples['plain'])} repetitions\n")  # fmt: skip
    print("| variant | median | ratio of medians | median paired ratio |\n|---|---:|---:|---:|")
    for name, value in medians.items():
        paired = statistics.median(a / b for a, b in zip(samples[name], samples["plain"], strict=True))
        print(f"| {name} | {value * 1e3:.1f} ms | {value / medians['plain']:.3f}x | {paired:.3f}x |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(samples, handle, indent=1)


if __name__ == "__main__":
    main()
