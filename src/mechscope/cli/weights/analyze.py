"""``mechscope weights analyze``: per-tensor statistics of one checkpoint, or a census of many, as a table."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from mechscope.cli.options import AddressOpt, BackendOpt, JsonOpt, RevisionOpt, one_line_errors
from mechscope.cli.output import err_console, print_json, print_table
from mechscope.errors import InputError

RayWorkersOpt = Annotated[
    int | None,
    typer.Option("--ray-workers", help="With --backend ray: Ray workers, a checkpoint each at a time (default: CPUs)."),
]


@one_line_errors
def analyze_command(
    sources: Annotated[
        list[str], typer.Argument(help="Checkpoint files or folders, HF cache folders, or hub ids org/name.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="The table to write (.csv, .jsonl or .parquet).")],
    fmt: Annotated[
        str | None, typer.Option("--format", "-f", help="csv, jsonl or parquet (default: from --out's suffix).")
    ] = None,
    spectral: Annotated[
        bool, typer.Option("--spectral", help="Add top singular value, norms, stable/effective rank, alpha.")
    ] = False,
    rank_rtol: Annotated[
        float | None, typer.Option("--rank-rtol", help="Rank tolerance relative to the top singular value.")
    ] = None,
    sparsity_threshold: Annotated[
        float, typer.Option("--sparsity-threshold", help="abs(x) <= this counts as zero.")
    ] = 1e-8,
    workers: Annotated[int, typer.Option("--workers", help="Threads computing one checkpoint's tensors.")] = 1,
    device: Annotated[
        str | None, typer.Option("--device", help="cpu, cuda, cuda:1 (default: cuda if present).")
    ] = None,
    revision: RevisionOpt = None,
    model_id: Annotated[str | None, typer.Option("--model-id", help="The model_id column (default: detected).")] = None,
    no_hash: Annotated[bool, typer.Option("--no-hash", help="Skip the sha256 of each weight file.")] = False,
    backend: BackendOpt = "local",
    address: AddressOpt = None,
    ray_workers: RayWorkersOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write one row of statistics per tensor (shape, rank, mean, std, var, sparsity ...) plus run_meta.json.

    Several checkpoints make one table (a census): one shard per checkpoint, run here or on Ray workers
    (--backend ray); rerun an interrupted census to finish only the checkpoints it had not done.

    Example: mechscope weights analyze data/models/org/name --out data/outputs/params.parquet
    Example: mechscope weights analyze org/a org/b org/c --out census.parquet --backend ray --ray-workers 3
    """
    options: dict[str, Any] = {
        "out": out, "fmt": fmt, "spectral": spectral, "rank_rtol": rank_rtol, "sparsity_threshold": sparsity_threshold,
        "workers": workers, "device": device, "revision": revision, "hash_files": not no_hash,
        "cli_args": ["mechscope", *sys.argv[1:]],
    }  # fmt: skip
    if backend != "ray" and ray_workers is not None:
        raise InputError("--ray-workers needs --backend ray")
    if ray_workers is not None and ray_workers < 1:
        raise InputError(f"--ray-workers must be at least 1, got {ray_workers}")
    if len(sources) == 1 and backend == "local" and address is None:
        summary, keys, title = _analyze_one(sources[0], model_id, options, as_json=as_json)
    else:
        summary, keys, title = _census(sources, model_id, options, backend, address, ray_workers, as_json=as_json)
    if as_json:
        print_json(summary)
        return
    print_table(title, ("key", "value"), [[k, str(summary[k])] for k in keys], show_header=False)


def _analyze_one(
    source: str, model_id: str | None, options: dict[str, Any], *, as_json: bool
) -> tuple[dict[str, Any], tuple[str, ...], str]:
    """One checkpoint in this process: today's table and run_meta.json, with a bar per tensor."""
    from mechscope.weights.analyze import analyze

    with _progress_bar(err_console, enabled=not as_json) as on_progress:
        run = analyze(source, model_id=model_id, on_progress=on_progress, **options)
    keys = ("rows", "files", "format", "device", "seconds", "output", "run_meta")
    return run.model_dump(mode="json"), keys, f"weights analyze: {run.model_id}"


def _census(
    sources: list[str],
    model_id: str | None,
    options: dict[str, Any],
    backend: str,
    address: str | None,
    ray_workers: int | None,
    *,
    as_json: bool,
) -> tuple[dict[str, Any], tuple[str, ...], str]:
    """Several checkpoints (or any on Ray): one shard each, merged into one table (a census)."""
    from mechscope.distributed.runner import make_runner
    from mechscope.weights.census import census

    if model_id is not None:
        raise InputError("--model-id names one checkpoint; leave it out when analysing several (or on Ray)")
    with make_runner(backend, None, address=address, workers=ray_workers) as runner:
        run = census(sources, runner=runner, progress=not as_json, **options)
    keys = ("checkpoints", "rows", "files", "format", "backend", "reused", "seconds", "output", "run_meta")
    return run.model_dump(mode="json"), keys, f"weights analyze: {run.checkpoints} checkpoints"


def _progress_bar(console: Any, *, enabled: bool) -> Any:
    """A context manager yielding the ``on_progress`` factory `analyze` takes (a rich bar with ETA)."""
    from contextlib import contextmanager

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    @contextmanager
    def bar() -> Any:
        if not enabled:
            yield None
            return
        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[tensors]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )

        def factory(checkpoint: Any) -> Any:
            names = checkpoint.names()
            total = sum(max(1, _numel(checkpoint.shape(name))) for name in names)
            task = progress.add_task("analysing", total=total, tensors=f"0/{len(names)} tensors")

            def update(elements: int, tensors: int) -> None:
                progress.update(task, completed=elements, tensors=f"{tensors}/{len(names)} tensors")

            return update

        with progress:
            yield factory

    return bar()


def _numel(shape: tuple[int, ...]) -> int:
    total = 1
    for dim in shape:
        total *= dim
    return total
