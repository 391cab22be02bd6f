"""`moe ablate` speed (issue 17): every expert of one layer zeroed, one batched pass, against plain rows.

Run from the repository root (about a minute on 2 cores):

    .venv/bin/python benchmarks/bench_moe_ablate.py [--reps 30] [--layer 1]

Workload: the bundled `toy-moe` organism, CPU float32, no grad; prompts of several lengths (organism
documents cut to ``N`` tokens, up to the organism's context of 256). For each length:

* ``plain rows``: ``model(input_ids=ids.expand(E, -1))``, the forward pass of as many rows as the layer has
  experts (E), nothing hooked: the target's denominator.
* ``plain rows + 1``: ``E + 1`` rows in one pass: the rows a sweep computes (it measures its clean run as an
  extra, untouched row of its first pass, `mechscope.causal.ablation.CleanRow`).
* ``sweep``: ``mechscope.causal.sweep(lm, prompt, component="expert", layers=[layer],
  metric=TargetProb(...), ablator=ms.moe.expert_ablation())``, which is what ``mechscope moe ablate``
  runs: tokenizing, one batched pass of E ablated rows under the router edits plus the clean row, results.

Target: sweep <= 1.2 x plain rows. The variants alternate in shuffled order per repetition; the table gives
medians of wall time and of thread CPU time (less disturbed by other jobs on a shared machine).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from alternate import alternate  # benchmarks/alternate.py (the script's folder is on sys.path)

import mechscope as ms
from mechscope.causal import TargetProb, sweep
from mechscope.zoo.corpus import text_documents


def cut_prompt(lm: ms.LanguageModel, length: int) -> str:
    """Organism text decoded from its first ``length`` tokens (documents joined until long enough)."""
    text = " ".join(d.text for d in text_documents(seed=11, count=200))
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"][: length - 1]  # the BOS makes it ``length``
    return str(lm.tokenizer.decode(ids))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--layer", type=int, default=1)
    parser.add_argument("--lengths", type=int, nargs="+", default=[32, 128, 256])
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    lm = ms.load("toy-moe")
    n_experts = lm.arch.n_experts
    metric = TargetProb(lm, " Paris")
    print(f"toy-moe, layer {args.layer}, {n_experts} experts, median of {args.reps}")
    print("| tokens | variant | wall | ratio to plain rows (wall) | ratio (thread CPU) |\n|---:|---|---:|---:|---:|")
    for length in args.lengths:
        prompt = cut_prompt(lm, length)
        ids = lm.tokenize([prompt])["input_ids"]
        rows, more = ids.expand(n_experts, -1), ids.expand(n_experts + 1, -1)

        def plain(rows: torch.Tensor = rows) -> None:
            lm.model(input_ids=rows, use_cache=False)

        def plain_and_clean(more: torch.Tensor = more) -> None:
            lm.model(input_ids=more, use_cache=False)

        def ablate(prompt: str = prompt) -> None:
            result = sweep(
                lm, prompt, component="expert", layers=[args.layer], metric=metric, ablator=ms.moe.expert_ablation()
            )
            assert len(result.effects) == n_experts

        variants: dict[str, Callable[[], None]] = {
            "plain rows": plain,
            "plain rows + 1": plain_and_clean,
            "sweep": ablate,
        }
        wall, cpu = alternate(variants, args.reps, time.thread_time)
        base_wall, base_cpu = wall["plain rows"], cpu["plain rows"]
        for name in variants:
            seconds = wall[name]
            print(
                f"| {ids.shape[1]} | {name} | {seconds * 1e3:.1f} ms | {seconds / base_wall:.3f} | "
                f"{cpu[name] / base_cpu:.3f} |"
            )


if __name__ == "__main__":
    main()
