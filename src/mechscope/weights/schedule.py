"""How `mechscope.weights.analyze` schedules the statistics of a checkpoint: batches by shape, worker threads.

Tensors of the same shape are stacked into batches of at most ``batch_bytes`` (default: twice the largest
tensor as float32, capped at 256 MiB on the CPU where batching only saves per-call overhead; uncapped on a
GPU where batched SVDs pay off) and each batch gets one ``svdvals`` call. With ``workers > 1``, batches run
on a thread pool (torch releases the GIL in its kernels) with at most ``workers`` batches in flight, so peak
memory is about ``workers x (2 x batch_bytes + largest tensor)``; on the CPU, torch's intra-op threads are
set to 1 for the duration of the call (and restored), because the workers already use the cores.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

import torch

from mechscope.errors import MechscopeError
from mechscope.weights.reader import Checkpoint
from mechscope.weights.stats import StatsOptions, TensorStats, batch_stats

_CPU_BATCH_CAP = 256 * 1024 * 1024

ProgressCallback = Callable[[int, int], None]
"""Called with ``(elements_done, tensors_done)`` after each batch."""


def resolve_device(device: str | None) -> str:
    """``None``/``"auto"`` → ``"cuda"`` when available, else ``"cpu"``; a CUDA device must exist."""
    if device is None or device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MechscopeError(f"--device {device} was asked for but torch sees no CUDA device; use --device cpu")
    return device


def plan_batches(checkpoint: Checkpoint, batch_bytes: int) -> list[list[str]]:
    """Group tensor names by shape into batches of at most ``batch_bytes`` (as float32), checkpoint order."""
    groups: dict[tuple[int, ...], list[str]] = {}
    for name in checkpoint.names():
        groups.setdefault(checkpoint.shape(name), []).append(name)
    batches: list[list[str]] = []
    for shape, names in groups.items():
        size = max(1, math.prod(shape) * 4)
        per_batch = max(1, batch_bytes // size)
        batches.extend(names[i : i + per_batch] for i in range(0, len(names), per_batch))
    position = {name: i for i, name in enumerate(checkpoint.names())}
    return sorted(batches, key=lambda batch: position[batch[0]])


def default_batch_bytes(checkpoint: Checkpoint, device: str) -> int:
    """Twice the largest tensor as float32; capped at 256 MiB on the CPU (see the module docstring)."""
    largest = max((math.prod(checkpoint.shape(name)) * 4 for name in checkpoint.names()), default=0)
    budget = 2 * largest
    return budget if device.startswith("cuda") else max(largest, min(budget, _CPU_BATCH_CAP))


def _run_batch(checkpoint: Checkpoint, names: list[str], options: StatsOptions) -> list[TensorStats]:
    shape = checkpoint.shape(names[0])
    if len(names) == 1:
        stack = checkpoint.read(names[0]).to(options.device).unsqueeze(0)
    else:
        stack = torch.empty((len(names), *shape), dtype=torch.float32, device=options.device)
        for slot, name in zip(stack, names, strict=True):
            slot.copy_(checkpoint.read(name))
    return batch_stats(stack, options)


def compute_stats(
    checkpoint: Checkpoint,
    options: StatsOptions,
    *,
    workers: int = 1,
    batch_bytes: int | None = None,
    on_progress: ProgressCallback | None = None,
) -> dict[str, TensorStats]:
    """`TensorStats` for every tensor of ``checkpoint``, batched by shape, on ``workers`` threads."""
    if workers < 1:
        raise MechscopeError(f"--workers must be at least 1, got {workers}")
    batches = plan_batches(checkpoint, batch_bytes or default_batch_bytes(checkpoint, options.device))
    results: dict[str, TensorStats] = {}
    done_elements = 0

    def collect(names: list[str], stats: list[TensorStats]) -> None:
        nonlocal done_elements
        results.update(zip(names, stats, strict=True))
        done_elements += sum(math.prod(checkpoint.shape(name)) for name in names)
        if on_progress is not None:
            on_progress(done_elements, len(results))

    if workers == 1:
        for names in batches:
            collect(names, _run_batch(checkpoint, names, options))
        return results
    # Parallelism comes from the workers; torch's own intra-op threads on top would oversubscribe the
    # cores (OpenMP threads spin while they wait, which can slow small SVDs down a hundredfold).
    threads = torch.get_num_threads()
    if not options.device.startswith("cuda"):
        torch.set_num_threads(1)
    try:
        _run_pool(checkpoint, batches, options, workers, collect)
    finally:
        torch.set_num_threads(threads)
    return results


def _run_pool(
    checkpoint: Checkpoint,
    batches: list[list[str]],
    options: StatsOptions,
    workers: int,
    collect: Callable[[list[str], list[TensorStats]], None],
) -> None:
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mechscope-weights") as pool:
        pending: dict[Future[list[TensorStats]], list[str]] = {}
        for names in batches:
            if len(pending) >= workers:  # bounded in flight: memory stays at `workers` batches
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    collect(pending.pop(future), future.result())
            pending[pool.submit(_run_batch, checkpoint, names, options)] = names
        for future in list(pending):
            collect(pending.pop(future), future.result())
