"""Output of every command, in one place: the consoles, tables, JSON, visible tokens and written files.

Tables and notes go to `console` (stdout), progress bars to `err_console` (stderr). ``--json`` output and
plain lines (paths, summaries) are printed as they are: no rich markup, no wrapping. Every file a command
writes goes through `write_text_output`, which writes atomically (`mechscope.storage.atomic`).

Nothing here imports torch: ``mechscope --help`` stays fast.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Column, Table

from mechscope.storage.atomic import atomic_write_text, check_target
from mechscope.text import show_whitespace

#: Tables and notes (stdout).
console = Console()
#: Progress bars and other chatter that must not mix with ``--json`` output (stderr).
err_console = Console(stderr=True)


def visible(token: str) -> str:
    """A token with its whitespace made visible (tokens are user data: rich markup is escaped)."""
    from rich.markup import escape

    return escape(show_whitespace(token))


def print_json(value: Any, *, indent: int | None = 2) -> None:
    """Print a pydantic model (with its own JSON rules) or plain data as JSON on stdout."""
    from pydantic import BaseModel

    text = value.model_dump_json(indent=indent) if isinstance(value, BaseModel) else json.dumps(value, indent=indent)
    print(text)


def print_line(text: str) -> None:
    """Print one plain line on stdout (no markup: paths and names are shown as they are)."""
    print(text)


def make_table(
    title: str | None, columns: Sequence[str | Column], rows: Iterable[Sequence[str]], **options: Any
) -> Table:
    """A rich `Table` of ``rows`` under ``columns`` (names, or `Column` for justification or wrapping)."""
    table = Table(*columns, title=title, **options)
    for row in rows:
        table.add_row(*row)
    return table


def print_table(
    title: str | None, columns: Sequence[str | Column], rows: Iterable[Sequence[str]], **options: Any
) -> None:
    """Print `make_table` ``(title, columns, rows, **options)`` on `console`."""
    console.print(make_table(title, columns, rows, **options))


def check_outputs(*paths: str | os.PathLike[str] | None) -> None:
    """Fail before the long part when an output path given (not None) cannot be written as a file.

    Raises:
        InputError: a path is a folder or its folder does not exist.
    """
    for path in paths:
        if path is not None:
            check_target(path)


def write_text_output(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` all-or-nothing; returns the path.

    Raises:
        InputError: ``path`` is a folder or its folder does not exist (one line, exit status 2).
    """
    return atomic_write_text(path, text)
