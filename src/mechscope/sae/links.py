"""Which SAE features point along a known vector: cosines with directions, probe weights, concept lenses.

A feature has two vectors: its decoder row ``W_dec[i]`` (what it writes to the site) and its encoder column
``W_enc[:, i]`` (what it reads). `feature_cosines` ranks the features of an SAE by ``|cosine|`` between
either of them and each of a set of named vectors (a steering `Direction`'s vector, a probe's weights, a
concept lens's column: the caller loads them; this module takes plain tensors, so the ``sae`` package imports
no other analysis). `cosine_matrix` is every cosine at once, `max_cosine` the best feature of one vector.

Cosines are computed in float32, in chunks of features, so an SAE of 100K+ features never needs a second
float32 copy of its weights. A feature whose row (or column) is all zeros (a dead feature) has cosine 0.

Examples:
    >>> import torch
    >>> from mechscope.sae import SAE
    >>> sae = SAE.random(d_in=8, d_sae=32, site="resid_post.1", k=4, seed=0)
    >>> links = feature_cosines(sae, {"f5": 3 * sae.W_dec[5].detach()}, top=3)
    >>> links.vectors[0].decoder[0].feature, round(links.vectors[0].decoder[0].cosine, 4)
    (5, 1.0)
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import pairwise
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, Field, model_validator
from torch import Tensor

from mechscope.errors import InputError
from mechscope.sae.model import SAE

Side = Literal["decoder", "encoder"]
#: Features per chunk of the cosine product (bounds the float32 copy of a bfloat16 SAE's weights).
CHUNK = 16384
_SLACK = 1e-5  # float32 rounding may put a cosine of a vector with itself a hair above 1


class FeatureCosine(BaseModel):
    """One feature and the cosine between its decoder row (or encoder column) and a vector."""

    feature: int = Field(ge=0)
    cosine: float = Field(ge=-1.0 - _SLACK, le=1.0 + _SLACK)


class VectorLinks(BaseModel):
    """The features nearest one named vector, by ``|cosine|``, largest first.

    Attributes:
        name: the vector's name (``direction:pirate``, ``lens:toy:dog`` ...).
        norm: the vector's norm.
        site: where the vector was read or is added, if known (cosines mean most at the SAE's own site).
        decoder: the features whose decoder rows are nearest, with their cosines.
        encoder: the same ranking for the encoder columns.
    """

    name: str
    norm: float = Field(gt=0.0)
    site: str | None = None
    decoder: list[FeatureCosine]
    encoder: list[FeatureCosine]

    @model_validator(mode="after")
    def _ranked(self) -> VectorLinks:
        for side, ranking in (("decoder", self.decoder), ("encoder", self.encoder)):
            magnitudes = [abs(item.cosine) for item in ranking]
            if any(a < b for a, b in pairwise(magnitudes)):
                raise ValueError(f"the {side} ranking of '{self.name}' is not sorted by |cosine|, largest first")
        if len(self.decoder) != len(self.encoder):
            raise ValueError(
                f"'{self.name}' ranks {len(self.decoder)} decoder and {len(self.encoder)} encoder features"
            )
        return self


class FeatureLinks(BaseModel):
    """For each named vector, the SAE's features nearest it (see `feature_cosines`).

    Attributes:
        site: the SAE's site.
        d_in: the SAE's width; d_sae: its number of features.
        top: features kept per vector and side (at most ``d_sae``).
        vectors: one entry per vector, in the order given.
    """

    site: str
    d_in: int = Field(ge=1)
    d_sae: int = Field(ge=1)
    top: int = Field(ge=1)
    vectors: list[VectorLinks]

    @model_validator(mode="after")
    def _consistent(self) -> FeatureLinks:
        names = [links.name for links in self.vectors]
        if len(set(names)) != len(names):
            raise ValueError("two vectors share a name; each vector needs its own")
        if self.top > self.d_sae or any(len(links.decoder) != self.top for links in self.vectors):
            raise ValueError(f"each vector ranks top={self.top} features (at most d_sae={self.d_sae})")
        return self

    def of(self, name: str) -> VectorLinks:
        """The links of the vector ``name``.

        Raises:
            InputError: no vector of that name.
        """
        for links in self.vectors:
            if links.name == name:
                return links
        raise InputError(f"no vector named '{name}'; these links have {', '.join(v.name for v in self.vectors)}")


def _stack(sae: SAE, vectors: Mapping[str, Any]) -> tuple[list[str], Tensor]:
    """The vectors as one float32 ``[n, d_in]`` matrix on the CPU, checked."""
    if not vectors:
        raise InputError("give at least one vector to compare the SAE's features with")
    names, rows = [], []
    for name, value in vectors.items():
        vector = torch.as_tensor(np.asarray(value) if not isinstance(value, Tensor) else value.detach())
        vector = vector.to(device="cpu", dtype=torch.float32).flatten()
        if vector.numel() != sae.config.d_in:
            raise InputError(
                f"vector '{name}' has {vector.numel()} entries; the SAE at {sae.site} reads {sae.config.d_in}-wide "
                "values (give a vector of the SAE's site)"
            )
        if not bool(torch.isfinite(vector).all()):
            raise InputError(f"vector '{name}' holds NaN or infinite entries; give a finite vector")
        if float(vector.norm()) == 0.0:
            raise InputError(f"vector '{name}' is all zeros; a cosine needs a nonzero vector")
        names.append(str(name))
        rows.append(vector)
    return names, torch.stack(rows)


def _cosines(sae: SAE, units: Tensor, side: Side) -> Tensor:
    """``[n, d_sae]`` cosines of the unit rows ``units`` with every feature's row (decoder) or column (encoder)."""
    weights = sae.W_dec if side == "decoder" else sae.W_enc.T
    out = torch.empty(units.shape[0], sae.d_sae, dtype=torch.float32)
    with torch.no_grad():
        for start in range(0, sae.d_sae, CHUNK):
            block = weights[start : start + CHUNK].detach().to(device="cpu", dtype=torch.float32)
            norms = block.norm(dim=1)
            dots = units @ block.T
            # dead features (zero rows) get cosine 0, not NaN
            out[:, start : start + CHUNK] = torch.where(norms > 0, dots / norms.clamp(min=1e-30), 0.0)
    return out


def cosine_matrix(sae: SAE, vectors: Tensor, *, side: Side = "decoder") -> Tensor:
    """Every cosine between ``vectors`` (``[n, d_in]`` or ``[d_in]``) and the features: ``[n, d_sae]`` float32.

    Args:
        side: ``"decoder"`` (rows of ``W_dec``) or ``"encoder"`` (columns of ``W_enc``).

    Raises:
        InputError: a vector of the wrong width, not finite or all zeros, or an unknown ``side``.
    """
    if side not in ("decoder", "encoder"):
        raise InputError(f"unknown side '{side}'; use decoder or encoder")
    matrix = vectors.reshape(1, -1) if vectors.dim() == 1 else vectors
    _, stacked = _stack(sae, {str(i): row for i, row in enumerate(matrix)})
    return _cosines(sae, stacked / stacked.norm(dim=1, keepdim=True), side)


def _ranking(cosines: Tensor, top: int) -> list[FeatureCosine]:
    order = torch.topk(cosines.abs(), top).indices
    return [FeatureCosine(feature=int(i), cosine=float(cosines[i])) for i in order]


def feature_cosines(
    sae: SAE,
    vectors: Mapping[str, Any],
    *,
    top: int = 10,
    sites: Mapping[str, str] | None = None,
) -> FeatureLinks:
    """Rank the SAE's features by ``|cosine|`` with each named vector, on the decoder and on the encoder.

    Args:
        sae: the SAE.
        vectors: name → vector (``[d_in]``: a tensor, array or list); flattened, so ``[heads, head_dim]``
            matches an SAE on ``head_out.L``.
        top: features kept per vector and side (capped at ``d_sae``).
        sites: name → where that vector lives, recorded in the result (a vector from another site or layer
            than the SAE's can still be compared, but its cosines are harder to read).

    Returns:
        A `FeatureLinks`, the vectors in the order given.

    Raises:
        InputError: no vectors, ``top`` below 1, or a vector of the wrong width, not finite or all zeros.
    """
    if top < 1:
        raise InputError(f"top must be at least 1, got {top}")
    names, stacked = _stack(sae, vectors)
    norms = stacked.norm(dim=1, keepdim=True)
    units = stacked / norms
    kept = min(top, sae.d_sae)
    decoder, encoder = _cosines(sae, units, "decoder"), _cosines(sae, units, "encoder")
    where = sites or {}
    links = [
        VectorLinks(
            name=name,
            norm=float(norms[i]),
            site=where.get(name),
            decoder=_ranking(decoder[i], kept),
            encoder=_ranking(encoder[i], kept),
        )
        for i, name in enumerate(names)
    ]
    return FeatureLinks(site=sae.site, d_in=sae.config.d_in, d_sae=sae.d_sae, top=kept, vectors=links)


def max_cosine(sae: SAE, vector: Any, *, side: Side = "decoder") -> FeatureCosine:
    """The feature with the largest ``|cosine|`` with ``vector`` (its signed cosine), over all features.

    Raises:
        InputError: a vector of the wrong width, not finite or all zeros, or an unknown ``side``.
    """
    tensor = vector.detach() if isinstance(vector, Tensor) else torch.as_tensor(np.asarray(vector))
    cosines = cosine_matrix(sae, tensor.flatten(), side=side)
    return _ranking(cosines[0], 1)[0]


__all__ = ["CHUNK", "FeatureCosine", "FeatureLinks", "VectorLinks", "cosine_matrix", "feature_cosines"]
__all__ += ["max_cosine"]
