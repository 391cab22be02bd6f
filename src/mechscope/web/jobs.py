"""Long requests as jobs: run on the analyzer in a thread, report progress, stop when cancelled.

A job runs one function of the model through `Analyzer.run` (so it waits its turn for the model). Its
progress is the library's own: every `mechscope.progress.track` / `bar` step inside it is reported to the
job (`mechscope.progress.report_to`). Cancelling sets a flag that a forward pre-hook on the model checks
before every pass (and the progress listener at every step): the next pass raises `JobCancelled`, which
unwinds through the library's own ``finally`` blocks, so every capture and intervention hook is removed,
and the cancelling hook itself goes in a ``finally`` of its own.

Examples:
    >>> import mechscope as ms, time
    >>> from mechscope.api import tasks
    >>> jobs = Jobs(ms.Analyzer.from_pretrained("toy"))
    >>> job = jobs.start("lens", lambda lm: tasks.lens_grid(lm, "The capital of France is"))
    >>> job.wait(60).state, job.result.cells[-1][-1].top[0].token
    ('done', ' Paris')
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from mechscope.errors import MechscopeError
from mechscope.progress import report_to
from mechscope.web.schemas import JobState, JobStatus

if TYPE_CHECKING:
    from pydantic import BaseModel

    from mechscope.api.analyzer import Analyzer
    from mechscope.core.lm import LanguageModel

#: Finished jobs kept for their results; older ones are forgotten.
KEEP_FINISHED = 32
FINAL: tuple[JobState, ...] = ("done", "failed", "cancelled")


class JobCancelled(MechscopeError):
    """The job was cancelled while it ran (raised inside the model's forward pass)."""


class UnknownJob(MechscopeError):
    """No job has this id (never started, or forgotten)."""


@contextmanager
def stop_when(lm: LanguageModel, cancelled: threading.Event) -> Iterator[None]:
    """Raise `JobCancelled` at the next forward pass of ``lm`` once ``cancelled`` is set."""

    def check(module: Any, args: Any) -> None:
        if cancelled.is_set():
            raise JobCancelled("the job was cancelled")

    # prepend: raise before mechscope's own pre-hooks see the pass begin
    handle = lm.model.register_forward_pre_hook(check, prepend=True)
    try:
        yield
    finally:
        handle.remove()


class Job:
    """One long request: its state, progress and result (or one-line error)."""

    def __init__(self, job_id: str, kind: str) -> None:
        self.id = job_id
        self.kind = kind
        self.state: JobState = "queued"
        self.done: float = 0
        self.total: float | None = None
        self.error: str | None = None
        self.result: BaseModel | None = None
        self.cancelled = threading.Event()
        self.finished = threading.Event()

    def status(self) -> JobStatus:
        """The job's state and progress as the API reports it."""
        return JobStatus(
            id=self.id, kind=self.kind, state=self.state, done=self.done, total=self.total, error=self.error
        )

    def progress(self, done: float, total: float | None, description: str = "") -> None:
        """A progress step of the work (a `mechscope.progress` listener); raises once cancelled."""
        self.done, self.total = done, total
        if self.cancelled.is_set():
            raise JobCancelled("the job was cancelled")

    def wait(self, timeout: float | None = None) -> Job:
        """Block until the job has finished (or ``timeout`` seconds passed); returns the job."""
        self.finished.wait(timeout)
        return self


class Jobs:
    """The server's jobs on one analyzer: start, look up, cancel."""

    def __init__(self, analyzer: Analyzer) -> None:
        self.analyzer = analyzer
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def start(self, kind: str, work: Callable[[LanguageModel], BaseModel]) -> Job:
        """Run ``work(model)`` in a thread as a new job; returns at once."""
        with self._lock:
            job = Job(f"job-{next(self._ids)}", kind)
            self._jobs[job.id] = job
            self._forget_old()
        threading.Thread(target=self._run, args=(job, work), name=job.id, daemon=True).start()
        return job

    def get(self, job_id: str) -> Job:
        """The job with this id.

        Raises:
            UnknownJob: no such job (or it finished long ago and was forgotten).
        """
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise UnknownJob(f"no job '{job_id}'; start one with POST /api/jobs")
        return job

    def cancel(self, job_id: str) -> Job:
        """Ask the job to stop (at its next forward pass or progress step); a finished job is left as it is."""
        job = self.get(job_id)
        if job.state not in FINAL:
            job.cancelled.set()
        return job

    def _run(self, job: Job, work: Callable[[LanguageModel], BaseModel]) -> None:
        def task(lm: LanguageModel) -> BaseModel:
            if job.cancelled.is_set():  # cancelled while it waited for the model
                raise JobCancelled("the job was cancelled")
            job.state = "running"
            with report_to(job.progress), stop_when(lm, job.cancelled):
                return work(lm)

        try:
            job.result = self.analyzer.run(task)
            job.state = "done"
        except JobCancelled:
            job.state = "cancelled"
        except MechscopeError as error:
            job.error, job.state = str(error), "failed"
        except Exception as error:  # a bug: still one line for the page, the type says where to look
            job.error, job.state = f"internal error ({type(error).__name__}): {error}", "failed"
        finally:
            job.finished.set()

    def _forget_old(self) -> None:
        finished = [job_id for job_id, job in self._jobs.items() if job.state in FINAL]
        for job_id in finished[: max(0, len(finished) - KEEP_FINISHED)]:
            del self._jobs[job_id]
