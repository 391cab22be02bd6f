"""Analyse a checkpoint: read → statistics → table → ``run_meta.json`` → validation.

`analyze_checkpoint` computes one `ParamRow` per tensor of an open `Checkpoint`; `analyze` opens the
checkpoint, writes the table (CSV / JSONL / Parquet) and ``run_meta.json`` next to it, and checks the
written table (`mechscope.weights.export.validate_table`).

How the work is scheduled: tensors of the same shape are stacked into batches of at most ``batch_bytes``
(default: twice the largest tensor as float32, capped at 256 MiB on the CPU where batching only saves
per-call overhead; uncapped on a GPU where batched SVDs pay off) and each batch gets one ``svdvals`` call.
With ``workers > 1``, batches run on a thread pool (torch releases the GIL in its kernels) with at most
``workers`` batches in flight, so peak memory is about ``workers x (2 x batch_bytes + largest tensor)``;
on the CPU, torch's intra-op threads are set to 1 for the duration of the call (and restored), because the
workers already use the cores.

Example:
    >>> run = analyze("path/to/model", out=Path("params.csv"))  # doctest: +SKIP
    >>> run.rows, run.output  # doctest: +SKIP
    (291, PosixPath('params.csv'))
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel

from mechscope.errors import MechscopeError
from mechscope.weights.blocks import classify
from mechscope.weights.export import ParamRow, atomic_write, format_from_path, sort_rows, validate_table, write_table
from mechscope.weights.reader import Checkpoint, open_checkpoint
from mechscope.weights.stats import FLOAT64_SVD_MAX_ELEMENTS, StatsOptions, TensorStats, batch_stats

logger = logging.getLogger(__name__)

#: The name of the provenance file written next to the table.
RUN_META_NAME = "run_meta.json"
_CPU_BATCH_CAP = 256 * 1024 * 1024
_HASH_BLOCK = 1 << 23

ProgressCallback = Callable[[int, int], None]
"""Called with ``(elements_done, tensors_done)`` after each batch."""


class AnalysisRun(BaseModel):
    """What `analyze` did: where the table and ``run_meta.json`` are, and a short summary."""

    output: Path
    run_meta: Path
    format: str
    rows: int
    tensors: int
    files: int
    model_id: str
    revision: str
    device: str
    seconds: float


def resolve_device(device: str | None) -> str:
    """``None``/``"auto"`` → ``"cuda"`` when available, else ``"cpu"``; a CUDA device must exist."""
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    assert device is not None
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
        size = max(1, _numel(shape) * 4)
        per_batch = max(1, batch_bytes // size)
        batches.extend(names[i : i + per_batch] for i in range(0, len(names), per_batch))
    position = {name: i for i, name in enumerate(checkpoint.names())}
    return sorted(batches, key=lambda batch: position[batch[0]])


def _numel(shape: tuple[int, ...]) -> int:
    total = 1
    for dim in shape:
        total *= dim
    return total


def default_batch_bytes(checkpoint: Checkpoint, device: str) -> int:
    """Twice the largest tensor as float32; capped at 256 MiB on the CPU (see the module docstring)."""
    largest = max((_numel(checkpoint.shape(name)) * 4 for name in checkpoint.names()), default=0)
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
        done_elements += sum(_numel(checkpoint.shape(name)) for name in names)
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


def _rows(
    checkpoint: Checkpoint, stats: dict[str, TensorStats], *, model_id: str, revision: str, created_at: str
) -> list[ParamRow]:
    rows = []
    for name in checkpoint.names():
        shape = checkpoint.shape(name)
        layer, block = classify(name, shape)
        result = stats[name]
        spectral = result.spectral.__dict__ if result.spectral is not None else {}
        rows.append(
            ParamRow(
                model_path=str(checkpoint.root),
                model_id=model_id,
                revision=revision,
                param_name=name,
                layer_index=layer,
                block_type=block,
                shape=str(shape),
                rows=result.rows,
                cols=result.cols,
                rank=result.rank,
                mean=result.mean,
                std=result.std,
                var=result.var,
                sparsity=result.sparsity,
                dtype=checkpoint.dtype(name),
                created_at=created_at,
                **spectral,
            )
        )
    return sort_rows(rows)


def default_identity(checkpoint: Checkpoint) -> tuple[str, str]:
    """``(model_id, revision)`` for the table: from the hub / HF cache / download manifest, else local.

    A plain local folder has the folder's name as model id and ``"local"`` as revision.
    """
    model_id = checkpoint.model_id or (checkpoint.root.name if checkpoint.root.is_dir() else checkpoint.root.stem)
    return model_id, checkpoint.revision or "local"


def analyze_checkpoint(
    checkpoint: Checkpoint,
    options: StatsOptions | None = None,
    *,
    model_id: str | None = None,
    revision: str | None = None,
    workers: int = 1,
    batch_bytes: int | None = None,
    created_at: str | None = None,
    on_progress: ProgressCallback | None = None,
) -> list[ParamRow]:
    """One `ParamRow` per tensor of ``checkpoint``, sorted by layer (non-layer tensors last).

    Args:
        checkpoint: An open checkpoint.
        options: Statistics options (thresholds, rank tolerance, spectral, device).
        model_id: The ``model_id`` column (default: see `default_identity`).
        revision: The ``revision`` column (default: see `default_identity`).
        workers: Threads computing batches in parallel.
        batch_bytes: The most float32 bytes stacked into one batch (default: see the module docstring).
        created_at: The ``created_at`` column (default: now, UTC, ISO 8601).
        on_progress: Called after each batch with ``(elements_done, tensors_done)``.

    Example:
        >>> with open_checkpoint(folder) as checkpoint:  # doctest: +SKIP
        ...     rows = analyze_checkpoint(checkpoint)
    """
    options = options or StatsOptions()
    default_id, default_revision = default_identity(checkpoint)
    stats = compute_stats(checkpoint, options, workers=workers, batch_bytes=batch_bytes, on_progress=on_progress)
    return _rows(
        checkpoint,
        stats,
        model_id=model_id or default_id,
        revision=revision or default_revision,
        created_at=created_at or _now(),
    )


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def sha256_file(path: Path) -> str:
    """The sha256 of a file, read in 8 MiB blocks (never the whole file in memory)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _code_commit() -> str | None:
    """The git commit of the mechscope source tree, when it runs from a checkout."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def build_run_meta(
    checkpoint: Checkpoint,
    *,
    model_id: str,
    revision: str,
    created_at: str,
    options: StatsOptions,
    workers: int,
    output: Path,
    fmt: str,
    rows: int,
    seconds: float,
    cli_args: Sequence[str] | None,
    hash_files: bool,
) -> dict[str, Any]:
    """The provenance record written as ``run_meta.json`` (versions, options, inputs and their hashes)."""
    import numpy
    import transformers

    import mechscope

    files = []
    for file in checkpoint.files:
        record: dict[str, Any] = {"path": str(file), "bytes": file.stat().st_size}
        record["sha256"] = sha256_file(file) if hash_files else None
        files.append(record)
    return {
        "schema_version": 1,
        "model_id": model_id,
        "revision": revision,
        "model_path": str(checkpoint.root),
        "framework": checkpoint.format,
        "code_version": mechscope.__version__,
        "code_commit": _code_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "timestamp": created_at,
        "duration_s": round(seconds, 3),
        "cli_args": list(cli_args) if cli_args is not None else list(sys.argv),
        "device": options.device,
        "precision": {
            "read": "float32 (stored dtypes upcast per tensor; GGUF dequantized)",
            "moments": "float64 accumulation",
            "svd": f"float64 for matrices of <= {FLOAT64_SVD_MAX_ELEMENTS} elements, float32 above",
        },
        "options": {
            "sparsity_threshold": options.sparsity_threshold,
            "rank_rtol": options.rank_rtol,
            "rank_tolerance": "sigma_max * (rank_rtol or max(rows, cols) * eps(float32))",
            "spectral": options.spectral,
            "workers": workers,
        },
        "output": {"path": str(output), "format": fmt, "rows": rows},
        "files": files,
    }


def analyze(
    source: str | Path,
    *,
    out: Path,
    fmt: str | None = None,
    spectral: bool = False,
    rank_rtol: float | None = None,
    sparsity_threshold: float = 1e-8,
    workers: int = 1,
    device: str | None = None,
    revision: str | None = None,
    model_id: str | None = None,
    batch_bytes: int | None = None,
    hash_files: bool = True,
    cli_args: Sequence[str] | None = None,
    on_progress: Callable[[Checkpoint], ProgressCallback] | None = None,
) -> AnalysisRun:
    """Analyse a checkpoint end to end: table, ``run_meta.json`` beside it, validation of what was written.

    Args:
        source: Anything `open_checkpoint` accepts (file, folder, HF cache folder, hub id).
        out: The table file.
        fmt: ``"csv"``, ``"jsonl"`` or ``"parquet"`` (None: from ``out``'s suffix, CSV by default).
        spectral: Add the spectral columns.
        rank_rtol: Relative rank tolerance (None: numpy's default for float32).
        sparsity_threshold: ``abs(x) <=`` this counts as zero.
        workers: Threads computing batches in parallel.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or None/``"auto"`` (CUDA when available).
        revision: Hub revision (for hub ids and HF cache folders) and the ``revision`` column.
        model_id: The ``model_id`` column (default: the hub id, or the folder name).
        batch_bytes: The most float32 bytes per SVD batch (default: see the module docstring).
        hash_files: Record the sha256 of each weight file in ``run_meta.json`` (reads every file once more).
        cli_args: The command line to record (default: ``sys.argv``).
        on_progress: Given the open checkpoint, returns the progress callback (used by the CLI's bar).

    Returns:
        An `AnalysisRun` summary.

    Raises:
        WeightFileError: the checkpoint cannot be read (the message names the file).
        ExportValidationError: the written table failed its checks.
    """
    started = time.perf_counter()
    fmt = format_from_path(out, fmt)
    options = StatsOptions(
        sparsity_threshold=sparsity_threshold, rank_rtol=rank_rtol, spectral=spectral, device=resolve_device(device)
    )
    created_at = _now()
    with open_checkpoint(source, revision=revision) as checkpoint:
        default_id, default_revision = default_identity(checkpoint)
        model_id = model_id or default_id
        revision = checkpoint.revision or revision or default_revision
        rows = analyze_checkpoint(
            checkpoint,
            options,
            model_id=model_id,
            revision=revision,
            workers=workers,
            batch_bytes=batch_bytes,
            created_at=created_at,
            on_progress=on_progress(checkpoint) if on_progress is not None else None,
        )
        # Validate before the table takes its final name, so a table that fails never sits at ``out``.
        unvalidated = out.with_name(f".{out.name}.unvalidated")
        try:
            write_table(rows, unvalidated, fmt, spectral=spectral)
            count = validate_table(unvalidated, fmt, expected_names=checkpoint.names(), spectral=spectral)
            os.replace(unvalidated, out)
        finally:
            unvalidated.unlink(missing_ok=True)
        seconds = time.perf_counter() - started
        meta = build_run_meta(
            checkpoint,
            model_id=model_id,
            revision=revision,
            created_at=created_at,
            options=options,
            workers=workers,
            output=out,
            fmt=fmt,
            rows=count,
            seconds=seconds,
            cli_args=cli_args,
            hash_files=hash_files,
        )
        meta_path = out.parent / RUN_META_NAME
        _write_json(meta_path, meta)
        return AnalysisRun(
            output=out,
            run_meta=meta_path,
            format=fmt,
            rows=count,
            tensors=len(checkpoint),
            files=len(checkpoint.files),
            model_id=model_id,
            revision=revision,
            device=options.device,
            seconds=round(time.perf_counter() - started, 3),
        )


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    import json

    atomic_write(path, lambda temporary: temporary.write_text(json.dumps(payload, indent=2) + "\n"))
