"""``mechscope weights analyze``: per-tensor statistics of a checkpoint, written as a table."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from mechscope.cli.options import JsonOpt, RevisionOpt, one_line_errors
from mechscope.cli.output import err_console, print_json, print_table


@one_line_errors
def analyze_command(
    source: Annotated[str, typer.Argument(help="Checkpoint file or folder, HF cache folder, or hub id org/name.")],
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
    workers: Annotated[int, typer.Option("--workers", help="Threads computing tensors in parallel.")] = 1,
    device: Annotated[
        str | None, typer.Option("--device", help="cpu, cuda, cuda:1 (default: cuda if present).")
    ] = None,
    revision: RevisionOpt = None,
    model_id: Annotated[str | None, typer.Option("--model-id", help="The model_id column (default: detected).")] = None,
    no_hash: Annotated[bool, typer.Option("--no-hash", help="Skip the sha256 of each weight file.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Write one row of statistics per tensor (shape, rank, mean, std, var, sparsity ...) plus run_meta.json.

    Example: mechscope weights analyze data/models/org/name --out data/outputs/params.parquet
    """
    from mechscope.weights.analyze import analyze

    with _progress_bar(err_console, enabled=not as_json) as on_progress:
        run = analyze(
            source,
            out=out,
            fmt=fmt,
            spectral=spectral,
            rank_rtol=rank_rtol,
            sparsity_threshold=sparsity_threshold,
            workers=workers,
            device=device,
            revision=revision,
            model_id=model_id,
            hash_files=not no_hash,
            cli_args=["mechscope", *sys.argv[1:]],
            on_progress=on_progress,
        )
    summary = run.model_dump(mode="json")
    if as_json:
        print_json(summary)
        return
    keys = ("rows", "files", "format", "device", "seconds", "output", "run_meta")
    print_table(
        f"weights analyze: {run.model_id}", ("key", "value"), [[k, str(summary[k])] for k in keys], show_header=False
    )


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
