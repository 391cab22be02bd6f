"""Stage 0: one forward pass per concept term, pooled at a few layers, into an encyclopedia; resumable.

The terms are sorted by token count and cut into batches (so a batch pads little); batch ``i`` is shard
``i``, and `bootstrap_shard` is a pure function of ``(model, concepts, plan, shard)``. `bootstrap` writes
each finished shard atomically into a parts folder beside the output (``enc.h5.parts/``); a rerun skips
the parts already there, so a kill at any moment loses at most the batch in flight. When every part is
there, they are gathered into the HDF5 file (written aside, then renamed) and the parts folder is
removed. A folder of parts from another model, concept list or layer set is refused, never mixed in.

Where the shards run is a `mechscope.distributed.Runner`: in this process by default, or on Ray actors
(``runner=RayRunner(...)``, ``--backend ray``); the parts, and so the HDF5 file, are the same either way,
and the gather checks them against the plan (no shard missing, none extra, each holding its own rows).

Examples:
    >>> import tempfile, pathlib
    >>> import mechscope as ms
    >>> from mechscope.concepts.sources import toyworld_concepts
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "enc.h5"
    >>> enc = bootstrap(ms.load("toy"), toyworld_concepts(), out, layers=[-2, -1], progress=False)
    >>> enc.info.layers, enc.mean(-1).shape, int(enc.count().max())
    ((2, 3), (161, 128), 1)
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from mechscope.concepts.concept import ConceptList
from mechscope.concepts.encyclopedia import Encyclopedia, EncyclopediaInfo, concepts_digest, write_tables
from mechscope.concepts.pooling import POOLINGS, pooled, resolve
from mechscope.core.batching import plan_batches
from mechscope.core.bulk import token_ids
from mechscope.distributed.parts import PartsFolder, parts_folder
from mechscope.distributed.runner import LocalRunner, Runner
from mechscope.errors import InputError
from mechscope.progress import bar
from mechscope.storage.hdf5 import create, remove_stale_temporaries
from mechscope.storage.tensors import StoredFileError, load_tensors, save_tensors, stored_meta

__all__ = ["BootstrapPlan", "BootstrapTask", "bootstrap", "bootstrap_shard", "check_parts", "gather", "make_plan"]

if TYPE_CHECKING:
    from torch import Tensor

    from mechscope.core.lm import LanguageModel

PART_KIND = "encyclopedia-part"


@dataclass(frozen=True)
class BootstrapPlan:
    """Which concepts share each batch (shard), for which model and layers; saved as ``plan.json``."""

    model: str
    revision: str
    layers: tuple[int, ...]
    model_layers: int
    d_model: int
    concepts_sha256: str
    pooling: str
    batches: tuple[tuple[int, ...], ...]

    def same_job(self, other: BootstrapPlan) -> bool:
        """Whether ``other`` describes the same bootstrap (then its parts can be reused)."""
        return asdict(self) == asdict(other)


def make_plan(
    lm: LanguageModel,
    concepts: ConceptList,
    layers: Sequence[int],
    *,
    batch_size: int = 128,
    max_tokens: int | None = None,
    pooling: str = "mean",
) -> BootstrapPlan:
    """Tokenize every term and cut the length-sorted list into batches (nothing runs through the model).

    Examples:
        >>> import tempfile, pathlib
        >>> import mechscope as ms
        >>> from mechscope.concepts.concept import ConceptList
        >>> from mechscope.concepts.sources import toyworld_concepts
        >>> lm, concepts = ms.load("toy"), ConceptList(toyworld_concepts().concepts[:4])  # four countries
        >>> plan = make_plan(lm, concepts, [-2, -1], batch_size=2)
        >>> plan.layers, plan.batches  # terms sorted by token count, two per batch (shard)
        ((2, 3), ((0, 1), (3, 2)))

    Raises:
        InputError: fewer than two concepts, a term too long for the model, a bad batch size or pooling.
        SiteError: a layer outside the model.
    """
    if len(concepts) < 2:
        raise InputError("an encyclopedia needs at least two concepts")
    if pooling not in POOLINGS:
        raise InputError(f"unknown pooling '{pooling}'; use one of {', '.join(POOLINGS)}")
    chosen = resolve(lm, layers)
    lengths = [len(row) for row in token_ids(lm, [concept.term for concept in concepts])]
    windows = plan_batches(lengths, batch_size, max_tokens=max_tokens, window_batches=len(lengths) // batch_size + 1)
    return BootstrapPlan(
        model=lm.source,
        revision=str(getattr(lm.model.config, "_commit_hash", None) or ""),
        layers=tuple(chosen),
        model_layers=lm.arch.n_layers,
        d_model=lm.arch.d_model,
        concepts_sha256=concepts_digest(concepts.concepts),
        pooling=pooling,
        batches=tuple(tuple(batch) for window in windows for batch in window),
    )


def bootstrap_shard(lm: LanguageModel, concepts: ConceptList, plan: BootstrapPlan, shard: int) -> dict[int, Tensor]:
    """The pooled activations of shard ``shard``'s terms: ``{layer: [batch, d]}`` float16, in plan order.

    Examples:
        >>> import tempfile, pathlib
        >>> import mechscope as ms
        >>> from mechscope.concepts.concept import ConceptList
        >>> from mechscope.concepts.sources import toyworld_concepts
        >>> lm, concepts = ms.load("toy"), ConceptList(toyworld_concepts().concepts[:4])  # four countries
        >>> plan = make_plan(lm, concepts, [-2, -1], batch_size=2)
        >>> values = bootstrap_shard(lm, concepts, plan, 1)  # the terms of concepts 3 and 2
        >>> {layer: (tuple(value.shape), value.dtype) for layer, value in values.items()}
        {2: ((2, 128), torch.float16), 3: ((2, 128), torch.float16)}
    """
    rows = plan.batches[shard]
    terms = [concepts[i].term for i in rows]
    values = pooled(lm, terms, plan.layers, pooling=plan.pooling, terms=terms, batch_size=len(terms))
    return {layer: value.to(torch.float16) for layer, value in values.items()}


def _parts(folder: Path, plan: BootstrapPlan) -> PartsFolder:
    return PartsFolder(folder.with_name(folder.name.removesuffix(".parts")), asdict(plan), len(plan.batches))


def _part(folder: Path, shard: int) -> Path:
    return folder / f"part-{shard:06d}.safetensors"


def _open_parts(folder: Path, plan: BootstrapPlan) -> None:
    _parts(folder, plan).open()


@dataclass(frozen=True)
class BootstrapTask:
    """The shards of one bootstrap, as a picklable `mechscope.distributed.ShardTask`.

    Examples:
        A runner calls ``run`` once per shard; each call leaves that shard's part in the parts folder:

        >>> import tempfile, pathlib
        >>> import mechscope as ms
        >>> from mechscope.concepts.concept import ConceptList
        >>> from mechscope.concepts.sources import toyworld_concepts
        >>> lm, concepts = ms.load("toy"), ConceptList(toyworld_concepts().concepts[:4])  # four countries
        >>> plan = make_plan(lm, concepts, [-1], batch_size=2)
        >>> folder = pathlib.Path(tempfile.mkdtemp()) / "enc.h5.parts"  # `bootstrap` creates it beside its output
        >>> folder.mkdir()
        >>> task = BootstrapTask(concepts, plan, folder)
        >>> task.run(lm, 1)
        >>> sorted(path.name for path in folder.iterdir())
        ['part-000001.safetensors']
    """

    concepts: ConceptList
    plan: BootstrapPlan
    folder: Path

    def run(self, lm: LanguageModel, shard: int) -> None:
        """Compute shard ``shard`` and write its part atomically, unless a complete part is there already."""
        path = _part(self.folder, shard)
        if _part_done(path, self.plan, shard):
            return  # a worker that died after writing it: its rerun must not write the part twice
        values = bootstrap_shard(lm, self.concepts, self.plan, shard)
        tensors = {f"layer_{layer}": value for layer, value in values.items()}
        # no fsync per part: a part is checked when the gather or a rerun reads it, and remade if damaged
        meta = {"rows": list(self.plan.batches[shard])}
        save_tensors(path, tensors, kind=PART_KIND, meta=meta, fsync=False)


def _part_done(path: Path, plan: BootstrapPlan, shard: int) -> bool:
    meta = stored_meta(path, PART_KIND)
    return meta is not None and meta.get("rows") == list(plan.batches[shard])


def bootstrap(
    lm: LanguageModel | None,
    concepts: ConceptList,
    out: str | os.PathLike[str],
    *,
    layers: Sequence[int] = (-1,),
    batch_size: int = 128,
    max_tokens: int | None = None,
    pooling: str = "mean",
    progress: bool = True,
    on_shard: Callable[[int], None] | None = None,
    runner: Runner | None = None,
) -> Encyclopedia:
    """Build a stage-0 encyclopedia of ``concepts`` at ``layers`` in ``out`` (HDF5); resumes a killed run.

    Args:
        lm: the model (None when ``runner`` holds it, e.g. on Ray workers).
        layers: layer indices (negative from the end; ``-1`` is the last layer's output).
        batch_size, max_tokens: at most this many terms / padded tokens per forward pass (one shard).
        pooling: ``mean`` over the text's tokens (the seed's), or ``term`` / ``term_last`` — the concept's
            own tokens, for lenses that monitor token by token (`mechscope.concepts.pooling`).
        on_shard: called after each shard is saved (progress reporting, tests of interruption).
        runner: where the shards run (default: here, on ``lm``); see `mechscope.distributed`.

    Examples:
        A run stopped after its first shard resumes with the second one only:

        >>> import tempfile, pathlib
        >>> import mechscope as ms
        >>> from mechscope.concepts.concept import ConceptList
        >>> from mechscope.concepts.sources import toyworld_concepts
        >>> lm, concepts = ms.load("toy"), ConceptList(toyworld_concepts().concepts[:4])  # four countries
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "enc.h5"
        >>> def stop(shard):
        ...     raise RuntimeError(f"stopped after shard {shard}")
        >>> bootstrap(lm, concepts, out, batch_size=2, progress=False, on_shard=stop)
        Traceback (most recent call last):
        RuntimeError: stopped after shard 0
        >>> done = []
        >>> enc = bootstrap(lm, concepts, out, batch_size=2, progress=False, on_shard=done.append)
        >>> done, len(enc), enc.info.layers, enc.mean(-1).shape
        ([1], 4, (3,), (4, 128))
        >>> sorted(path.name for path in out.parent.iterdir())  # the parts folder is gone
        ['enc.h5']

    Raises:
        InputError: ``out`` already exists (refine it, or delete it), a parts folder of another job is in
            the way, or bad input (see `make_plan`).
    """
    target = Path(out)
    if target.exists():
        raise InputError(f"'{target}' already exists; refine it with `concepts refine`, or delete it to rebuild")
    if runner is None:
        if lm is None:
            raise InputError("bootstrap needs a model or a runner that holds one")
        runner = LocalRunner(lm)
    plan = runner.call(make_plan, concepts, layers, batch_size=batch_size, max_tokens=max_tokens, pooling=pooling)
    folder = parts_folder(target)
    _open_parts(folder, plan)
    todo = [shard for shard in range(len(plan.batches)) if not _part_done(_part(folder, shard), plan, shard)]
    done = len(concepts) - sum(len(plan.batches[s]) for s in todo)
    with bar("bootstrap", len(concepts), enabled=progress) as shown:
        if shown is not None:
            shown.advance(done)

        def finished(shard: int) -> None:
            if shown is not None:
                shown.advance(len(plan.batches[shard]))
            if on_shard is not None:
                on_shard(shard)

        runner.run(BootstrapTask(concepts, plan, folder), todo, on_done=finished)
    gather(plan, concepts, folder, target)
    return Encyclopedia(target, written_from=concepts)


def check_parts(plan: BootstrapPlan, folder: Path) -> None:
    """Refuse a parts folder that does not hold exactly the plan's shards (`gather` checks their rows).

    Examples:
        >>> import tempfile, pathlib
        >>> import mechscope as ms
        >>> from mechscope.concepts.concept import ConceptList
        >>> from mechscope.concepts.sources import toyworld_concepts
        >>> lm, concepts = ms.load("toy"), ConceptList(toyworld_concepts().concepts[:4])  # four countries
        >>> plan = make_plan(lm, concepts, [-1], batch_size=2)
        >>> folder = pathlib.Path(tempfile.mkdtemp()) / "enc.h5.parts"  # `bootstrap` creates it beside its output
        >>> folder.mkdir()
        >>> task = BootstrapTask(concepts, plan, folder)
        >>> task.run(lm, 0)
        >>> check_parts(plan, folder)
        Traceback (most recent call last):
        mechscope.errors.InputError: '...enc.h5.parts' lacks 1 shards (first: 1); rerun the job to finish it
        >>> task.run(lm, 1)
        >>> check_parts(plan, folder)  # complete: nothing to say

    Raises:
        InputError: a shard missing (the job is unfinished: rerun it), or a part the plan has no shard for.
    """
    _parts(folder, plan).check()


def gather(plan: BootstrapPlan, concepts: ConceptList, folder: Path, target: Path) -> Path:
    """Write the HDF5 file from a complete parts folder (aside, then renamed), then remove the folder.

    Examples:
        >>> import tempfile, pathlib
        >>> import mechscope as ms
        >>> from mechscope.concepts.concept import ConceptList
        >>> from mechscope.concepts.sources import toyworld_concepts
        >>> lm, concepts = ms.load("toy"), ConceptList(toyworld_concepts().concepts[:4])  # four countries
        >>> plan = make_plan(lm, concepts, [-1], batch_size=2)
        >>> folder = pathlib.Path(tempfile.mkdtemp()) / "enc.h5.parts"  # `bootstrap` creates it beside its output
        >>> folder.mkdir()
        >>> task = BootstrapTask(concepts, plan, folder)
        >>> for shard in range(len(plan.batches)):
        ...     task.run(lm, shard)
        >>> target = gather(plan, concepts, folder, folder.with_name("enc.h5"))
        >>> target.name, folder.exists(), Encyclopedia(target).mean(3).shape
        ('enc.h5', False, (4, 128))
    """
    from mechscope import __version__

    check_parts(plan, folder)
    remove_stale_temporaries(target)
    means = {layer: np.zeros((len(concepts), plan.d_model), np.float16) for layer in plan.layers}
    for shard, rows in enumerate(plan.batches):
        try:
            stored = load_tensors(_part(folder, shard), kind=PART_KIND)
        except StoredFileError as error:
            raise InputError(f"part {shard} in '{folder}' is damaged ({error}); rerun the job to redo it") from None
        if stored.meta.get("rows") != list(rows):
            raise InputError(f"part {shard} in '{folder}' holds other rows than its shard; delete the folder")
        for layer in plan.layers:
            means[layer][list(rows)] = stored.tensors[f"layer_{layer}"].numpy()
    info = EncyclopediaInfo(
        model=plan.model,
        revision=plan.revision,
        layers=plan.layers,
        model_layers=plan.model_layers,
        d_model=plan.d_model,
        stage=0,
        samples_per_concept=1.0,
        pooling=plan.pooling,
        code_version=__version__,
        concepts_sha256=plan.concepts_sha256,
    )
    count = np.ones(len(concepts), np.int64)
    create(target, lambda handle: write_tables(handle, info, concepts.concepts, means, count))
    shutil.rmtree(folder)
    return target
