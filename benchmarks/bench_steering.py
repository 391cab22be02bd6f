"""Steered `generate` cost next to plain `generate` (issue 7's speed target), CPU float32.

GPT-2-small-shaped random model, 32 new tokens (min_new_tokens=32 so both runs generate exactly 32), batch 1
and batch 8, one direction added at layer 6 with coefficient 4. Target: <= 1.05x plain.

The steering-vectors package requires transformers < 5, so it cannot share a process with mechscope; run this
script in its own venv with ``--peer`` (it then imports neither mechscope nor transformers 5) and compare the
ratios, each against plain generate in its own process:

    .venv/bin/python benchmarks/bench_steering.py
    /tmp/sv-venv/bin/python benchmarks/bench_steering.py --peer     # venv with torch==2.13.0 steering-vectors
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

GENERATE = {"max_new_tokens": 32, "min_new_tokens": 32}
SHAPE = {"n_layer": 12, "n_embd": 768, "n_head": 12, "vocab_size": 50257, "n_inner": 3072, "n_positions": 1024}


def timed(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    for fn in fns.values():
        fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def report(title: str, medians: dict[str, float]) -> None:
    print(f"\n### {title}\n\n| variant | median | ratio to plain |\n|---|---:|---:|")
    for batch in (1, 8):
        base = medians[f"plain, batch {batch}"]
        for name, value in medians.items():
            if name.endswith(f"batch {batch}"):
                print(f"| {name} | {value * 1e3:.0f} ms | {value / base:.3f}x |")


def peer(reps: int) -> None:
    from steering_vectors import SteeringVector
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(**SHAPE)).eval()
    vector = SteeringVector(layer_activations={6: torch.randn(768)}, layer_type="decoder_block")
    fns: dict[str, Callable[[], object]] = {}
    for batch in (1, 8):
        ids = torch.randint(0, 50257, (batch, 16), generator=torch.Generator().manual_seed(batch))

        def plain(ids: torch.Tensor = ids) -> object:
            return model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, pad_token_id=0, **GENERATE)

        def steered(ids: torch.Tensor = ids) -> object:
            with vector.apply(model, multiplier=4.0):
                mask = torch.ones_like(ids)
                return model.generate(ids, attention_mask=mask, do_sample=False, pad_token_id=0, **GENERATE)

        fns[f"plain, batch {batch}"] = plain
        fns[f"steering-vectors, batch {batch}"] = steered
    import transformers

    report(f"steering-vectors (transformers {transformers.__version__}, its own process)", timed(fns, reps))


def ours(reps: int) -> None:
    import tempfile
    from pathlib import Path

    import mechscope as ms
    from mechscope.steering.directions import Direction
    from mechscope.steering.generate import generate_with_steering
    from mechscope.testing.tiny_models import build_gpt2_small

    with tempfile.TemporaryDirectory() as tmp:
        lm = ms.load(build_gpt2_small(Path(tmp) / "gpt2s"))
        direction = Direction(vector=torch.randn(768, generator=torch.Generator().manual_seed(1)), layer=6)
        words = " ".join(["the cat sat on the mat"] * 3)
        fns: dict[str, Callable[[], object]] = {}
        for batch in (1, 8):
            prompts = [words] * batch

            def plain(prompts: list[str] = prompts) -> object:
                return lm.generate(prompts, **GENERATE)

            def steered(prompts: list[str] = prompts) -> object:
                return generate_with_steering(lm, prompts, direction, 4.0, **GENERATE)

            fns[f"plain, batch {batch}"] = plain
            fns[f"mechscope steered, batch {batch}"] = steered
        report("mechscope (transformers 5)", timed(fns, reps))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--peer", action="store_true", help="measure the steering-vectors package instead")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    (peer if args.peer else ours)(3 if args.quick else 7)


if __name__ == "__main__":
    main()
