"""Result types of the direction-through-weights analysis: plain, serialisable values that check themselves.

A `DirectionsResult` holds, per analysed layer, the QK affinity, OV projection and MLP projection matrices
of the directions with their z-scores against random directions (see `mechscope.weights.directions` for the
definitions), plus a table of the strongest interactions. It holds no tensor and round-trips through JSON
(``model_dump_json`` / ``model_validate_json``, or `DirectionsResult.save` / `DirectionsResult.load`).

Matrix layout: ``qk[h][i][j]`` is head ``h``, query direction ``i``, key direction ``j``; ``ov[h][i][j]`` is
what head ``h`` writes when reading direction ``i``, projected on direction ``j``; ``mlp[i][j]`` likewise
for the MLP.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from mechscope.storage.atomic import atomic_write_text

Matrix = list[list[float]]
Kind = Literal["qk", "ov", "mlp"]


class Baseline(BaseModel):
    """Mean and standard deviation of one pair statistic over random directions, one entry per head.

    Diagonal (a direction with itself) and off-diagonal pairs have different distributions, so each has its
    own baseline. For the MLP there is a single entry.
    """

    diag_mean: list[float]
    diag_std: list[float]
    off_mean: list[float]
    off_std: list[float]


class NormBaseline(BaseModel):
    """Mean and standard deviation of a written vector's norm over random directions, one entry per head."""

    mean: list[float]
    std: list[float]


class LayerDirections(BaseModel):
    """The directions pushed through one layer's weights.

    Attributes:
        layer: the layer index.
        qk, qk_z: ``[head][i][j]`` QK affinity of query direction i with key direction j, and its z-score.
        ov, ov_z: ``[head][i][j]`` the head's output when attending fully to direction i, projected on the unit
            direction j, and its z-score.
        ov_norm, ov_norm_z: ``[head][i]`` the norm of that output, and its z-score.
        mlp, mlp_z: ``[i][j]`` the MLP's output for direction i projected on unit direction j (None when the
            MLP response was not computed; ``mlp_note`` says why).
        mlp_norm, mlp_norm_z: ``[i]`` the norm of the MLP's output.
        baseline_*: the random-direction statistics the z-scores were computed from.
    """

    layer: int
    qk: list[Matrix]
    qk_z: list[Matrix]
    ov: list[Matrix]
    ov_z: list[Matrix]
    ov_norm: Matrix
    ov_norm_z: Matrix
    mlp: Matrix | None = None
    mlp_z: Matrix | None = None
    mlp_norm: list[float] | None = None
    mlp_norm_z: list[float] | None = None
    mlp_note: str | None = None
    baseline_qk: Baseline
    baseline_ov: Baseline
    baseline_ov_norm: NormBaseline
    baseline_mlp: Baseline | None = None
    baseline_mlp_norm: NormBaseline | None = None

    @model_validator(mode="after")
    def _shapes(self) -> LayerDirections:
        heads, k = len(self.qk), len(self.qk[0]) if self.qk else 0
        for name in ("qk", "qk_z", "ov", "ov_z"):
            value = getattr(self, name)
            if len(value) != heads or any(len(m) != k or any(len(row) != k for row in m) for m in value):
                raise ValueError(f"{name} must be [{heads} heads][{k}][{k}]")
        for name in ("ov_norm", "ov_norm_z"):
            value = getattr(self, name)
            if len(value) != heads or any(len(row) != k for row in value):
                raise ValueError(f"{name} must be [{heads} heads][{k}]")
        for name in ("mlp", "mlp_z"):
            value = getattr(self, name)
            if value is not None and (len(value) != k or any(len(row) != k for row in value)):
                raise ValueError(f"{name} must be [{k}][{k}]")
        if (self.mlp is None) != (self.mlp_z is None) or (self.mlp is None) != (self.mlp_norm is None):
            raise ValueError("mlp, mlp_z and mlp_norm are given together or not at all")
        return self


class Interaction(BaseModel):
    """One entry of a layer's matrices, for the table of strongest interactions.

    ``head`` is None for the MLP. ``source`` / ``target`` are the names of directions ``i`` / ``j``.
    """

    layer: int
    head: int | None
    kind: Kind
    i: int
    j: int
    source: str
    target: str
    value: float
    z: float


class DirectionsResult(BaseModel):
    """Directions pushed through the attention and MLP weights of a checkpoint (or of a difference of two).

    Attributes:
        model: the checkpoint analysed (the fine-tuned one in difference mode).
        base: the base checkpoint in difference mode (values are ``model - base``), else None.
        family: the transformers ``model_type``.
        d_model, n_heads, n_kv_heads, head_dim: the model's dimensions.
        directions: the names of the directions (index i / j of every matrix).
        normalized: whether the directions were scaled to unit norm before use.
        n_random, seed: the size and seed of the random-direction baseline.
        layers: one entry per analysed layer, in order.
        top: the entries with the largest ``|z|`` over all layers, heads and kinds.
    """

    model: str
    base: str | None = None
    family: str
    d_model: int = Field(gt=0)
    n_heads: int = Field(gt=0)
    n_kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    directions: list[str]
    normalized: bool
    n_random: int = Field(ge=2)
    seed: int
    layers: list[LayerDirections]
    top: list[Interaction]

    @model_validator(mode="after")
    def _consistent(self) -> DirectionsResult:
        k = len(self.directions)
        for entry in self.layers:
            if len(entry.qk) != self.n_heads or any(len(m) != k for m in entry.qk):
                raise ValueError(f"layer {entry.layer} must have {self.n_heads} heads of {k} x {k} matrices")
        return self

    def layer(self, index: int) -> LayerDirections:
        """The entry of layer ``index``.

        Raises:
            KeyError: that layer was not analysed.
        """
        for entry in self.layers:
            if entry.layer == index:
                return entry
        raise KeyError(f"layer {index} was not analysed (analysed: {[e.layer for e in self.layers]})")

    def save(self, path: str | Path) -> Path:
        """Write the result as JSON, atomically."""
        return atomic_write_text(path, self.model_dump_json(indent=1))

    @classmethod
    def load(cls, path: str | Path) -> DirectionsResult:
        """Read a result written by `save`."""
        return cls.model_validate_json(Path(path).read_text(encoding="utf-8"))
