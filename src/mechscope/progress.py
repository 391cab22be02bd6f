"""Progress bars for long work: rich, on stderr, transient, and only on a terminal.

Every long job (patching and ablation sweeps, the bulk path, tuned-lens training, weight diffs) reports
through `track` or `bar`, so that stdout stays clean for tables and ``--json``, and nothing is drawn when
stderr is not a terminal (a pipe, a log file, a test runner). Callers pass ``enabled=False`` for ``--json``.

Example:
    >>> [step for step in track(range(3), "counting")]
    [0, 1, 2]
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")


def shown(enabled: bool = True) -> bool:
    """Whether a bar would be drawn: asked for and stderr is a terminal."""
    return enabled and sys.stderr.isatty()


def track(items: Iterable[T], description: str, *, total: int | None = None, enabled: bool = True) -> Iterator[T]:
    """``items``, one by one, with a bar on stderr when `shown`."""
    if not shown(enabled):
        yield from items
        return
    from rich.console import Console
    from rich.progress import track as rich_track

    yield from rich_track(items, description=description, total=total, console=Console(stderr=True), transient=True)


@contextmanager
def bar(description: str, total: float, *, enabled: bool = True) -> Iterator[Any]:
    """A bar to ``advance(n)`` by hand (``None`` when not `shown`)."""
    if not shown(enabled):
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(description, total=total)

        class Handle:
            def advance(self, amount: float = 1) -> None:
                progress.update(task, advance=amount)

        yield Handle()
