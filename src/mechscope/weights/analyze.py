"""Analyse a checkpoint: read → statistics → table → ``run_meta.json`` → validation.

`analyze_checkpoint` computes one `ParamRow` per tensor of an open `Checkpoint`; `analyze` opens the
checkpoint, writes the table (CSV / JSONL / Parquet) and ``run_meta.json`` next to it, and checks the
written table (`mechscope.weights.export.validate_table`).

How the work is scheduled (batches by shape, worker threads) is `mechscope.weights.schedule`; what
``run_meta.json`` records is `mechscope.weights.run_meta`.

Example (a tiny random Llama: 2 layers, 21 tensors):
    >>> import tempfile
    >>> from mechscope.testing.tiny_models import build_tiny_model
    >>> folder = build_tiny_model("llama", Path(tempfile.mkdtemp()) / "llama")
    >>> run = analyze(folder, out=folder.parent / "params.csv")
    >>> run.rows, run.output.name, run.run_meta.name
    (21, 'params.csv', 'run_meta.json')
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel

from mechscope.storage.atomic import atomic_write
from mechscope.weights.blocks import classify
from mechscope.weights.export import ParamRow, format_from_path, sort_rows, validate_table, write_table
from mechscope.weights.reader import Checkpoint, open_checkpoint
from mechscope.weights.run_meta import RUN_META_NAME, build_run_meta, write_run_meta
from mechscope.weights.schedule import ProgressCallback, compute_stats, resolve_device
from mechscope.weights.stats import StatsOptions, TensorStats

__all__ = [
    "RUN_META_NAME",
    "AnalysisRun",
    "analyze",
    "analyze_checkpoint",
    "default_identity",
    "table_identity",
    "write_validated",
]


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

    Examples:
        >>> import mechscope as ms
        >>> with open_checkpoint(ms.load("toy").source) as checkpoint:  # the toy organism's folder
        ...     default_identity(checkpoint)
        ('toy', 'local')
    """
    model_id = checkpoint.model_id or (checkpoint.root.name if checkpoint.root.is_dir() else checkpoint.root.stem)
    return model_id, checkpoint.revision or "local"


def table_identity(checkpoint: Checkpoint, model_id: str | None, revision: str | None) -> tuple[str, str]:
    """The ``(model_id, revision)`` columns `analyze` writes: the ones given, else `default_identity`'s.

    The revision of an HF cache snapshot wins over the one asked for (it is the commit actually read).

    Examples:
        >>> import mechscope as ms
        >>> with open_checkpoint(ms.load("toy").source) as checkpoint:
        ...     table_identity(checkpoint, None, None), table_identity(checkpoint, "my-toy", "v1")
        (('toy', 'local'), ('my-toy', 'v1'))
    """
    default_id, default_revision = default_identity(checkpoint)
    return model_id or default_id, checkpoint.revision or revision or default_revision


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
        batch_bytes: The most float32 bytes stacked into one batch (default: see `mechscope.weights.schedule`).
        created_at: The ``created_at`` column (default: now, UTC, ISO 8601).
        on_progress: Called after each batch with ``(elements_done, tensors_done)``.

    Examples:
        >>> import tempfile
        >>> import torch
        >>> from safetensors.torch import save_file
        >>> folder = Path(tempfile.mkdtemp())
        >>> save_file({"model.layers.0.mlp.up_proj.weight": torch.eye(4)}, folder / "model.safetensors")
        >>> with open_checkpoint(folder) as checkpoint:
        ...     rows = analyze_checkpoint(checkpoint)
        >>> [(row.param_name, row.layer_index, row.block_type, row.rank, row.sparsity) for row in rows]
        [('model.layers.0.mlp.up_proj.weight', 0, 'mlp_up', 4, 0.75)]
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

    Examples:
        >>> import tempfile
        >>> import mechscope as ms
        >>> out = Path(tempfile.mkdtemp()) / "toy.csv"
        >>> run = analyze(ms.load("toy").source, out=out, hash_files=False)  # the toy organism's folder
        >>> run.rows, run.files, run.model_id, run.revision, run.format
        (39, 1, 'toy', 'local', 'csv')
        >>> sorted(path.name for path in out.parent.iterdir())  # the table and its provenance, side by side
        ['run_meta.json', 'toy.csv']

    Args:
        source: Anything `open_checkpoint` accepts (file, folder, HF cache folder, hub id).
        out: The table file.
        fmt: ``"csv"``, ``"jsonl"`` or ``"parquet"`` (None: from ``out``'s suffix; any suffix other than
            ``.csv``, ``.jsonl``, ``.parquet`` / ``.pq`` is then refused). Overrides the suffix when given.
        spectral: Add the spectral columns.
        rank_rtol: Relative rank tolerance (None: numpy's default for float32).
        sparsity_threshold: ``abs(x) <=`` this counts as zero.
        workers: Threads computing batches in parallel.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or None/``"auto"`` (CUDA when available).
        revision: Hub revision (for hub ids and HF cache folders) and the ``revision`` column.
        model_id: The ``model_id`` column (default: the hub id, or the folder name).
        batch_bytes: The most float32 bytes per SVD batch (default: see `mechscope.weights.schedule`).
        hash_files: Record the sha256 of each weight file in ``run_meta.json`` (reads every file once more).
        cli_args: The command line to record (default: ``sys.argv``).
        on_progress: Given the open checkpoint, returns the progress callback (used by the CLI's bar).

    Returns:
        An `AnalysisRun` summary.

    Raises:
        InputError: ``out`` has an unknown suffix (and no ``fmt`` is given), or names a folder.
        WeightFileError: the checkpoint cannot be read (the message names the file).
        ExportValidationError: the written table failed its checks (nothing is left at ``out``).
    """
    started = time.perf_counter()
    fmt = format_from_path(out, fmt)
    options = StatsOptions(
        sparsity_threshold=sparsity_threshold, rank_rtol=rank_rtol, spectral=spectral, device=resolve_device(device)
    )
    created_at = _now()
    with open_checkpoint(source, revision=revision) as checkpoint:
        model_id, revision = table_identity(checkpoint, model_id, revision)
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
        count = write_validated(rows, out, fmt, expected_names=checkpoint.names(), spectral=spectral)
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
        meta_path = write_run_meta(out.parent, meta)
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


def write_validated(
    rows: Sequence[ParamRow], out: Path, fmt: str, *, expected_names: Sequence[str], spectral: bool
) -> int:
    """Write the table and validate it before it takes its final name: a table that fails never sits at
    ``out``, and no temporary file is left behind (`mechscope.storage.atomic.atomic_write`).

    Examples:
        >>> import tempfile
        >>> import mechscope as ms
        >>> with open_checkpoint(ms.load("toy").source) as checkpoint:
        ...     rows = analyze_checkpoint(checkpoint)
        ...     names = checkpoint.names()
        >>> out = Path(tempfile.mkdtemp()) / "toy.jsonl"
        >>> write_validated(rows, out, "jsonl", expected_names=names, spectral=False)  # the rows validated
        39
        >>> write_validated(rows[:-1], out, "jsonl", expected_names=names, spectral=False)  # a row short
        Traceback (most recent call last):
        ...
        mechscope.errors.ExportValidationError: .../toy.jsonl has 38 rows but the checkpoint has 39 tensors; rerun ...
        >>> [path.name for path in out.parent.iterdir()]  # the first table stays; no temporary file is left
        ['toy.jsonl']
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    counted: list[int] = []

    def write(temporary: Path) -> None:
        write_table(rows, temporary, fmt, spectral=spectral)
        counted.append(validate_table(temporary, fmt, expected_names=expected_names, spectral=spectral, shown_as=out))

    atomic_write(out, write)
    return counted[0]
