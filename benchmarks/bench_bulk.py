"""The bulk path: `lm.forward_batches` with a masked-mean capture sink vs a hand-written sorted loop.

Run from the repository root (a few minutes on 2 cores):

    .venv/bin/python benchmarks/bench_bulk.py [--prompts 2000] [--reps 5] [--json out.json]

Workload (issue 14 §5): a random-init model of GPT-2 small's shape, 2,000 prompts of 5–20 tokens in
mixed-length order, masked-mean ``resid_post`` at 3 layers (2, 6, 10) streamed to a sink that keeps
float16 copies, batches of 64.

* ``hand``: the loop a researcher writes: tokenize, sort prompts by length, pad each batch of 64 (left,
  with position ids from each prompt's first token), plain forward hooks on the 3 layers computing the
  masked mean, ``model(**batch, use_cache=False)`` under ``no_grad``; results reordered to the caller's
  order at the end.
* ``ours``: ``with lm.capture(sites, positions="mean", sink=...): lm.forward_batches(prompts, batch_size=64)``
  on the prompts in their given (mixed) order.

Throughput is measured in one process, the two variants alternating (order shuffled per repetition);
we report prompts/s from wall time and the ratio of process CPU time, which the shared machine's load
disturbs less. Peak memory is measured in a fresh subprocess per variant: RSS sampled every 2 ms during
the run, minus the RSS just before it (the model loaded), median of ``--memory-runs`` runs, with
``MALLOC_ARENA_MAX=2 MALLOC_MMAP_THRESHOLD_=65536`` so that RSS follows live memory rather than what glibc
keeps of freed blocks (without them the same run's peak varied from 170 to 825 MiB).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

SITES_LAYERS = (2, 6, 10)
BATCH = 64


def make_prompts(tokenizer: Any, n: int, seed: int = 0) -> list[str]:
    """``n`` prompts of 5–20 tokens (uniform), in random length order."""
    rng = random.Random(seed)
    words = ["the", "cat", "sat", "on", "a", "mat", "while", "two", "dogs", "ran", "far", "away", "from", "Paris"]
    prompts = []
    for _ in range(n):
        target = rng.randint(5, 20)
        text = " ".join(rng.choice(words) for _ in range(target))
        ids = tokenizer(text)["input_ids"][:target]
        prompts.append(tokenizer.decode(ids))
    return prompts


def run_hand(model: Any, tokenizer: Any, prompts: list[str], sink: Callable[[list[torch.Tensor]], None]) -> None:
    """The hand-written sorted loop."""
    ids = tokenizer(prompts)["input_ids"]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    layers = model.transformer.h
    pooled: dict[int, torch.Tensor] = {}
    mask_box: list[torch.Tensor] = []

    def hook(index: int) -> Callable[..., None]:
        def fn(module: Any, args: Any, output: Any) -> None:
            hidden = output[0] if isinstance(output, tuple) else output
            mask = mask_box[0].unsqueeze(-1).to(hidden.dtype)
            pooled[index] = ((hidden * mask).sum(1) / mask.sum(1)).half()

        return fn

    handles = [layers[i].register_forward_hook(hook(i)) for i in SITES_LAYERS]
    results: list[list[torch.Tensor] | None] = [None] * len(prompts)
    try:
        with torch.no_grad():
            for start in range(0, len(order), BATCH):
                chunk = order[start : start + BATCH]
                batch = tokenizer.pad({"input_ids": [ids[i] for i in chunk]}, padding=True, return_tensors="pt")
                mask = batch["attention_mask"]
                mask_box[:] = [mask]
                positions = (mask.cumsum(1) - 1).clamp(min=0)
                model(input_ids=batch["input_ids"], attention_mask=mask, position_ids=positions, use_cache=False)
                for row, i in enumerate(chunk):
                    results[i] = [pooled[layer][row] for layer in SITES_LAYERS]
    finally:
        for handle in handles:
            handle.remove()
    for item in results:
        assert item is not None
        sink(item)


def run_ours(lm: Any, prompts: list[str], sink: Callable[[list[torch.Tensor]], None]) -> None:
    """mechscope's bulk path."""
    sites = [f"resid_post.{i}" for i in SITES_LAYERS]

    def on_rows(values: dict[str, torch.Tensor], info: Any) -> None:
        for row in range(values[sites[0]].shape[0]):
            sink([values[site][row] for site in sites])

    with lm.capture(sites, positions="mean", dtype="float16", sink=on_rows):
        lm.forward_batches(prompts, batch_size=BATCH)


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def memory_child(variant: str, folder: str, n: int) -> None:
    """In a fresh process: RSS peak above the pre-run RSS for one variant (printed as JSON)."""
    import mechscope as ms

    lm = ms.load(folder)
    prompts = make_prompts(lm.tokenizer, n)
    kept: list[list[torch.Tensor]] = []
    warm = prompts[:BATCH]
    if variant == "hand":
        run_hand(lm.model, lm.tokenizer, warm, kept.append)
    else:
        run_ours(lm, warm, kept.append)
    kept.clear()
    baseline, peak, stop = _rss_mib(), [0.0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_mib())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    if variant == "hand":
        run_hand(lm.model, lm.tokenizer, prompts, kept.append)
    else:
        run_ours(lm, prompts, kept.append)
    stop.set()
    sampler.join()
    peak[0] = max(peak[0], _rss_mib())
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"variant": variant, "baseline_mib": baseline, "peak_mib": peak[0], "maxrss_mib": maxrss}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--memory-runs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        memory_child(args.child[0], args.child[1], args.prompts)
        return
    import mechscope as ms
    from mechscope.core.batching import padded_tokens, plan_batches
    from mechscope.testing.tiny_models import build_gpt2_small

    folder = build_gpt2_small(Path(tempfile.mkdtemp()) / "gpt2s")
    lm = ms.load(folder)
    prompts = make_prompts(lm.tokenizer, args.prompts)
    lengths = [len(ids) for ids in lm.tokenizer(prompts)["input_ids"]]
    in_order = padded_tokens(lengths, plan_batches(lengths, BATCH, sort=False))
    fully_sorted = padded_tokens(lengths, plan_batches(lengths, BATCH, window_batches=10**6))
    ours_padded = padded_tokens(lengths, plan_batches(lengths, BATCH))

    hand_rows: list[list[torch.Tensor]] = []
    ours_rows: list[list[torch.Tensor]] = []
    run_hand(lm.model, lm.tokenizer, prompts, hand_rows.append)
    run_ours(lm, prompts, ours_rows.append)
    pairs = [(a, b) for x, y in zip(hand_rows, ours_rows, strict=True) for a, b in zip(x, y, strict=True)]
    worst = max(float((a - b).abs().max()) for a, b in pairs)

    samples: dict[str, list[tuple[float, float]]] = {"hand": [], "ours": []}
    for _ in range(args.reps):
        variants = ["hand", "ours"]
        random.shuffle(variants)
        for variant in variants:
            sink: list[list[torch.Tensor]] = []
            wall, cpu = time.perf_counter(), time.process_time()
            if variant == "hand":
                run_hand(lm.model, lm.tokenizer, prompts, sink.append)
            else:
                run_ours(lm, prompts, sink.append)
            samples[variant].append((time.perf_counter() - wall, time.process_time() - cpu))
    wall = {v: statistics.median(s[0] for s in samples[v]) for v in samples}
    cpu = {v: statistics.median(s[1] for s in samples[v]) for v in samples}

    memory: dict[str, list[dict[str, float]]] = {"hand": [], "ours": []}
    for _ in range(args.memory_runs):
        for variant in ("hand", "ours"):
            command = [sys.executable, __file__, "--prompts", str(args.prompts), "--child", variant, str(folder)]
            # glibc keeps freed blocks (per-thread arenas, brk heap) as resident memory, so the RSS peak would
            # depend on allocation history; serving large blocks by mmap makes RSS follow live memory.
            env = {**os.environ, "MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": "65536"}
            out = subprocess.run(command, capture_output=True, text=True, check=True, env=env).stdout
            memory[variant].append(json.loads(out.strip().splitlines()[-1]))
    above = {v: statistics.median(m["peak_mib"] - m["baseline_mib"] for m in memory[v]) for v in memory if memory[v]}

    report = {
        "prompts": args.prompts,
        "tokens": sum(lengths),
        "padded_tokens": {"in_order": in_order, "fully_sorted": fully_sorted, "ours": ours_padded},
        "max_abs_difference_hand_vs_ours": worst,
        "prompts_per_s": {v: args.prompts / wall[v] for v in wall},
        "throughput_ratio_wall": wall["hand"] / wall["ours"],
        "throughput_ratio_cpu": cpu["hand"] / cpu["ours"],
        "paired_ratio_wall": statistics.median(
            h[0] / o[0] for h, o in zip(samples["hand"], samples["ours"], strict=True)
        ),
        "peak_rss_above_baseline_mib": above,
        "memory_ratio": above["ours"] / above["hand"] if above.get("hand") else None,
        "samples": samples,
        "memory_runs": memory,
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps({k: v for k, v in report.items() if k not in ("samples", "memory_runs")}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
