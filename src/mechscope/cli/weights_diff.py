"""``mechscope weights diff``, ``mechscope weights download`` and ``mechscope weights verify``.

Library imports stay inside the commands so that ``mechscope --help`` does not import torch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from mechscope.cli.options import DeviceOpt, JsonOpt, one_line_errors
from mechscope.cli.weights import weights_app

_CheckpointOpt = "Folder, weight file, HF cache folder or hub id org/name."


@weights_app.command("diff")
@one_line_errors
def diff(
    base: Annotated[str, typer.Option("--base", help=f"Base checkpoint: {_CheckpointOpt}")],
    finetuned: Annotated[str, typer.Option("--finetuned", help=f"Fine-tuned checkpoint: {_CheckpointOpt}")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Per-tensor table: .csv, .jsonl or .parquet.")],
    html: Annotated[Path | None, typer.Option("--html", help="Also write a self-contained HTML report.")] = None,
    top: Annotated[int, typer.Option("--top", help="Most-changed tensors and layers to show.")] = 10,
    top_k: Annotated[int, typer.Option("--top-k", help="Singular values of each difference to keep.")] = 5,
    rank_rtol: Annotated[
        float | None, typer.Option("--rank-rtol", help="Relative rank tolerance (default: numpy's rule).")
    ] = None,
    device: DeviceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Compare a base and a fine-tuned checkpoint tensor by tensor, streaming one pair at a time.

    Example: mechscope weights diff --base base/ --finetuned tuned/ --out diff.csv --html diff.html
    """
    from mechscope.weights.diff import diff_checkpoints
    from mechscope.weights.diff_export import table_format, write_diff_table

    table_format(out)  # a bad suffix fails before the long part
    result = diff_checkpoints(base, finetuned, top_k=top_k, rank_rtol=rank_rtol, device=device, progress=True)
    write_diff_table(result, out)
    if html is not None:
        from mechscope.viz.weights_diff_report import render_weights_diff_html

        _write_text(html, render_weights_diff_html(result, top=top))
    if as_json:
        print(result.model_dump_json(indent=2))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"Most-changed tensors ({len(result.params)} compared)")
    table.add_column("tensor", overflow="fold")  # wrapped, never cut: names must stay copyable
    for column in ("layer", "block", "rel. change", "cosine", "rank"):
        table.add_column(column, no_wrap=True)
    for p in result.ranked_params(top):
        layer = "" if p.layer_index is None else str(p.layer_index)
        table.add_row(
            escape(p.param_name), layer, p.block_type, f"{p.relative_change:.4g}", f"{p.cosine:.6f}", str(p.rank)
        )
    layers = Table(title="Most-changed layers")
    for column in ("layer", "pooled rel. change", "mean", "max"):
        layers.add_column(column, no_wrap=True)
    layers.add_column("most changed tensor", overflow="fold")
    for s in result.ranked_layers(top):
        numbers = (s.pooled_relative_change, s.mean_relative_change, s.max_relative_change)
        layers.add_row(str(s.layer_index), *(f"{v:.4g}" for v in numbers), escape(s.most_changed))
    console = Console()
    console.print(table, layers)
    console.print(f"wrote {escape(str(out))}" + (f" and {escape(str(html))}" if html else ""))


@weights_app.command("download")
@one_line_errors
def download(
    model_id: Annotated[str, typer.Option("--model-id", help="Hub model id, org/name.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Root folder; files land in OUT/org/name.")] = Path(
        "data/models"
    ),
    revision: Annotated[str, typer.Option("--revision", help="Branch, tag or commit.")] = "main",
    include: Annotated[
        list[str] | None, typer.Option("--include", help="Only files matching this glob (repeatable).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Download a model snapshot, verify every file's hash against the hub and write a manifest.

    Resumes interrupted downloads. Without network it verifies an existing copy against its manifest.
    A file that fails verification exits with status 1.

    Example: mechscope weights download --model-id org/name --revision main --out data/models/
    """
    from mechscope.weights.download import ChecksumMismatchError, download, read_manifest

    try:
        folder = download(model_id, revision=revision, out=out, allow_patterns=include)
    except ChecksumMismatchError as error:
        _fail_check(error)
    manifest = read_manifest(folder)
    if as_json:
        print(json.dumps({"folder": str(folder), **manifest.model_dump()}, indent=2))
        return
    size = sum(record.size for record in manifest.files)
    print(f"{folder}: {len(manifest.files)} files ({size / 1e6:.1f} MB) verified, commit {manifest.commit}")


@weights_app.command("verify")
@one_line_errors
def verify(
    folder: Annotated[Path, typer.Argument(help="A folder written by `mechscope weights download`.")],
    as_json: JsonOpt = False,
) -> None:
    """Check every file of a downloaded folder against its mechscope-manifest.json (size and sha256).

    Exits 1 when a file is missing or differs, 2 when the folder has no manifest.

    Example: mechscope weights verify data/models/org/name
    """
    from mechscope.weights.download import ChecksumMismatchError, verify

    try:
        report = verify(folder)
    except ChecksumMismatchError as error:
        _fail_check(error)
    if as_json:
        print(report.model_dump_json(indent=2))
        return
    print(
        f"{report.folder}: {report.files_checked} files ({report.bytes_checked / 1e6:.1f} MB) match the manifest "
        f"of {report.model_id} at {report.commit}"
        + (f"; {len(report.unlisted_files)} unlisted files not checked" if report.unlisted_files else "")
    )


def _fail_check(error: Exception) -> NoReturn:
    """A failed integrity check: one line and exit status 1 (bad input exits 2)."""
    print(f"mechscope: error: {error}", file=sys.stderr)
    raise typer.Exit(1) from None


def _write_text(path: Path, text: str) -> None:
    """Write through a temporary file, so a failure never leaves half a report."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
