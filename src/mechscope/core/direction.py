"""A direction in the residual stream: one vector for one site and layer, with its provenance.

`Direction` is shared by every analysis that finds or uses directions (steering, probing), so it lives in
the core; `mechscope.steering.directions` computes them from contrast sets. A direction is one safetensors
file whose header carries the layer, site, model, method and free metadata.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from mechscope.errors import ModelLoadError
from mechscope.models.registry import check_provenance
from mechscope.storage.tensors import load_tensors, save_tensors

if TYPE_CHECKING:
    from mechscope.core.lm import LanguageModel

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

    Examples:
        A direction from Paris to Tokyo at layer 1, saved with its provenance and read back for the same model:

        >>> import tempfile, torch, mechscope as ms
        >>> lm = ms.load("toy")
        >>> with lm.capture(["resid_post.1"], positions="last") as cache:
        ...     _ = lm.forward(["The capital of Japan is", "The capital of France is"])
        >>> vector = cache["resid_post.1"][0] - cache["resid_post.1"][1]
        >>> direction = Direction(vector, layer=1, model="toy", method="difference", meta={"prompts": 2})
        >>> direction.site_name, round(float(direction.unit().norm()), 4)
        ('resid_post.1', 1.0)
        >>> path = direction.save(Path(tempfile.mkdtemp()) / "tokyo.safetensors")
        >>> loaded = Direction.load(path, lm)  # checked: width, layer and the model it was computed on
        >>> loaded.method, loaded.meta, torch.equal(loaded.vector, vector)
        ('difference', {'prompts': 2}, True)
        >>> with lm.intervene({loaded.site_name: ms.ops.add(loaded.vector, positions="last")}):
        ...     lm.generate("The capital of France is", max_new_tokens=1)
        ' Tokyo'
        >>> Direction(vector, layer=4).check(lm)
        Traceback (most recent call last):
        ...
        mechscope.errors.ModelLoadError: the direction is for layer 4; the model has 4 layers
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
