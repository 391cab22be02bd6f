"""``mechscope weights download`` and ``mechscope weights verify``: checkpoints whose every byte is checked."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from mechscope.cli.options import JsonOpt, one_line_errors
from mechscope.cli.output import print_json, print_line


@one_line_errors
def download_command(
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
        print_json({"folder": str(folder), **manifest.model_dump()})
        return
    size = sum(record.size for record in manifest.files)
    print_line(f"{folder}: {len(manifest.files)} files ({size / 1e6:.1f} MB) verified, commit {manifest.commit}")


@one_line_errors
def verify_command(
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
        print_json(report)
        return
    print_line(
        f"{report.folder}: {report.files_checked} files ({report.bytes_checked / 1e6:.1f} MB) match the manifest "
        f"of {report.model_id} at {report.commit}"
        + (f"; {len(report.unlisted_files)} unlisted files not checked" if report.unlisted_files else "")
    )


def _fail_check(error: Exception) -> NoReturn:
    """A failed integrity check: one line and exit status 1 (bad input exits 2)."""
    print(f"mechscope: error: {error}", file=sys.stderr)
    raise typer.Exit(1) from None
