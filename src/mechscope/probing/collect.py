"""Collect activations of a labelled prompt set into a folder of shards, resumably.

`collect_shard` is a pure function of ``(model, dataset, shard)``: it runs the shard's prompts through the
model (bucketed by length and padded on the left, `LanguageModel.forward_batches`, so padding never changes
a row) and returns one ``[rows, d]`` tensor per site. `collect` plans the shards, writes the manifest and
the dataset, and writes each missing shard atomically; a rerun with the same arguments skips the shards
already on disk, so an interrupted collection resumes and ends with the same files as an uninterrupted one.
Only one shard is ever held in memory (per worker).

Where the shards run is a `mechscope.distributed.Runner` (`CollectTask` is the job): in this process by
default, or on Ray actors (``runner=RayRunner(...)``, ``--backend ray``), each writing its shards straight
into the output folder. The folder is the same either way, and `check_shards` holds it against the plan
after the run: every shard there and whole, no shard file the plan has none for.

Examples:
    >>> import tempfile
    >>> import mechscope as ms
    >>> from mechscope.probing.dataset import tool_prompt_dataset
    >>> lm = ms.load("toy")
    >>> acts = collect(lm, tool_prompt_dataset(per_tool=2), tempfile.mkdtemp(), shard_size=10, progress=False)
    >>> acts.manifest.n_shards, acts.sites[:2]
    (4, ['resid_post.0', 'resid_post.1'])
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mechscope.distributed.runner import LocalRunner, Runner
from mechscope.errors import InputError
from mechscope.probing.dataset import PromptDataset
from mechscope.probing.store import (
    DATASET,
    MANIFEST,
    ActivationManifest,
    ActivationSet,
    ShardSpec,
    read_manifest,
    shard_done,
    write_manifest,
    write_shard,
)
from mechscope.progress import bar
from mechscope.storage.tensors import StoredFileError

if TYPE_CHECKING:
    from torch import Tensor

    from mechscope.core.lm import LanguageModel

POSITIONS = ("last", "mean")
DTYPES = {"float32": torch.float32, "float16": torch.float16}


def _check(positions: str, dtype: str, shard_size: int, batch_size: int) -> None:
    if positions not in POSITIONS:
        raise InputError(f"positions must be 'last' or 'mean', not {positions!r}")
    if dtype not in DTYPES:
        raise InputError(f"dtype must be float32 or float16, not {dtype!r}")
    if shard_size < 1 or batch_size < 1:
        raise InputError(f"shard size and batch size must be at least 1 (got {shard_size}, {batch_size})")


def plan(
    lm: LanguageModel,
    dataset: PromptDataset,
    sites: Sequence[str] = ("resid_post.*",),
    positions: str = "last",
    shard_size: int = 256,
    dtype: str = "float32",
) -> ActivationManifest:
    """The manifest of a collection: which sites, positions and shards (nothing runs).

    Raises:
        InputError: an unknown site or layer, bad positions, dtype or shard size, or an empty dataset.
    """
    _check(positions, dtype, shard_size, 1)
    if not len(dataset):
        raise InputError("the prompt set is empty; give at least one prompt")
    resolved = [str(site) for site in lm.sites(list(sites))]
    return ActivationManifest(
        model=lm.source,
        revision=getattr(lm.model.config, "_commit_hash", None),  # the hub commit, where one was resolved
        sites=resolved,
        positions=positions,
        dtype=dtype,
        d_model=lm.arch.d_model,
        dataset_digest=dataset.digest(),
        n_prompts=len(dataset),
        shard_size=shard_size,
    )


def collect_shard(
    lm: LanguageModel,
    dataset: PromptDataset,
    manifest: ActivationManifest,
    spec: ShardSpec,
    batch_size: int = 32,
) -> dict[str, Tensor]:
    """The activations of shard ``spec``: one ``[stop - start, d]`` CPU tensor per site of ``manifest``."""
    prompts = dataset.texts()[spec.start : spec.stop]
    with (
        torch.no_grad(),
        lm.capture(manifest.sites, positions=manifest.positions, to="cpu", dtype=DTYPES[manifest.dtype]) as cache,
    ):
        lm.forward_batches(prompts, batch_size=batch_size)
    values = {site: cache[site].contiguous() for site in manifest.sites}
    for site, value in values.items():
        if value.shape != (len(prompts), manifest.d_model):
            raise InputError(f"{site} gave shape {list(value.shape)}; expected one row of width d_model per prompt")
    return values


@dataclass(frozen=True)
class CollectTask:
    """The shards of one collection, as a picklable `mechscope.distributed.ShardTask` (shard = its index)."""

    dataset: PromptDataset
    manifest: ActivationManifest
    folder: Path
    batch_size: int = 32

    def run(self, lm: LanguageModel, shard: int) -> None:
        """Collect shard ``shard`` and write it atomically, unless the folder holds it already."""
        spec = self.manifest.shard(shard)
        if shard_done(self.folder, self.manifest, spec):
            return  # a worker that died after writing it: its rerun must not write the shard twice
        write_shard(
            self.folder, self.manifest, spec, collect_shard(lm, self.dataset, self.manifest, spec, self.batch_size)
        )


_SAFETENSORS_DTYPES = {"float32": "F32", "float16": "F16"}


def _layout(path: Path) -> dict[str, tuple[list[int], str]]:
    """``{name: (shape, safetensors dtype)}`` of each tensor in ``path``, from its header alone."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            slices = {key: handle.get_slice(key) for key in handle.keys()}  # noqa: SIM118 - a handle, not a dict
            return {key: (list(value.get_shape()), value.get_dtype()) for key, value in slices.items()}
    except Exception as error:  # safetensors raises its own error type on a damaged file
        raise StoredFileError(f"'{path}' is unreadable ({type(error).__name__}); delete it and rerun") from None


def check_shards(folder: str | os.PathLike[str], manifest: ActivationManifest) -> None:
    """Refuse a folder that does not hold exactly ``manifest``'s shards, each whole (the merge's check).

    A shard is whole when its header names its own rows of this plan and it holds a ``[rows, d_model]``
    tensor of the stored dtype for every site (read from the header; no tensor is loaded).

    Raises:
        InputError: a shard missing or damaged (rerun the collection to redo it), or a shard file the plan
            has no shard for (first problem only).
    """
    where = Path(folder)
    for spec in manifest.shards():
        path = where / spec.name
        if not shard_done(where, manifest, spec):
            raise InputError(
                f"'{where}' misses shard {spec.index} of {manifest.n_shards} ({spec.name}); "
                "rerun mechscope circuit collect with the same arguments to finish it"
            )
        layout = _layout(path)
        expected = ([spec.stop - spec.start, manifest.d_model], _SAFETENSORS_DTYPES[manifest.dtype])
        bad = next((site for site in manifest.sites if layout.get(site) != expected), None)
        if bad is not None or len(layout) != len(manifest.sites):
            raise InputError(
                f"'{path}' does not hold {manifest.dtype} rows {spec.start}..{spec.stop} of every site "
                f"(first wrong: {bad or 'an extra tensor'}); delete it and rerun to redo it"
            )
    planned = {spec.name for spec in manifest.shards()}
    if strays := sorted(p.name for p in where.glob("shard-*.safetensors") if p.name not in planned):
        raise InputError(f"'{where}' holds shard files the plan has no shard for (first: {strays[0]}); remove them")


def collect(
    lm: LanguageModel | None,
    dataset: PromptDataset,
    out: str | os.PathLike[str],
    *,
    sites: Sequence[str] = ("resid_post.*",),
    positions: str = "last",
    shard_size: int = 256,
    batch_size: int = 32,
    dtype: str = "float32",
    progress: bool = True,
    on_shard: Callable[[ShardSpec], None] | None = None,
    runner: Runner | None = None,
) -> ActivationSet:
    """Collect ``dataset``'s activations at ``sites`` into folder ``out``; resumes a partial collection.

    Args:
        lm: the model (None when ``runner`` holds it, e.g. on Ray workers).
        sites: site patterns (default every layer's ``resid_post``).
        positions: ``"last"`` or ``"mean"`` (over each prompt's real tokens).
        shard_size: prompts per shard file (the unit of resuming and of distribution).
        batch_size: prompts per forward pass.
        dtype: ``"float32"`` or ``"float16"`` on disk.
        progress: show a progress bar over prompts.
        on_shard: called here after each shard is written (a hook for progress reporting).
        runner: where the shards run (default: here, on ``lm``); every worker must see ``out``.

    Raises:
        InputError: ``out`` holds a collection of another model, dataset, sites or positions (use a new
            folder), or is a file; the finished folder does not match the plan (`check_shards`); bad
            arguments (see `plan`).
    """
    _check(positions, dtype, shard_size, batch_size)
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"'{folder}' is a file; give a folder for the activations")
    if runner is None:
        if lm is None:
            raise InputError("collect needs a model or a runner that holds one")
        runner = LocalRunner(lm)
    manifest = runner.call(plan, dataset, sites, positions, shard_size, dtype)
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / MANIFEST).is_file():
        found = read_manifest(folder)
        if found != manifest:
            differs = [k for k in manifest.model_fields if getattr(found, k) != getattr(manifest, k)]
            raise InputError(
                f"'{folder}' holds a collection with another {differs[0]} ({getattr(found, differs[0])!r}); "
                "collect into a new folder, or remove this one"
            )
    elif any(folder.iterdir()):
        raise InputError(f"'{folder}' is not empty and holds no collection; give an empty or new folder")
    else:
        dataset.save(folder / DATASET)
        write_manifest(folder, manifest)
    todo = [spec for spec in manifest.shards() if not shard_done(folder, manifest, spec)]
    with bar("collect", manifest.n_prompts, enabled=progress) as shown:
        if shown is not None:
            shown.advance(manifest.n_prompts - sum(spec.stop - spec.start for spec in todo))

        def finished(shard: int) -> None:
            spec = manifest.shard(shard)
            if shown is not None:
                shown.advance(spec.stop - spec.start)
            if on_shard is not None:
                on_shard(spec)

        task = CollectTask(dataset, manifest, folder, batch_size)
        runner.run(task, [spec.index for spec in todo], on_done=finished)
    check_shards(folder, manifest)
    return ActivationSet(folder)


class ActivationCollector:
    """The seed's name: a collector bound to a model and its options; `collect` does the work.

    Examples:
        >>> import tempfile
        >>> import mechscope as ms
        >>> from mechscope.probing.dataset import tool_prompt_dataset
        >>> collector = ActivationCollector(ms.load("toy"), positions="mean", progress=False)
        >>> collector.collect(tool_prompt_dataset(per_tool=1), tempfile.mkdtemp()).manifest.positions
        'mean'
    """

    def __init__(
        self,
        lm: LanguageModel,
        *,
        sites: Sequence[str] = ("resid_post.*",),
        positions: str = "last",
        shard_size: int = 256,
        batch_size: int = 32,
        dtype: str = "float32",
        progress: bool = True,
    ) -> None:
        _check(positions, dtype, shard_size, batch_size)
        self.lm = lm
        self.options = {
            "sites": tuple(sites),
            "positions": positions,
            "shard_size": shard_size,
            "batch_size": batch_size,
            "dtype": dtype,
            "progress": progress,
        }

    def collect(self, dataset: PromptDataset, out: str | os.PathLike[str]) -> ActivationSet:
        """Collect ``dataset`` into ``out`` (see `collect`)."""
        return collect(self.lm, dataset, out, **self.options)  # type: ignore[arg-type]
