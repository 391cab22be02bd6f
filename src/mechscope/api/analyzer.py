"""`Analyzer`: every analysis on one loaded model, from sync code or (through ``.aio``) from async code.

The model, its hooks and its caches are shared state, so calls on one analyzer are serialised by a lock;
the async front runs each call in a worker thread, so an event loop stays responsive while the model
computes. Each method is one function of `mechscope.api.tasks` with the model bound, returning that
function's result (pydantic models: JSON-ready).

Examples:
    >>> import asyncio, mechscope as ms
    >>> analyzer = ms.Analyzer.from_pretrained("toy")
    >>> analyzer.lens("The capital of France is", top_k=1)[0].predicted_token
    ' Paris'
    >>> asyncio.run(analyzer.aio.heads()).top("induction", 1)[0][:2]
    (1, 0)
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import re
import threading
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, TypeVar

from mechscope.api import moe_tasks, tasks
from mechscope.core.lm import LanguageModel, load
from mechscope.errors import MechscopeError

P = ParamSpec("P")
R = TypeVar("R")


_SECTION = re.compile(r"^(\s*)(Examples?|Args|Arguments|Returns|Yields|Raises|Attributes|Note|Notes):\s*$")


def _method_doc(task: Callable[..., Any]) -> str:
    """The task's docstring without its examples, which call the task itself in its module (not the method)."""
    kept: list[str] = []
    skipping: str | None = None  # the indentation of the Examples header being skipped
    for line in inspect.cleandoc(task.__doc__ or "").splitlines():
        header = _SECTION.match(line)
        if skipping is not None:
            if header is None or len(header.group(1)) > len(skipping):
                continue
            skipping = None
        if header is not None and header.group(2).startswith("Example"):
            skipping = header.group(1)
            continue
        kept.append(line)
    source = f"`{task.__module__}.{task.__name__}`"
    return "\n".join(kept).rstrip() + f"\n\nRuns {source} with the analyzer's model as its first argument."


def _sync(task: Callable[Concatenate[LanguageModel, P], R]) -> Callable[Concatenate[Analyzer, P], R]:
    def method(self: Analyzer, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.run(task, *args, **kwargs)

    method.__name__, method.__doc__ = task.__name__, _method_doc(task)
    return method


def _async(
    task: Callable[Concatenate[LanguageModel, P], R],
) -> Callable[Concatenate[AsyncAnalyzer, P], Coroutine[Any, Any, R]]:
    async def method(self: AsyncAnalyzer, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return await self.run(task, *args, **kwargs)

    method.__name__, method.__doc__ = task.__name__, _method_doc(task)
    return method


class Analyzer:
    """One model (loaded on first use) and every analysis on it; thread-safe, one call at a time.

    Args:
        lm: an already loaded model, or None to load ``name`` with ``load_kwargs`` on first use.

    Examples:
        >>> import mechscope as ms
        >>> analyzer = ms.Analyzer(ms.load("toy"))
        >>> analyzer.generate("The capital of France is", max_new_tokens=1)
        [' Paris']
        >>> analyzer.heads().top("previous_token", 1)[0][:2]
        (0, 0)
    """

    def __init__(self, lm: LanguageModel | None = None, *, name: str | None = None, **load_kwargs: Any) -> None:
        if lm is None and name is None:
            raise MechscopeError("give the analyzer a loaded model or a name to load")
        self._lm = lm
        self._name = name
        self._load_kwargs = load_kwargs
        self._lock = threading.RLock()  # re-entrant: a task may call another analyzer method
        self.aio = AsyncAnalyzer(self)

    @classmethod
    def from_pretrained(cls, name: str, **load_kwargs: Any) -> Analyzer:
        """An analyzer that loads ``name`` (organism, folder or hub id) when first used."""
        return cls(name=name, **load_kwargs)

    @property
    def lm(self) -> LanguageModel:
        """The model (loaded on first use)."""
        with self._lock:
            if self._lm is None:
                assert self._name is not None
                self._lm = load(self._name, **self._load_kwargs)
            return self._lm

    def run(self, task: Callable[Concatenate[LanguageModel, P], R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Call ``task(model, *args, **kwargs)`` while holding the model (any function of a model works)."""
        with self._lock:
            return task(self.lm, *args, **kwargs)

    def __enter__(self) -> Analyzer:
        _ = self.lm
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    lens = _sync(tasks.lens)
    lens_grid = _sync(tasks.lens_grid)
    compare = _sync(tasks.compare)
    fit_tuned_lens = _sync(tasks.fit_tuned_lens)
    layer_kl = _sync(tasks.layer_kl)
    attention = _sync(tasks.attention)
    heads = _sync(tasks.heads)
    patch = _sync(tasks.patch)
    patch_cell = _sync(tasks.patch_cell)
    attribution = _sync(tasks.attribution)
    ablate = _sync(tasks.ablate)
    generate = _sync(tasks.generate)
    steer = _sync(tasks.steer)
    directions = _sync(tasks.directions)
    weights = _sync(tasks.weights)
    doctor = _sync(tasks.doctor)
    moe_info = _sync(moe_tasks.moe_info)
    moe_trace = _sync(moe_tasks.moe_trace)
    moe_utilization = _sync(moe_tasks.moe_utilization)
    moe_ablate = _sync(moe_tasks.moe_ablate)
    moe_route = _sync(moe_tasks.moe_route)
    moe_compare = _sync(moe_tasks.moe_compare)
    moe_specialization = _sync(moe_tasks.moe_specialization)
    moe_context = _sync(moe_tasks.moe_context)
    moe_pipeline = _sync(moe_tasks.moe_pipeline)
    moe_coactivation = _sync(moe_tasks.moe_coactivation)
    moe_predict = _sync(moe_tasks.moe_predict)
    moe_vocab = _sync(moe_tasks.moe_vocab)
    moe_compression = _sync(moe_tasks.moe_compression)


class AsyncAnalyzer:
    """The async twin of an `Analyzer` (its ``.aio``): the same methods, awaited, run in a worker thread.

    Examples:
        >>> import asyncio, mechscope as ms
        >>> async def main():
        ...     analyzer = ms.Analyzer.from_pretrained("toy")
        ...     results = await asyncio.gather(analyzer.aio.lens("The capital of France is", top_k=1),
        ...                                    analyzer.aio.lens("The capital of Japan is", top_k=1))
        ...     return [result[0].predicted_token for result in results]
        >>> asyncio.run(main())
        [' Paris', ' Tokyo']
    """

    def __init__(self, sync: Analyzer) -> None:
        self.sync = sync

    async def run(self, task: Callable[Concatenate[LanguageModel, P], R], *args: P.args, **kwargs: P.kwargs) -> R:
        """``await`` `Analyzer.run` in a worker thread."""
        call: Callable[[], R] = functools.partial(self.sync.run, task, *args, **kwargs)
        return await asyncio.to_thread(call)

    async def __aenter__(self) -> AsyncAnalyzer:
        await asyncio.to_thread(lambda: self.sync.lm)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    lens = _async(tasks.lens)
    lens_grid = _async(tasks.lens_grid)
    compare = _async(tasks.compare)
    fit_tuned_lens = _async(tasks.fit_tuned_lens)
    layer_kl = _async(tasks.layer_kl)
    attention = _async(tasks.attention)
    heads = _async(tasks.heads)
    patch = _async(tasks.patch)
    patch_cell = _async(tasks.patch_cell)
    attribution = _async(tasks.attribution)
    ablate = _async(tasks.ablate)
    generate = _async(tasks.generate)
    steer = _async(tasks.steer)
    directions = _async(tasks.directions)
    weights = _async(tasks.weights)
    doctor = _async(tasks.doctor)
    moe_info = _async(moe_tasks.moe_info)
    moe_trace = _async(moe_tasks.moe_trace)
    moe_utilization = _async(moe_tasks.moe_utilization)
    moe_ablate = _async(moe_tasks.moe_ablate)
    moe_route = _async(moe_tasks.moe_route)
    moe_compare = _async(moe_tasks.moe_compare)
    moe_specialization = _async(moe_tasks.moe_specialization)
    moe_context = _async(moe_tasks.moe_context)
    moe_pipeline = _async(moe_tasks.moe_pipeline)
    moe_coactivation = _async(moe_tasks.moe_coactivation)
    moe_predict = _async(moe_tasks.moe_predict)
    moe_vocab = _async(moe_tasks.moe_vocab)
    moe_compression = _async(moe_tasks.moe_compression)
