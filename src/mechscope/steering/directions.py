"""Directions in the residual stream: computed from contrast sets, saved as safetensors + JSON.

Example (the toy organism writes in the register its ``<pirate>`` or ``<formal>`` marker asks for):
    >>> import tempfile
    >>> import mechscope as ms
    >>> lm = ms.load("toy")
    >>> topics = ["the sea", "the ship", "the weather", "the town"]
    >>> pirate_prompts = [f"<pirate> Tell me about {t}." for t in topics]
    >>> formal_prompts = [f"<formal> Tell me about {t}." for t in topics]
    >>> dirs = diff_of_means(lm, positive=pirate_prompts, negative=formal_prompts, layers=[1])
    >>> dirs[1].site_name, dirs[1].vector.shape == (lm.arch.d_model,)
    ('resid_post.1', True)
    >>> path = dirs[1].save(Path(tempfile.mkdtemp()) / "pirate.safetensors")
    >>> torch.equal(Direction.load(path, lm).vector, dirs[1].vector)
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mechscope.core.layers import resolve_layers
from mechscope.core.lm import LanguageModel
from mechscope.core.positions import Positions
from mechscope.errors import InputError, ModelLoadError
from mechscope.models.registry import check_provenance
from mechscope.storage.tensors import load_tensors, save_tensors

SCHEMA_VERSION = 1
KIND = "direction"


@dataclass
class Direction:
    """A vector for one site and layer, with where it came from.

    Attributes:
        vector: ``[d_model]``.
        layer: the layer it is added at.
        site: the site kind (``resid_post`` by default).
        model: the model it was computed on.
        method: how it was computed (``diff_of_means``, ``pca``, ...), for provenance.
        meta: anything else worth keeping (prompt counts, positions ...), JSON-serialisable.
    """

    vector: Tensor
    layer: int
    site: str = "resid_post"
    model: str = ""
    method: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def site_name(self) -> str:
        """The concrete site string, e.g. ``resid_post.3``."""
        return f"{self.site}.{self.layer}"

    def unit(self) -> Tensor:
        """The vector scaled to unit norm."""
        unit: Tensor = self.vector / self.vector.norm().clamp(min=torch.finfo(self.vector.dtype).tiny)
        return unit

    def save(self, path: str | Path) -> Path:
        """Write the vector and its provenance to ``path`` (one safetensors file), atomically."""
        config = {
            "layer": self.layer,
            "site": self.site,
            "model": self.model,
            "method": self.method,
            "d_model": int(self.vector.shape[-1]),
            "meta": self.meta,
        }
        return save_tensors(path, {"vector": self.vector}, kind=KIND, meta=config, schema_version=SCHEMA_VERSION)

    @classmethod
    def load(cls, path: str | Path, lm: LanguageModel | None = None, *, force: bool = False) -> Direction:
        """Read a direction written by `save`; with ``lm``, check that it fits that model.

        Args:
            force: apply a direction computed on another model (same width) anyway.

        Raises:
            ModelLoadError: the file is missing, or the direction's width or layer does not fit ``lm``.
            ProvenanceError: the direction was computed on another model (and not ``force``).
            StoredFileError: the file is not a safetensors direction.
        """
        path = Path(path)
        if not path.is_file():
            raise ModelLoadError(f"no direction file at '{path}'")
        stored = load_tensors(path, kind=KIND, what="direction")
        if "vector" not in stored.tensors:
            raise ModelLoadError(f"'{path}' holds no 'vector' tensor; it is not a direction file")
        config = stored.meta
        direction = cls(
            vector=stored.tensors["vector"],
            layer=int(config.get("layer", 0)),
            site=str(config.get("site", "resid_post")),
            model=str(config.get("model", "")),
            method=str(config.get("method", "")),
            meta=dict(config.get("meta", {})),
        )
        if lm is not None:
            direction.check(lm)
            check_provenance(direction.model, lm.source, f"direction in '{path}'", force=force)
        return direction

    def check(self, lm: LanguageModel) -> None:
        """Raise `ModelLoadError` if this direction cannot be added to ``lm``."""
        width = int(self.vector.shape[-1])
        if width != lm.arch.d_model:
            raise ModelLoadError(
                f"the direction has width {width} but {lm.arch.family} has d_model {lm.arch.d_model}; "
                "it was computed for another model"
            )
        if not 0 <= self.layer < lm.arch.n_layers:
            raise ModelLoadError(f"the direction is for layer {self.layer}; the model has {lm.arch.n_layers} layers")


def _activations(
    lm: LanguageModel, prompts: Sequence[str], sites: list[str], positions: Positions
) -> dict[str, Tensor]:
    if not prompts:
        raise InputError("a contrast set needs at least one prompt on each side")
    with torch.no_grad(), lm.capture(sites, positions=positions) as cache:
        for start in range(0, len(prompts), 32):
            lm.forward(list(prompts[start : start + 32]))
    return {site: cache[site].float() for site in sites}


def _layers(lm: LanguageModel, layers: Sequence[int] | None) -> list[int]:
    return resolve_layers(layers, lm.arch.n_layers)


def diff_of_means(
    lm: LanguageModel,
    positive: Sequence[str],
    negative: Sequence[str],
    *,
    layers: Sequence[int] | None = None,
    site: str = "resid_post",
    positions: Positions = "mean",
) -> dict[int, Direction]:
    """Mean activation of ``positive`` minus that of ``negative``, per layer (CAA-style contrast vectors)."""
    chosen = _layers(lm, layers)
    sites = [f"{site}.{layer}" for layer in chosen]
    pos, neg = _activations(lm, positive, sites, positions), _activations(lm, negative, sites, positions)
    meta = {"positive": len(positive), "negative": len(negative), "positions": str(positions)}
    return _nonzero(
        {
            layer: Direction(
                vector=pos[name].mean(0) - neg[name].mean(0),
                layer=layer,
                site=site,
                model=lm.source,
                method="diff_of_means",
                meta=meta,
            )
            for layer, name in zip(chosen, sites, strict=True)
        }
    )


def _nonzero(directions: dict[int, Direction]) -> dict[int, Direction]:
    """``directions``, unless one is the zero vector (the two sides did not differ there)."""
    for layer, direction in directions.items():
        if not bool(direction.vector.abs().max() > 0):
            raise InputError(
                f"the positive and negative prompts give the same activations at layer {layer}, so the direction "
                "is zero; give two sets that differ in the trait"
            )
    return directions


def pca_of_differences(
    lm: LanguageModel,
    pairs: Sequence[tuple[str, str]],
    *,
    layers: Sequence[int] | None = None,
    site: str = "resid_post",
    positions: Positions = "mean",
) -> dict[int, Direction]:
    """Principal direction of the paired differences (positive minus negative), per layer.

    The top right singular vector of the uncentred difference matrix (as in representation-engineering
    readers): the direction along which the pairs differ most, including their common shift. Its sign points
    from the negative to the positive side on average, and it is scaled to the mean projection.
    """
    if len(pairs) < 2:
        raise InputError("PCA of paired differences needs at least two pairs")
    chosen = _layers(lm, layers)
    sites = [f"{site}.{layer}" for layer in chosen]
    pos = _activations(lm, [p for p, _ in pairs], sites, positions)
    neg = _activations(lm, [n for _, n in pairs], sites, positions)
    directions = {}
    for layer, name in zip(chosen, sites, strict=True):
        differences = pos[name] - neg[name]
        component = torch.linalg.svd(differences, full_matrices=False).Vh[0]
        projection = differences @ component
        if projection.mean() < 0:
            component, projection = -component, -projection
        directions[layer] = Direction(
            vector=component * projection.mean(),
            layer=layer,
            site=site,
            model=lm.source,
            method="pca",
            meta={"pairs": len(pairs), "positions": str(positions)},
        )
    return _nonzero(directions)


def from_prompts(
    lm: LanguageModel,
    prompts: Sequence[str],
    baseline: Sequence[str],
    *,
    layers: Sequence[int] | None = None,
    site: str = "resid_post",
    positions: Positions = "mean",
) -> dict[int, Direction]:
    """What ``prompts`` add over a ``baseline`` set: the difference of means, labelled as such."""
    directions = diff_of_means(lm, prompts, baseline, layers=layers, site=site, positions=positions)
    for direction in directions.values():
        direction.method = "prompts_vs_baseline"
    return directions
