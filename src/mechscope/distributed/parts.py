"""`PartsFolder`: a sharded job's finished shards, one atomic file each, kept beside the output until the merge.

Every long job that runs on a `Runner` keeps its shards the same way: ``OUT.parts/`` holds ``plan.json``
(what the job is: model, inputs, options, how it is cut into shards) and one part file per finished shard,
written atomically by the shard itself (`mechscope.storage.atomic`), so a part that exists is whole. A rerun
of the same job finds the plan equal, skips the parts there (`todo`) and runs the rest; a folder of another
job is refused, never mixed in. The merge checks that the parts are exactly the plan's shards (`check`),
writes the output (aside, then renamed) and removes the folder.

Examples:
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "result.parquet"
    >>> parts = PartsFolder(out, {"job": "demo", "shards": 3}, 3, suffix=".json").open()
    >>> _ = parts.path(1).write_text("{}")
    >>> parts.todo(), parts.folder.name
    ([0, 2], 'result.parquet.parts')
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mechscope.errors import InputError
from mechscope.storage.atomic import atomic_write_text

PLAN = "plan.json"


def parts_folder(out: str | os.PathLike[str]) -> Path:
    """Where a job writing ``out`` keeps its finished shards until it merges them: ``OUT.parts/``.

    Examples:
        >>> parts_folder("runs/table.parquet").as_posix()
        'runs/table.parquet.parts'
    """
    target = Path(out)
    return target.with_name(target.name + ".parts")


def _normal(plan: Mapping[str, Any]) -> Any:
    """The plan as JSON reads it back (tuples become lists), so a saved plan compares equal to a new one."""
    return json.loads(json.dumps(plan, sort_keys=True))


class PartsFolder:
    """The parts folder of the job writing ``out``, described by ``plan`` and cut into ``n_shards`` shards.

    Args:
        out: the job's final output (file or folder); the parts live in ``OUT.parts/`` beside it.
        plan: what makes two runs the same job (JSON-serialisable: model, inputs' digest, options, shards).
        n_shards: how many shards the plan has (shard ids are ``0 .. n_shards - 1``).
        suffix: the part files' suffix (``.safetensors``, ``.parquet``, ``.json`` ...).

    Examples:
        A job of three shards: a rerun skips the finished part, the merge refuses an unfinished folder, and
        a folder of another job is never mixed in:

        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "scores.json"
        >>> parts = PartsFolder(out, {"job": "scores", "model": "toy"}, 3, suffix=".json").open()
        >>> sorted(p.name for p in parts.folder.iterdir())
        ['plan.json']
        >>> _ = parts.path(0).write_text("[0.5]")
        >>> parts.done(0), parts.todo()
        (True, [1, 2])
        >>> parts.check()
        Traceback (most recent call last):
        ...
        mechscope.errors.InputError: '...scores.json.parts' lacks 2 shards (first: 1); rerun the job to finish it
        >>> for shard in parts.todo():
        ...     _ = parts.path(shard).write_text(f"[{shard}]")
        >>> parts.check()  # complete: the merge may read the parts
        >>> PartsFolder(out, {"job": "scores", "model": "other"}, 3, suffix=".json").open()
        Traceback (most recent call last):
        ...
        mechscope.errors.InputError: '...' holds the parts of another job (another model, input or option); ...
        >>> parts.remove()
        >>> parts.folder.exists()
        False
    """

    def __init__(
        self, out: str | os.PathLike[str], plan: Mapping[str, Any], n_shards: int, *, suffix: str = ".safetensors"
    ) -> None:
        if n_shards < 1:
            raise InputError("a sharded job needs at least one shard")
        self.folder = parts_folder(out)
        self.plan = _normal(plan)
        self.n_shards = n_shards
        self.suffix = suffix

    def open(self) -> PartsFolder:
        """Create the folder and its ``plan.json``, or check that the one there is of this same job.

        Raises:
            InputError: the folder holds another job's parts, or a corrupt plan.
        """
        saved = self.folder / PLAN
        if saved.is_file():
            try:
                earlier = json.loads(saved.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise InputError(f"'{saved}' is corrupt; delete the folder '{self.folder}' to start over") from None
            if earlier != self.plan:
                raise InputError(
                    f"'{self.folder}' holds the parts of another job (another model, input or option); "
                    "delete it or write elsewhere"
                )
            return self
        if self.folder.exists() and not self.folder.is_dir():
            raise InputError(f"'{self.folder}' is in the way of the job's parts folder; move it or write elsewhere")
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(saved, json.dumps(self.plan, sort_keys=True))
        return self

    def path(self, shard: int) -> Path:
        """The part file of ``shard`` (written atomically by the shard, so it is whole when it exists)."""
        return self.folder / f"part-{shard:06d}{self.suffix}"

    def done(self, shard: int) -> bool:
        """Whether ``shard``'s part is there."""
        return self.path(shard).is_file()

    def todo(self) -> list[int]:
        """The shards whose parts are not there yet, in order."""
        return [shard for shard in range(self.n_shards) if not self.done(shard)]

    def check(self) -> None:
        """Refuse a folder that does not hold exactly the plan's shards (the merge reads each part's content).

        Raises:
            InputError: a shard missing (the job is unfinished: rerun it), or a part the plan has no shard for.
        """
        found = set()
        for path in self.folder.glob(f"part-*{self.suffix}"):
            number = path.name.removeprefix("part-").removesuffix(self.suffix)
            if not number.isdigit():
                raise InputError(f"'{path}' is not a part of this job; delete the folder '{self.folder}'")
            found.add(int(number))
        planned = set(range(self.n_shards))
        if missing := sorted(planned - found):
            raise InputError(
                f"'{self.folder}' lacks {len(missing)} shards (first: {missing[0]}); rerun the job to finish it"
            )
        if extra := sorted(found - planned):
            raise InputError(
                f"'{self.folder}' holds parts the plan has no shard for (first: {extra[0]}); delete the folder"
            )

    def remove(self) -> None:
        """Delete the folder (after the merge wrote the output)."""
        shutil.rmtree(self.folder, ignore_errors=True)
