"""Where a job's shards run: `Runner`, the in-process `LocalRunner`, and `make_runner` by backend name."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from mechscope.errors import InputError

if TYPE_CHECKING:
    from mechscope.core.lm import LanguageModel
    from mechscope.distributed.spec import ModelSpec

T = TypeVar("T")
BACKENDS = ("local", "ray")


class ShardTask(Protocol):
    """A job cut into shards; picklable, so that a Ray worker can run it.

    ``run(lm, shard)`` computes shard ``shard`` and writes its part file atomically. It is a pure function
    of (model, shard): running it twice writes the same part, so a retried shard can never differ. A job
    that needs no model (a weights census) runs on a runner made with no spec and gets ``lm=None``.
    """

    def run(self, lm: LanguageModel, shard: int) -> None:
        """Compute shard ``shard`` on ``lm`` and write it where the task's reader will find it (a pure function)."""
        ...


class Runner(Protocol):
    """Runs a `ShardTask`'s shards somewhere, and single calls on a loaded model (planning)."""

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(lm, *args, **kwargs)`` on one loaded model; ``fn`` must be picklable for Ray."""
        ...

    def run(self, task: ShardTask, shards: Sequence[int], *, on_done: Callable[[int], None] | None = None) -> None:
        """Run ``task`` on each of ``shards``; ``on_done(shard)`` here, in this process, as each one ends."""
        ...

    def close(self) -> None:
        """Release the workers (a no-op for the local runner)."""
        ...

    def __enter__(self) -> Runner: ...

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None: ...


class LocalRunner:
    """Run shards one after another on a model loaded in this process (the default backend).

    Examples:
        A `ShardTask` is any object with ``run(lm, shard)``; ``on_done`` hears of each shard as it ends:

        >>> import mechscope as ms
        >>> prompts = ["The capital of France is", "Rain", "Two plus two is"]
        >>> class Lengths:  # shard i: how many tokens prompt i has
        ...     def __init__(self):
        ...         self.found = {}
        ...     def run(self, lm, shard):
        ...         self.found[shard] = len(lm.tokenizer(prompts[shard])["input_ids"])
        >>> task, done = Lengths(), []
        >>> with LocalRunner(ms.load("toy")) as runner:
        ...     runner.run(task, [0, 2], on_done=done.append)
        ...     runner.call(lambda lm, k: lm.arch.n_layers * k, 10)
        40
        >>> task.found, done
        ({0: 7, 2: 11}, [0, 2])
    """

    def __init__(self, lm: LanguageModel | None) -> None:
        self.lm = lm  # None for jobs that need no model

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(lm, *args, **kwargs)`` on the caller's model."""
        return fn(self.lm, *args, **kwargs)

    def run(self, task: ShardTask, shards: Sequence[int], *, on_done: Callable[[int], None] | None = None) -> None:
        """Run ``task`` on each of ``shards`` in turn, in this process."""
        for shard in shards:
            task.run(self.lm, shard)  # type: ignore[arg-type]  # None only for model-free jobs
            if on_done is not None:
                on_done(shard)

    def close(self) -> None:
        """Nothing to release: the model belongs to the caller."""
        pass  # the model belongs to the caller

    def __enter__(self) -> LocalRunner:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def make_runner(
    backend: str,
    spec: ModelSpec | None,
    *,
    lm: LanguageModel | None = None,
    address: str | None = None,
    workers: int | None = None,
) -> Runner:
    """The runner of ``backend`` (``local`` or ``ray``) for the model ``spec`` names (None: a model-free job).

    Args:
        lm: the model, already loaded (local backend; loaded from ``spec`` when None).
        address: ray: an existing cluster (``ray://host:10001``, ``host:6379`` or ``auto``); None starts a
            local Ray instance with this machine's resources.
        workers: ray: how many actors (default: one per GPU, else one per CPU).

    Examples:
        The local backend runs on the model given (or loads ``spec``); a model-free job gets ``lm=None``;
        options are checked before anything starts:

        >>> import mechscope as ms
        >>> from mechscope.distributed import ModelSpec
        >>> lm = ms.load("toy")
        >>> runner = make_runner("local", ModelSpec("toy"), lm=lm)
        >>> type(runner).__name__, runner.call(lambda model: model is lm)
        ('LocalRunner', True)
        >>> make_runner("local", None).call(lambda model: model is None)
        True
        >>> make_runner("local", None, workers=0)
        Traceback (most recent call last):
        ...
        mechscope.errors.InputError: --workers must be at least 1, got 0

    Raises:
        InputError: an unknown backend, or options the local backend does not take.
    """
    check_backend(backend, address=address, workers=workers)
    if backend == "local":
        return LocalRunner(lm if lm is not None or spec is None else spec.load())
    if backend == "ray":
        from mechscope.distributed.ray_runner import RayRunner

        return RayRunner(spec, address=address, workers=workers)
    raise AssertionError("unreachable: check_backend knows every backend")


def check_backend(backend: str, *, address: str | None = None, workers: int | None = None) -> None:
    """Refuses an unknown backend or options it does not take, before a job creates anything.

    Raises:
        InputError: an unknown backend, ``--address`` without ``ray``, or ``--workers`` below 1.
    """
    if backend not in BACKENDS:
        raise InputError(f"unknown backend '{backend}'; use one of {', '.join(BACKENDS)}")
    if backend == "local" and address is not None:
        raise InputError("--address needs --backend ray")
    if workers is not None and workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")
