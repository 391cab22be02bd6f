"""MoE routing over a corpus (issue 17's speed targets), CPU float32, on the bundled `toy-moe` organism.

Run from the repository root (a few minutes on 2 cores):

    .venv/bin/python benchmarks/bench_moe.py [--prompts 1000] [--reps 5] [--batch-size 32]

Workload: ``--prompts`` organism documents (facts, names, tool calls, styles: `mechscope.zoo.corpus`), in
their generated (mixed-length) order.

* ``plain``: the forward passes alone. The prompts are tokenized once, outside the timing, and grouped with
  the same length-bucketed plan our routing uses (`mechscope.core.batching.plan_batches`); each batch is
  padded and run as ``model(input_ids=..., attention_mask=...)`` under ``no_grad``. Nothing is captured.
* ``routing``: ``for batch in ms.moe.routing(lm, prompts, batch_size=...)``, which also tokenizes, plans,
  captures every MoE layer's chosen experts and weights and keeps only the real tokens' rows.
* ``utilization``: ``ms.moe.utilization(lm, prompts, batch_size=...)``, the streaming counts and the
  load-balancing loss on top of that.

Target: routing <= 1.05 x plain. The variants alternate, in shuffled order per repetition; the table gives
medians of wall time and of process CPU time (less disturbed by other jobs on a shared machine).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from alternate import alternate  # benchmarks/alternate.py (the script's folder is on sys.path)

import mechscope as ms
from mechscope.core.batching import plan_batches
from mechscope.zoo.corpus import text_documents


def plain_passes(lm: ms.LanguageModel, prompts: list[str], batch_size: int) -> Callable[[], None]:
    """The forward passes of the same batches, with padding, nothing captured (tokenized beforehand)."""
    ids = [lm.tokenize(p)["input_ids"][0] for p in prompts]
    pad = lm.tokenizer.pad_token_id or 0
    batches = []
    for window in plan_batches([len(t) for t in ids], batch_size):
        for rows in window:
            longest = max(len(ids[r]) for r in rows)
            input_ids = torch.full((len(rows), longest), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), longest), dtype=torch.long)
            for i, r in enumerate(rows):
                input_ids[i, longest - len(ids[r]) :] = ids[r]  # left padding, as generation-ready models expect
                mask[i, longest - len(ids[r]) :] = 1
            batches.append((input_ids, mask))

    def run() -> None:
        with torch.no_grad():
            for input_ids, mask in batches:
                lm.model(input_ids=input_ids, attention_mask=mask, use_cache=False)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    lm = ms.load("toy-moe")
    prompts = [d.text for d in text_documents(seed=2026, count=args.prompts)]
    tokens = sum(len(lm.tokenize(p)["input_ids"][0]) for p in prompts)
    variants: dict[str, Callable[[], object]] = {
        "plain": plain_passes(lm, prompts, args.batch_size),
        "routing": lambda: sum(b.tokens for b in ms.moe.routing(lm, prompts, batch_size=args.batch_size)),
        "utilization": lambda: ms.moe.utilization(lm, prompts, batch_size=args.batch_size),
    }
    wall, cpu = alternate(variants, args.reps)
    base_wall, base_cpu = wall["plain"], cpu["plain"]
    print(f"{args.prompts} prompts, {tokens} tokens, batch size {args.batch_size}, median of {args.reps}")
    print("| variant | wall | prompts/s | ratio to plain (wall) | ratio to plain (CPU) |\n|---|---:|---:|---:|---:|")
    for name in variants:
        seconds = wall[name]
        print(
            f"| {name} | {seconds:.2f} s | {args.prompts / seconds:.0f} | {seconds / base_wall:.3f} | "
            f"{cpu[name] / base_cpu:.3f} |"
        )


if __name__ == "__main__":
    main()
