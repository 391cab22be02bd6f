"""`RayRunner`: a job's shards on Ray actors that each load the model once; retried when a worker dies.

Each actor holds one model (one per GPU where the cluster has GPUs, else one per CPU) and runs one shard
at a time, so a slow shard never holds up the others. A worker process that dies (killed, out of memory)
is restarted by Ray, which reloads the model and runs the shard it held again; shards write their part
files atomically and are pure functions of (model, shard), so a retried shard writes the same part once.
Every worker must see the job's output folder (one machine, or a shared filesystem on a cluster).

Example (needs ``pip install 'mechscope[distributed]'``):
    >>> from mechscope.distributed import ModelSpec
    >>> with RayRunner(ModelSpec("toy"), workers=1) as runner:  # doctest: +SKIP
    ...     runner.call(lambda lm: lm.arch.d_model)
    128
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from mechscope.errors import DistributedError, MechscopeError

try:
    import ray
    import ray.exceptions
except ImportError:  # pragma: no cover - the extra is installed in the test environment
    raise DistributedError(
        "the ray backend needs Ray: pip install 'mechscope[distributed]' (or run with --backend local)"
    ) from None

if TYPE_CHECKING:
    from mechscope.core.lm import LanguageModel
    from mechscope.distributed.runner import ShardTask
    from mechscope.distributed.spec import ModelSpec

T = TypeVar("T")
#: How often Ray restarts a dead worker, and reruns the shard it held, before the job fails.
RETRIES = 3


class ShardWorker:
    """The body of one Ray actor: a loaded model that runs shards (and single calls) on request."""

    def __init__(self, spec: ModelSpec | None, threads: int | None) -> None:
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.lm: LanguageModel | None = spec.load() if spec is not None else None  # None: a model-free job

    def pid(self) -> int:
        """This worker's process id."""
        return os.getpid()

    def call(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """``fn(lm, *args, **kwargs)`` on this worker's model."""
        return fn(self.lm, *args, **kwargs)

    def run(self, task: ShardTask, shard: int) -> int:
        """Run one shard; return this process's id (a new one tells the driver that Ray restarted us)."""
        task.run(self.lm, shard)  # type: ignore[arg-type]  # None only for model-free jobs
        return os.getpid()


class RayRunner:
    """Run shards on Ray actors (see the module docstring); use it as a context manager, or `close` it.

    Args:
        spec: the model each worker loads (None for jobs that need none, e.g. a weights census).
        address: an existing cluster (``auto``, ``host:6379``, ``ray://host:10001``); None connects to the
            Ray instance this process started already, else starts a local one with this machine's CPUs
            and GPUs (and stops it on `close`).
        workers: how many actors (default: one per GPU of the cluster, else one per CPU).
        retries: how often a dead worker is restarted (and its shard rerun) before the job fails.
    """

    def __init__(
        self, spec: ModelSpec | None, *, address: str | None = None, workers: int | None = None, retries: int = RETRIES
    ) -> None:
        if workers is not None and workers < 1:
            raise DistributedError(f"--workers must be at least 1, got {workers}")
        self.spec = spec
        self.retries = retries
        self.restarts = 0
        self._started = False
        if not ray.is_initialized():
            try:
                ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
            except (ConnectionError, RuntimeError, ValueError) as error:
                where = f"the Ray cluster at '{address}'" if address else "a local Ray instance"
                raise DistributedError(f"could not start or reach {where}: {error}") from None
            self._started = True
        resources = ray.cluster_resources()  # type: ignore[no-untyped-call]
        gpus = int(resources.get("GPU", 0))
        if spec is not None and spec.device_map is not None:
            # One model spread over every GPU of a node: one worker per node's worth of GPUs.
            alive = [node for node in ray.nodes() if node["Alive"]]  # type: ignore[no-untyped-call]
            per_node = max([int(node["Resources"].get("GPU", 0)) for node in alive] or [0])
            self._gpus, count = per_node, max(1, gpus // max(per_node, 1))
        else:
            self._gpus, count = (1, gpus) if gpus else (0, int(resources.get("CPU", 1)))
        worker_spec = spec.on("cuda") if spec is not None and self._gpus and spec.device is None else spec
        actor = ray.remote(ShardWorker).options(
            num_cpus=1, num_gpus=self._gpus, max_restarts=retries, max_task_retries=retries
        )
        threads = None if self._gpus else 1  # one CPU slot each: torch must not oversubscribe the machine
        self._actors: list[Any] = [actor.remote(worker_spec, threads) for _ in range(workers or max(1, count))]
        try:
            self._pids = self._get([worker.pid.remote() for worker in self._actors], "loading the model")
        except BaseException:
            self.close()
            raise
        self._in_flight: dict[int, int] = {}

    @property
    def workers(self) -> int:
        """How many actors this runner holds."""
        return len(self._actors)

    def in_flight(self) -> dict[int, int]:
        """``{shard: worker process id}`` of the shards running now."""
        return dict(self._in_flight)

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(lm, *args, **kwargs)`` on the first worker's model (``fn`` must be picklable)."""
        return self._get(self._actors[0].call.remote(fn, args, kwargs), "a call on the model")  # type: ignore[no-any-return]

    def run(self, task: ShardTask, shards: Sequence[int], *, on_done: Callable[[int], None] | None = None) -> None:
        """Run ``task`` on each of ``shards`` across the workers, a shard per idle worker; ``on_done(shard)`` here.

        Ray restarts a worker that dies (up to ``retries`` times) and reruns the shard it held.
        """
        queue = deque(shards)
        if not queue:
            return
        shared = ray.put(task)  # sent to the object store once, not once per shard
        running: dict[Any, tuple[int, int]] = {}  # ref -> (actor index, shard)

        def submit(index: int) -> None:
            shard = queue.popleft()
            running[self._actors[index].run.remote(shared, shard)] = (index, shard)
            self._in_flight[shard] = self._pids[index]

        for index in range(min(len(self._actors), len(queue))):
            submit(index)
        try:
            while running:
                [ref], _ = ray.wait(list(running), num_returns=1)
                index, shard = running.pop(ref)
                pid = self._get(ref, f"shard {shard}")
                self._in_flight.pop(shard, None)
                if pid != self._pids[index]:
                    self.restarts += 1  # Ray restarted this worker and reran the shard it held
                    self._pids[index] = pid
                if on_done is not None:
                    on_done(shard)
                if queue:
                    submit(index)
        except BaseException:
            for ref in running:
                ray.cancel(ref, force=False)
            raise
        finally:
            self._in_flight.clear()

    def _get(self, refs: Any, what: str) -> Any:
        try:
            return ray.get(refs)
        except ray.exceptions.RayTaskError as error:
            cause = error.cause
            if isinstance(cause, MechscopeError):
                raise cause from None
            raise DistributedError(f"{what} failed on a worker: {type(cause).__name__}: {cause}") from None
        except ray.exceptions.RayActorError as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise DistributedError(
                f"a worker died during {what} and {self.retries} restarts did not bring it back ({reason}); "
                "see the worker logs in Ray's session folder (/tmp/ray/session_latest/logs)"
            ) from None

    def close(self) -> None:
        """Stop the actors, and the local Ray instance if this runner started it."""
        for worker in getattr(self, "_actors", []):
            ray.kill(worker)
        self._actors = []
        if self._started:
            ray.shutdown()
            self._started = False

    def __enter__(self) -> RayRunner:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
