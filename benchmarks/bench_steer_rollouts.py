"""Steered batched sampling vs plain batched sampling on one loaded model (issue 18: steered <= 1.05x plain).

Run: python benchmarks/bench_steer_rollouts.py [MODEL] (default toy). Times ``lm.generate`` on a batch of 16
questions, 32 sampled tokens, with and without ``lm.intervene(steering_ops(...))`` around it (the way
`mechscope.steering.rollout.rollouts` switches steering per call); exactly 32 tokens each (no early stop),
best of 7 after a warm-up.
"""

from __future__ import annotations

import sys
import time

import torch

import mechscope as ms
from mechscope.steering.directions import Direction
from mechscope.steering.generate import steering_ops


def best(fn: object, repeats: int = 7) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return min(times)


def main(model: str = "toy") -> None:
    lm = ms.load(model)
    questions = [f"<user> Tell me about topic number {i}. <assistant>" for i in range(16)]
    vector = Direction(torch.randn(lm.arch.d_model) * 0.1, layer=lm.arch.n_layers // 2)
    ops = steering_ops(lm, vector, 1.0)
    options = {"max_new_tokens": 32, "min_new_tokens": 32, "do_sample": True, "temperature": 1.0}  # same length

    def plain() -> None:
        torch.manual_seed(0)
        lm.generate(questions, **options)

    def steered() -> None:
        torch.manual_seed(0)
        with lm.intervene(ops):  # type: ignore[arg-type]
            lm.generate(questions, **options)

    plain(), steered()
    a, b = best(plain), best(steered)
    print(f"{model}: plain {a * 1000:.1f} ms, steered {b * 1000:.1f} ms, ratio {b / a:.3f}")


if __name__ == "__main__":
    main(*sys.argv[1:])
