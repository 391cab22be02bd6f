"""Progress bars for long work: rich, on stderr, transient, and only on a terminal.

Every long job (patching and ablation sweeps, the bulk path, tuned-lens training, weight diffs) reports
through `track` or `bar`, so that stdout stays clean for tables and ``--json``, and nothing is drawn when
stderr is not a terminal (a pipe, a log file, a test runner). Callers pass ``enabled=False`` for ``--json``.

Whatever the terminal, the same calls also tell a listener set with `report_to` how far they are (the web
app's progress events): ``listener(done, total, description)`` after each step, ``total`` None when unknown.

Examples:
    >>> [step for step in track(range(3), "counting")]
    [0, 1, 2]
    >>> seen = []
    >>> with report_to(lambda done, total, what: seen.append((done, total))):
    ...     _ = list(track(range(2), "counting", enabled=False))
    >>> seen
    [(0, 2), (1, 2), (2, 2)]
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator, Sized
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

T = TypeVar("T")

#: ``listener(done, total, description)``: told of each step of `track` and `bar` in this context.
Listener = Callable[[float, float | None, str], None]
_listener: ContextVar[Listener | None] = ContextVar("mechscope_progress_listener", default=None)


@contextmanager
def report_to(listener: Listener) -> Iterator[None]:
    """Tell ``listener`` of every `track` / `bar` step run in this context (this thread or task)."""
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)


def _told(items: Iterable[T], description: str, total: int | None, listener: Listener) -> Iterator[T]:
    if total is None and isinstance(items, Sized):
        total = len(items)
    listener(0, total, description)
    for done, item in enumerate(items, start=1):
        yield item
        listener(done, total, description)


def shown(enabled: bool = True) -> bool:
    """Whether a bar would be drawn: asked for and stderr is a terminal."""
    return enabled and sys.stderr.isatty()


def track(items: Iterable[T], description: str, *, total: int | None = None, enabled: bool = True) -> Iterator[T]:
    """``items``, one by one, with a bar on stderr when `shown` (and each step told to a `report_to` listener)."""
    listener = _listener.get()
    if listener is not None:
        items = _told(items, description, total, listener)
    if not shown(enabled):
        yield from items
        return
    from rich.console import Console
    from rich.progress import track as rich_track

    yield from rich_track(items, description=description, total=total, console=Console(stderr=True), transient=True)


@contextmanager
def bar(description: str, total: float, *, enabled: bool = True) -> Iterator[Any]:
    """A bar to ``advance(n)`` by hand (``None`` when not `shown` and no `report_to` listener is set).

    ``advance(n, note="L0 16.0")`` also shows a short live note beside the bar (the statistics of a training
    run); a listener is told of the steps only.
    """
    listener = _listener.get()
    if not shown(enabled):
        yield None if listener is None else _Told(description, total, listener)
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(
        *columns, TextColumn("{task.fields[note]}"), console=Console(stderr=True), transient=True
    ) as progress:
        task = progress.add_task(description, total=total, note="")

        told = None if listener is None else _Told(description, total, listener)

        class Handle:
            def advance(self, amount: float = 1, note: str | None = None) -> None:
                if note is not None:
                    progress.update(task, note=note)
                progress.update(task, advance=amount)
                if told is not None:
                    told.advance(amount)

        yield Handle()


class _Told:
    """The handle `bar` gives when only a listener is told: counts and reports each advance."""

    def __init__(self, description: str, total: float, listener: Listener) -> None:
        self.description, self.total, self.listener, self.done = description, total, listener, 0.0
        listener(0, total, description)

    def advance(self, amount: float = 1, note: str | None = None) -> None:
        self.done += amount
        self.listener(self.done, self.total, self.description)
