"""A weights census: `analyze` over many checkpoints, one shard per checkpoint, here or on Ray; resumable.

`census` plans the job in this process (`make_plan`: each source resolved to an absolute path, and a
fingerprint of its weight files, size and mtime, so that a checkpoint changed between two runs is never
silently reused), then runs `CensusTask` on a `mechscope.distributed.Runner` made with no model
(``make_runner(backend, None)``): shard ``i`` opens checkpoint ``i``, computes its rows with
`mechscope.weights.analyze.analyze_checkpoint` (the single-source code) and writes them, with the
checkpoint's provenance, as one JSONL part in ``OUT.parts/`` (`mechscope.distributed.parts.PartsFolder`).
A part that is there is whole (atomic writes) and is skipped, so a rerun of an interrupted census runs only
the checkpoints it had not finished. `merge` checks the parts against the plan, writes the one table in the
requested format exactly as a single-source `analyze` writes it (and validates it), writes one
``run_meta.json`` that lists every checkpoint, and removes the parts folder.

The table is the single-source tables put together: the rows of all checkpoints in source order, then
sorted by layer as every weight table is (`mechscope.weights.export.sort_rows` is stable, so layer 0 of
each checkpoint in source order comes first, the non-layer tensors last; `validate_table` checks that
order). Filtering it by ``model_path`` gives each checkpoint's single-source rows, in their order. The plan
fixes ``created_at`` once (a resumed census keeps the first run's), so the table does not depend on where
or when its shards ran.

Example (two tiny random checkpoints, analysed in this process):
    >>> import tempfile
    >>> from mechscope.testing.tiny_models import build_tiny_model
    >>> root = Path(tempfile.mkdtemp())
    >>> sources = [build_tiny_model(family, root / family) for family in ("llama", "gpt2")]
    >>> run = census(sources, out=root / "census.parquet", hash_files=False, progress=False)
    >>> run.checkpoints, run.rows, run.model_ids, parts_folder(run.output).exists()
    (2, 50, ['llama', 'gpt2'], False)
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from mechscope.distributed.parts import PLAN, PartsFolder, parts_folder
from mechscope.distributed.runner import LocalRunner, Runner
from mechscope.errors import InputError
from mechscope.progress import bar
from mechscope.storage.atomic import atomic_write
from mechscope.weights.analyze import analyze_checkpoint, table_identity, write_validated
from mechscope.weights.export import ParamRow, format_from_path, sort_rows
from mechscope.weights.reader import open_checkpoint
from mechscope.weights.run_meta import build_run_meta, write_run_meta
from mechscope.weights.schedule import resolve_device
from mechscope.weights.sources import resolve_source
from mechscope.weights.stats import StatsOptions

__all__ = ["CensusPlan", "CensusRun", "CensusTask", "census", "census_meta", "make_plan", "merge", "parts_folder"]

PART_KIND = "weights-census-part"
#: The keys of a single-source ``run_meta.json`` that describe the checkpoint (one record each in a census).
CHECKPOINT_KEYS = ("model_id", "revision", "model_path", "framework", "device", "duration_s", "files")

Fingerprint = tuple[tuple[str, int, int], ...]  # (weight file, bytes, mtime in ns), in the checkpoint's order


@dataclass(frozen=True)
class CensusPlan:
    """What a census is: its checkpoints (resolved, fingerprinted) and options; saved as ``plan.json``."""

    sources: tuple[str, ...]
    fingerprints: tuple[Fingerprint, ...]
    revision: str | None
    fmt: str
    spectral: bool
    rank_rtol: float | None
    sparsity_threshold: float
    device: str | None
    created_at: str

    def as_dict(self) -> dict[str, Any]:
        """The plan as ``plan.json`` holds it (two runs with equal dicts are the same job)."""
        options = {
            "spectral": self.spectral,
            "rank_rtol": self.rank_rtol,
            "sparsity_threshold": self.sparsity_threshold,
            "fmt": self.fmt,
            "device": self.device,
            "revision": self.revision,
        }
        return {
            "job": "weights-census",
            "sources": list(self.sources),
            "fingerprints": [[list(file) for file in files] for files in self.fingerprints],
            "options": options,
            "created_at": self.created_at,
        }

    def options(self) -> StatsOptions:
        """The statistics options, with the device resolved where this runs (a Ray worker may have no GPU)."""
        return StatsOptions(
            sparsity_threshold=self.sparsity_threshold,
            rank_rtol=self.rank_rtol,
            spectral=self.spectral,
            device=resolve_device(self.device),
        )


class CensusRun(BaseModel):
    """What `census` did: where the table and ``run_meta.json`` are, and a short summary."""

    output: Path
    run_meta: Path
    format: str
    rows: int
    checkpoints: int
    reused: int  # checkpoints whose parts an earlier, interrupted run had finished
    files: int
    model_ids: list[str]
    backend: str
    seconds: float


def fingerprint(files: Sequence[Path]) -> Fingerprint:
    """Each weight file with its size and modification time (cheap: no file is read)."""
    stats = [(file, file.stat()) for file in files]
    return tuple((str(file), stat.st_size, stat.st_mtime_ns) for file, stat in stats)


def make_plan(
    sources: Sequence[str | Path],
    *,
    fmt: str,
    spectral: bool = False,
    rank_rtol: float | None = None,
    sparsity_threshold: float = 1e-8,
    device: str | None = None,
    revision: str | None = None,
    created_at: str | None = None,
) -> CensusPlan:
    """Resolve and fingerprint every source (hub ids are fetched here, once, before any shard runs).

    Raises:
        InputError: no source, or one checkpoint named twice.
        WeightFileError: a source that is not a checkpoint.

    Examples:
        >>> import mechscope as ms
        >>> toy = ms.load("toy").source
        >>> plan = make_plan([toy], fmt="csv", created_at="2026-01-01T00:00:00Z")
        >>> plan.sources == (str(Path(toy).absolute()),), plan.created_at
        (True, '2026-01-01T00:00:00Z')
        >>> [Path(file).name for file, size, mtime in plan.fingerprints[0]]  # what a rerun checks is unchanged
        ['model.safetensors']
        >>> make_plan([toy, toy], fmt="csv")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        mechscope.errors.InputError: '...toy' is the same checkpoint as '...toy'; name each checkpoint once
    """
    if not sources:
        raise InputError("give at least one checkpoint to analyse")
    resolved: dict[str, str | Path] = {}
    fingerprints = []
    for source in sources:
        found = resolve_source(source, revision=revision)
        path = str(found.path.absolute())  # Ray workers do not share this process's working folder
        if path in resolved:
            raise InputError(f"'{source}' is the same checkpoint as '{resolved[path]}'; name each checkpoint once")
        resolved[path] = source
        fingerprints.append(fingerprint(found.files))
    return CensusPlan(
        sources=tuple(resolved),
        fingerprints=tuple(fingerprints),
        revision=revision,
        fmt=fmt,
        spectral=spectral,
        rank_rtol=rank_rtol,
        sparsity_threshold=sparsity_threshold,
        device=device,
        created_at=created_at or _now(),
    )


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parts(plan: CensusPlan, out: Path) -> PartsFolder:
    return PartsFolder(out, plan.as_dict(), len(plan.sources), suffix=".jsonl")


@dataclass(frozen=True)
class CensusTask:
    """The shards of one census (shard ``i`` is checkpoint ``i``), as a picklable `ShardTask` needing no model.

    Args:
        plan: the census.
        out: the census table (its parts go in ``OUT.parts/``).
        workers: threads computing one checkpoint's tensors.
        batch_bytes: the most float32 bytes per SVD batch (default: see `mechscope.weights.schedule`).
        hash_files: record the sha256 of each weight file.

    Examples:
        What a worker does with its shard (`census` gives the task to a runner; the parts folder is its own):

        >>> import tempfile
        >>> import mechscope as ms
        >>> out = Path(tempfile.mkdtemp()) / "census.csv"
        >>> plan = make_plan([ms.load("toy").source], fmt="csv")
        >>> parts_folder(out).mkdir()
        >>> task = CensusTask(plan, out, hash_files=False)
        >>> task.run(None, 0)  # no model: the shard opens its checkpoint itself
        >>> [path.name for path in parts_folder(out).iterdir()]
        ['part-000000.jsonl']
        >>> header, *rows = (parts_folder(out) / "part-000000.jsonl").read_text(encoding="utf-8").splitlines()
        >>> json.loads(header)["kind"], json.loads(header)["shard"], len(rows)  # the checkpoint's provenance, its rows
        ('weights-census-part', 0, 39)
        >>> task.run(None, 0)  # a rerun finds the part whole and leaves it as it is
    """

    plan: CensusPlan
    out: Path
    workers: int = 1
    batch_bytes: int | None = None
    hash_files: bool = True

    def run(self, lm: object, shard: int) -> None:
        """Analyse checkpoint ``shard`` and write its part atomically, unless a complete part is there.

        Raises:
            InputError: the checkpoint's files changed since the census was planned.
        """
        path = _parts(self.plan, self.out).path(shard)
        if _read_part(path, self.plan, shard) is not None:
            return  # a worker that died after writing it: its rerun must not write the part twice
        source = self.plan.sources[shard]
        started = time.perf_counter()
        with open_checkpoint(source, revision=self.plan.revision) as checkpoint:
            if fingerprint(checkpoint.files) != self.plan.fingerprints[shard]:
                raise InputError(
                    f"'{source}' changed since the census began; delete '{parts_folder(self.out)}' and rerun"
                )
            options = self.plan.options()
            model_id, revision = table_identity(checkpoint, None, self.plan.revision)
            rows = analyze_checkpoint(
                checkpoint,
                options,
                model_id=model_id,
                revision=revision,
                workers=self.workers,
                batch_bytes=self.batch_bytes,
                created_at=self.plan.created_at,
            )
            meta = build_run_meta(
                checkpoint,
                model_id=model_id,
                revision=revision,
                created_at=self.plan.created_at,
                options=options,
                workers=self.workers,
                output=self.out,
                fmt=self.plan.fmt,
                rows=len(rows),
                seconds=time.perf_counter() - started,
                cli_args=[],
                hash_files=self.hash_files,
            )
            names = checkpoint.names()
        header = {"kind": PART_KIND, "shard": shard, "source": source, "names": names, "meta": meta}
        header["fingerprint"] = [list(file) for file in self.plan.fingerprints[shard]]
        lines = [json.dumps(header)] + [json.dumps(row.model_dump()) for row in rows]  # repr floats: exact
        # no fsync per part: a part is checked when the merge or a rerun reads it, and remade if damaged
        atomic_write(path, lambda temporary: temporary.write_text("\n".join(lines) + "\n", "utf-8"), fsync=False)


def _read_part(path: Path, plan: CensusPlan, shard: int) -> tuple[dict[str, Any], list[ParamRow]] | None:
    """The part's header and rows, or None when it is missing, damaged, or of another checkpoint."""
    try:
        header, *records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        rows = [ParamRow(**record) for record in records]
    except (OSError, ValueError, TypeError):  # pydantic's ValidationError is a ValueError
        return None
    expected = [list(file) for file in plan.fingerprints[shard]]
    mine = (header.get("kind"), header.get("shard"), header.get("source"), header.get("fingerprint"))
    if mine != (PART_KIND, shard, plan.sources[shard], expected) or len(rows) != len(header.get("names", ())):
        return None
    if any(row.model_path != plan.sources[shard] for row in rows):
        return None
    return header, rows


def census(
    sources: Sequence[str | Path],
    *,
    out: Path,
    fmt: str | None = None,
    spectral: bool = False,
    rank_rtol: float | None = None,
    sparsity_threshold: float = 1e-8,
    workers: int = 1,
    device: str | None = None,
    revision: str | None = None,
    batch_bytes: int | None = None,
    hash_files: bool = True,
    cli_args: Sequence[str] | None = None,
    created_at: str | None = None,
    runner: Runner | None = None,
    progress: bool = True,
    on_shard: Callable[[int], None] | None = None,
) -> CensusRun:
    """Analyse every checkpoint of ``sources`` into one table at ``out``; a rerun resumes an interrupted one.

    Args:
        sources: What `analyze` accepts, one checkpoint each (in the table's source order).
        out: The table file (``OUT.parts/`` beside it holds the finished checkpoints until the merge).
        fmt, spectral, rank_rtol, sparsity_threshold, device, revision, batch_bytes, hash_files, cli_args:
            as for `mechscope.weights.analyze.analyze` (``revision`` applies to every hub id).
        workers: Threads computing one checkpoint's tensors (each shard runs with as many).
        created_at: The ``created_at`` column (default: a resumed census's first run, else now).
        runner: Where the shards run (default: here); made with no model, e.g. ``make_runner("ray", None)``.
        progress: Show a bar of checkpoints done.
        on_shard: Called here after each checkpoint's part is written (progress, tests of interruption).

    Raises:
        InputError: no source, one named twice, an unknown format, a parts folder of another census in the
            way, or a checkpoint changed while the census ran.
        WeightFileError: a checkpoint cannot be read (the message names the file).

    Examples:
        >>> import tempfile
        >>> import mechscope as ms
        >>> out = Path(tempfile.mkdtemp()) / "census.csv"
        >>> run = census([ms.load("toy").source], out=out, hash_files=False, progress=False)
        >>> run.checkpoints, run.rows, run.model_ids, run.reused, run.backend
        (1, 39, ['toy'], 0, 'local')
        >>> sorted(path.name for path in out.parent.iterdir())  # the parts folder is gone after the merge
        ['census.csv', 'run_meta.json']
    """
    started = time.perf_counter()
    out = Path(out)
    chosen = format_from_path(out, fmt)
    plan = make_plan(
        sources,
        fmt=chosen,
        spectral=spectral,
        rank_rtol=rank_rtol,
        sparsity_threshold=sparsity_threshold,
        device=device,
        revision=revision,
        created_at=created_at or _saved_created_at(out),
    )
    parts = _parts(plan, out).open()
    todo = [shard for shard in range(len(plan.sources)) if _read_part(parts.path(shard), plan, shard) is None]
    runner = runner or LocalRunner(None)
    task = CensusTask(plan, out, workers=workers, batch_bytes=batch_bytes, hash_files=hash_files)
    with bar("weights census", len(plan.sources), enabled=progress) as shown:
        if shown is not None:
            shown.advance(len(plan.sources) - len(todo))

        def finished(shard: int) -> None:
            if shown is not None:
                shown.advance(1)
            if on_shard is not None:
                on_shard(shard)

        runner.run(task, todo, on_done=finished)
    backend = type(runner).__name__.removesuffix("Runner").lower()  # local, ray
    return merge(
        plan, out, reused=len(plan.sources) - len(todo), backend=backend, cli_args=cli_args, workers=workers,
        started=started,
    )  # fmt: skip


def _saved_created_at(out: Path) -> str | None:
    """The ``created_at`` of an interrupted census at ``out`` (its rerun must write the same column)."""
    try:
        saved = json.loads((parts_folder(out) / PLAN).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = saved.get("created_at") if isinstance(saved, dict) else None
    return value if isinstance(value, str) else None


def merge(
    plan: CensusPlan,
    out: Path,
    *,
    reused: int = 0,
    backend: str = "local",
    cli_args: Sequence[str] | None = None,
    workers: int = 1,
    started: float | None = None,
) -> CensusRun:
    """Write the table and ``run_meta.json`` from a complete parts folder, then remove the folder.

    Raises:
        InputError: a checkpoint's part missing (rerun the census), a stray part, or a part that is damaged
            or holds another checkpoint.
        ExportValidationError: the written table failed its checks (nothing is left at ``out``).

    Examples:
        Merging a census whose shards ran elsewhere (here: the one shard, run by hand as a worker would):

        >>> import tempfile
        >>> import mechscope as ms
        >>> out = Path(tempfile.mkdtemp()) / "census.jsonl"
        >>> plan = make_plan([ms.load("toy").source], fmt="jsonl")
        >>> merge(plan, out)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        mechscope.errors.InputError: '...census.jsonl.parts' lacks 1 shards (first: 0); rerun the job to finish it
        >>> parts_folder(out).mkdir()
        >>> CensusTask(plan, out, hash_files=False).run(None, 0)
        >>> run = merge(plan, out)
        >>> run.rows, run.format, parts_folder(out).exists()
        (39, 'jsonl', False)
    """
    parts = _parts(plan, out)
    parts.check()
    headers, rows = [], []
    for shard in range(len(plan.sources)):
        read = _read_part(parts.path(shard), plan, shard)
        if read is None:
            raise InputError(
                f"part {shard} in '{parts.folder}' is damaged or not of '{plan.sources[shard]}'; "
                "delete it and rerun the census to redo it"
            )
        headers.append(read[0])
        rows.extend(read[1])
    names = [name for header in headers for name in header["names"]]
    count = write_validated(sort_rows(rows), out, plan.fmt, expected_names=names, spectral=plan.spectral)
    records = [header["meta"] for header in headers]
    seconds = time.perf_counter() - started if started is not None else sum(r["duration_s"] for r in records)
    meta = census_meta(
        records, out=out, fmt=plan.fmt, rows=count, seconds=seconds, cli_args=cli_args, workers=workers, backend=backend
    )
    meta_path = write_run_meta(out.parent, meta)
    parts.remove()
    return CensusRun(
        output=out,
        run_meta=meta_path,
        format=plan.fmt,
        rows=count,
        checkpoints=len(records),
        reused=reused,
        files=sum(len(record["files"]) for record in records),
        model_ids=[record["model_id"] for record in records],
        backend=backend,
        seconds=round(seconds, 3),
    )


def census_meta(
    records: Sequence[dict[str, Any]],
    *,
    out: Path,
    fmt: str,
    rows: int,
    seconds: float,
    cli_args: Sequence[str] | None = None,
    workers: int = 1,
    backend: str = "local",
) -> dict[str, Any]:
    """One ``run_meta.json`` for a census, from each checkpoint's single-source record (in source order).

    It is the single-source record with the checkpoint's keys (`CHECKPOINT_KEYS`) moved into a
    ``checkpoints`` list, one entry each with its ``rows``; ``output`` counts every row, ``device`` is the
    one every checkpoint ran on (comma-separated when they differ), and ``backend`` says where the shards
    ran. The versions and platform are those of the worker that analysed the first checkpoint.

    Examples:
        Two single-source records (here the same toy analysis twice) as one census record:

        >>> import tempfile
        >>> import mechscope as ms
        >>> from mechscope.weights.analyze import analyze
        >>> folder = Path(tempfile.mkdtemp())
        >>> single = analyze(ms.load("toy").source, out=folder / "toy.csv", hash_files=False)
        >>> record = json.loads(single.run_meta.read_text(encoding="utf-8"))
        >>> meta = census_meta([record, record], out=folder / "census.csv", fmt="csv", rows=78, seconds=1.0)
        >>> [(entry["model_id"], entry["rows"]) for entry in meta["checkpoints"]], meta["output"]["rows"]
        ([('toy', 39), ('toy', 39)], 78)
        >>> meta["backend"], "model_id" in meta  # the checkpoint's keys live in its entry only
        ('local', False)
    """
    meta = {key: value for key, value in records[0].items() if key not in CHECKPOINT_KEYS}
    meta.update(
        duration_s=round(seconds, 3),
        cli_args=list(cli_args) if cli_args is not None else list(sys.argv),
        device=",".join(sorted({record["device"] for record in records})),
        backend=backend,
        options={**meta["options"], "workers": workers},
        output={"path": str(out), "format": fmt, "rows": rows},
        checkpoints=[
            {**{key: record[key] for key in CHECKPOINT_KEYS}, "rows": record["output"]["rows"]} for record in records
        ],
    )
    return meta
