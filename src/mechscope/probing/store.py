"""An activation set on disk: a folder of safetensors shards, a JSON manifest and the prompt set.

Layout of a collection folder::

    acts/
      manifest.json          what was collected: model, revision, sites, positions, dataset digest, shards
      dataset.json           the labelled prompts (`mechscope.probing.dataset.PromptDataset`)
      shard-00000.safetensors  rows [start, stop) of the dataset: one [rows, d] tensor per site

Each shard is written atomically (`mechscope.storage.tensors.save_tensors`) and names, in its own header,
its index, its rows and the dataset digest, so a folder holds only whole shards, a rerun can tell which are
done, and the loader refuses a folder with a shard missing. Nothing here holds more than one site of the
set in memory at a time: `ActivationSet.features` reads one tensor from each shard.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ValidationError

from mechscope.errors import InputError
from mechscope.probing.dataset import PromptDataset
from mechscope.storage.atomic import atomic_write_text
from mechscope.storage.tensors import StoredFileError, read_header

if TYPE_CHECKING:
    from torch import Tensor

KIND = "activations"
SCHEMA_VERSION = 1
MANIFEST, DATASET = "manifest.json", "dataset.json"


class ActivationManifest(BaseModel):
    """What a collection folder holds (``manifest.json``).

    Attributes:
        model: the model's source (folder or hub id); revision: its commit where the hub names one.
        sites: the concrete sites collected (``resid_post.0`` ...), in order.
        positions: ``"last"`` (the last real token of each prompt) or ``"mean"`` (the mean over its tokens).
        dtype: the stored dtype (``float32`` or ``float16``).
        d_model: the width of every stored row.
        dataset_digest: `PromptDataset.digest` of ``dataset.json``.
        n_prompts, shard_size: the dataset's size and the rows per shard (the last shard may be shorter).
    """

    kind: str = KIND
    schema_version: int = SCHEMA_VERSION
    model: str
    revision: str | None = None
    sites: list[str]
    positions: str
    dtype: str
    d_model: int
    dataset_digest: str
    n_prompts: int
    shard_size: int

    @property
    def n_shards(self) -> int:
        """How many shards the plan has."""
        return -(-self.n_prompts // self.shard_size)

    def shard(self, index: int) -> ShardSpec:
        """The rows of shard ``index``."""
        start = index * self.shard_size
        return ShardSpec(index, start, min(start + self.shard_size, self.n_prompts))

    def shards(self) -> list[ShardSpec]:
        """Every shard of the plan, in order."""
        return [self.shard(i) for i in range(self.n_shards)]

    def layers(self, kind: str = "resid_post") -> list[int]:
        """The layers collected for site kind ``kind``."""
        return [int(s.rsplit(".", 1)[1]) for s in self.sites if s.rsplit(".", 1)[0] == kind]


@dataclass(frozen=True)
class ShardSpec:
    """One shard of a collection: dataset rows ``[start, stop)``. A shard is a pure function of it."""

    index: int
    start: int
    stop: int

    @property
    def name(self) -> str:
        """The shard's file name."""
        return f"shard-{self.index:05d}.safetensors"


def shard_meta(manifest: ActivationManifest, spec: ShardSpec) -> dict[str, object]:
    """The header a shard file carries: enough to tell that it belongs to ``manifest``'s plan."""
    return {
        "index": spec.index,
        "start": spec.start,
        "stop": spec.stop,
        "dataset_digest": manifest.dataset_digest,
        "model": manifest.model,
        "sites": manifest.sites,
        "positions": manifest.positions,
    }


def write_shard(folder: Path, manifest: ActivationManifest, spec: ShardSpec, values: dict[str, Tensor]) -> Path:
    """Write one shard atomically (the tensors ``[stop - start, d]`` per site)."""
    from mechscope.storage.tensors import save_tensors

    missing = [site for site in manifest.sites if site not in values]
    if missing:
        raise InputError(f"shard {spec.index} has no values for {missing[0]}")
    return save_tensors(
        folder / spec.name, values, kind=KIND, meta=shard_meta(manifest, spec), schema_version=SCHEMA_VERSION
    )


def shard_done(folder: Path, manifest: ActivationManifest, spec: ShardSpec) -> bool:
    """Whether ``folder`` holds shard ``spec`` of this plan (a file of another plan raises)."""
    path = folder / spec.name
    if not path.is_file():
        return False
    kind, _, meta = read_header(path, what="activation shard")
    if kind != KIND or meta != shard_meta(manifest, spec):
        raise InputError(f"'{path}' belongs to another collection; remove it or collect into a new folder")
    return True


def read_manifest(folder: str | os.PathLike[str]) -> ActivationManifest:
    """The manifest of a collection folder.

    Raises:
        InputError: no such folder, no manifest, or a manifest that does not parse.
    """
    path = Path(folder) / MANIFEST
    if not Path(folder).is_dir():
        raise InputError(f"no activation folder at '{folder}'; write one with mechscope circuit collect")
    if not path.is_file():
        raise InputError(f"'{folder}' holds no {MANIFEST}; it is not a folder mechscope circuit collect wrote")
    try:
        return ActivationManifest.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, ValidationError) as error:
        first = str(error).splitlines()[0]
        raise InputError(f"'{path}' is not a valid activation manifest ({first})") from None


def write_manifest(folder: Path, manifest: ActivationManifest) -> None:
    """Write ``manifest.json`` atomically."""
    atomic_write_text(folder / MANIFEST, manifest.model_dump_json(indent=1) + "\n")


class ActivationSet:
    """A finished collection folder: the manifest, the prompts, and each site's features on demand.

    Examples:
        >>> import tempfile
        >>> import mechscope as ms
        >>> from mechscope.probing.collect import collect
        >>> from mechscope.probing.dataset import tool_prompt_dataset
        >>> acts = collect(ms.load("toy"), tool_prompt_dataset(per_tool=2), tempfile.mkdtemp(), progress=False)
        >>> acts.features("resid_post.2").shape, len(acts.labels())
        ((32, 128), 32)
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        """Open ``folder``; every shard of the plan must be there.

        Raises:
            InputError: the folder, manifest or dataset is missing or invalid, or a shard is missing.
        """
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        self.dataset = PromptDataset.load(self.folder / DATASET)
        if self.dataset.digest() != self.manifest.dataset_digest:
            raise InputError(f"'{self.folder / DATASET}' is not the dataset these activations were collected on")
        missing = [s.name for s in self.manifest.shards() if not shard_done(self.folder, self.manifest, s)]
        if missing:
            raise InputError(
                f"'{self.folder}' misses {len(missing)} of {self.manifest.n_shards} shards (first: {missing[0]}); "
                "rerun mechscope circuit collect with the same arguments to finish it"
            )

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> ActivationSet:
        """Open a finished collection folder (see the class)."""
        return cls(folder)

    @property
    def sites(self) -> list[str]:
        """The sites collected."""
        return list(self.manifest.sites)

    def site(self, layer: int, kind: str = "resid_post") -> str:
        """The site string for ``layer`` (negative counts from the end of the collected layers).

        Raises:
            InputError: the layer was not collected.
        """
        layers = self.manifest.layers(kind)
        if not layers:
            raise InputError(f"no {kind} sites were collected; collected: {', '.join(self.sites)}")
        if -len(layers) <= layer < 0:
            layer = layers[layer]
        name = f"{kind}.{layer}"
        if name not in self.manifest.sites:
            raise InputError(f"layer {layer} was not collected; {kind} layers here: {layers[0]}..{layers[-1]}")
        return name

    def features(self, site: str) -> np.ndarray:
        """``[n_prompts, d]`` float32 features of ``site``, read shard by shard."""
        from safetensors import safe_open

        if site not in self.manifest.sites:
            raise InputError(f"site {site} was not collected; collected: {', '.join(self.manifest.sites)}")
        out = np.empty((self.manifest.n_prompts, self.manifest.d_model), dtype=np.float32)
        for spec in self.manifest.shards():
            try:
                with safe_open(str(self.folder / spec.name), framework="pt") as handle:
                    out[spec.start : spec.stop] = handle.get_tensor(site).float().numpy()
            except (OSError, RuntimeError) as error:
                raise StoredFileError(f"'{self.folder / spec.name}' is unreadable ({error}); collect again") from None
        return out

    def labels(self) -> list[int]:
        """The prompts' labels, in row order."""
        return self.dataset.labels()

    def sub_labels(self) -> list[str]:
        """The prompts' sub-labels, in row order."""
        return self.dataset.sub_labels()

    def groups(self) -> list[str]:
        """The prompts' template ids, in row order (the groups of held-out evaluation)."""
        return self.dataset.templates()
