"""Circuit pipeline: activation collection vs plain batched forward passes, and the default battery end to end.

Run from the repository root (a few minutes on 2 cores):

    .venv/bin/python benchmarks/bench_circuit.py [--reps 5] [--battery] [--json out.json]

Collection (issue 19, speed): the built-in tool-calling set (``--per-tool 25``: 400 prompts) collected with
`mechscope.probing.collect.collect` (last-token ``resid_post`` at every layer, shards written to disk,
batches of 32) against the same prompts run as plain ``model(**batch, use_cache=False)`` in batches of 32
under ``no_grad`` (tokenized and left-padded by the tokenizer, nothing captured, nothing written). Models:
``toy`` and a random-init model of GPT-2 small's shape. Variants alternate (`alternate`); we report
prompts/s from wall time and the ratio of process CPU time. ``--battery`` also times ``run_battery(toy)``
with the CLI's defaults (20 shuffles, 200 resamples).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from alternate import alternate

import mechscope as ms
from mechscope.probing.collect import collect
from mechscope.probing.dataset import tool_prompt_dataset

BATCH = 32


def plain(lm: Any, prompts: list[str]) -> None:
    """Plain batched forward passes: what collection must keep up with."""
    tokenizer, model = lm.tokenizer, lm.model
    with torch.no_grad():
        for start in range(0, len(prompts), BATCH):
            batch = tokenizer(prompts[start : start + BATCH], return_tensors="pt", padding=True)
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)


def bench_model(name: str, lm: Any, per_tool: int, reps: int) -> dict[str, Any]:
    data = tool_prompt_dataset(per_tool=per_tool, seed=0)
    prompts = data.texts()
    scratch = Path(tempfile.mkdtemp())
    counter = iter(range(10_000))

    def ours() -> None:
        collect(lm, data, scratch / f"run{next(counter)}", batch_size=BATCH, progress=False)

    wall, cpu = alternate({"plain": lambda: plain(lm, prompts), "collect": ours}, reps)
    row = {
        "model": name,
        "prompts": len(prompts),
        "plain_prompts_per_s": len(prompts) / wall["plain"],
        "collect_prompts_per_s": len(prompts) / wall["collect"],
        "wall_ratio": wall["plain"] / wall["collect"],
        "cpu_ratio": cpu["plain"] / cpu["collect"],
    }
    print(
        f"{name}: plain {row['plain_prompts_per_s']:.0f} prompts/s, collect {row['collect_prompts_per_s']:.0f} "
        f"prompts/s: {row['wall_ratio']:.3f} of plain by wall time, {row['cpu_ratio']:.3f} by CPU time"
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--per-tool", type=int, default=25)
    parser.add_argument("--battery", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    from mechscope.testing.tiny_models import build_gpt2_small

    rows = [bench_model("toy", ms.load("toy"), args.per_tool, args.reps)]
    gpt2 = build_gpt2_small(Path(tempfile.mkdtemp()) / "gpt2s")
    rows.append(bench_model("gpt2-small shape", ms.load(gpt2), args.per_tool, args.reps))
    result: dict[str, Any] = {"collection": rows}
    if args.battery:
        from mechscope.probing.battery import run_battery

        start, start_cpu = time.perf_counter(), time.process_time()
        battery = run_battery(ms.load("toy"), "default", progress=False)
        result["battery"] = {
            "seconds": time.perf_counter() - start,
            "cpu_seconds": time.process_time() - start_cpu,
            "prompts": battery.prompts,
            "properties": len(battery.properties),
        }
        print(f"default battery on toy: {result['battery']['seconds']:.1f} s wall ({battery.prompts} prompts)")
        for p in battery.properties:
            peak = p.at(p.peak)
            print(
                f"  {p.name}: accuracy by layer {[round(a, 3) for a in p.accuracies()]}, majority {peak.majority:.3f}, "
                f"control at peak {peak.control_accuracy:.3f}, p {peak.p_value:.2g}; emerges {p.emergence} "
                f"[{p.emergence_low}, {p.emergence_high}], peak {p.peak}, destroyed {p.destruction}"
            )
        result["stratigraphy"] = battery.stratigraphy()
    if args.json:
        args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
