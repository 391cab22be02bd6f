"""Result types of a base-vs-fine-tuned weight diff: plain, serialisable values that check themselves.

A `WeightDiff` holds one `ParamDiff` per tensor plus per-layer and per-block summaries; it never holds a
tensor, so it round-trips through JSON (``model_dump_json`` / ``model_validate_json``) and the HTML report
needs nothing else. A relative change is infinite when a tensor that was exactly zero in the base changed;
JSON writes that as the string ``"Infinity"`` and reads it back.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field, model_validator

from mechscope.weights.matrix_view import matrix_dims

_RESULT_CONFIG = ConfigDict(ser_json_inf_nan="strings")


class ParamDiff(BaseModel):
    """How one tensor changed from the base to the fine-tuned checkpoint.

    Attributes:
        param_name: the tensor's name in both checkpoints.
        layer_index: the decoder layer it belongs to (None for embeddings, final norm, unembedding ...).
        block_type: embedding, q_proj, ..., mlp_down, norm, output or other (`mechscope.weights.blocks`).
        shape: the tensor's shape.
        base_dtype: the base tensor's stored dtype.
        finetuned_dtype: the fine-tuned tensor's stored dtype.
        base_norm: Frobenius norm of the base tensor A.
        finetuned_norm: Frobenius norm of the fine-tuned tensor B.
        diff_norm: Frobenius norm of B - A.
        relative_change: ``diff_norm / base_norm``; 0 when both are 0, infinite when only A is 0.
        cosine: cosine similarity of the flattened A and B; 1 when both are 0, 0 when only one is.
        rank: numerical rank of B - A (see `mechscope.weights.diff.tensor_diff` for the tolerance).
        effective_rank: ``exp`` of the entropy of the normalised singular values of B - A (0 when B == A).
        top_singular_values: the largest singular values of B - A, descending (empty for 0-D and 1-D tensors).
    """

    model_config = _RESULT_CONFIG

    param_name: str
    layer_index: int | None
    block_type: str
    shape: tuple[int, ...]
    base_dtype: str
    finetuned_dtype: str
    base_norm: float = Field(ge=0.0)
    finetuned_norm: float = Field(ge=0.0)
    diff_norm: float = Field(ge=0.0)
    relative_change: float = Field(ge=0.0)
    cosine: float = Field(ge=-1.0, le=1.0)
    rank: int = Field(ge=0)
    effective_rank: float = Field(ge=0.0)
    top_singular_values: list[float]

    @property
    def numel(self) -> int:
        """Number of elements of the tensor."""
        return math.prod(self.shape)

    @model_validator(mode="after")
    def _consistent(self) -> ParamDiff:
        if self.diff_norm == 0.0 and self.rank != 0:
            raise ValueError(f"{self.param_name}: an unchanged tensor must have rank 0")
        if self.rank > min(matrix_dims(self.shape)):
            raise ValueError(f"{self.param_name}: rank {self.rank} exceeds the matrix shape {self.shape}")
        return self


class GroupSummary(BaseModel):
    """Relative change over a group of tensors (one layer, or one block type).

    Attributes:
        n_tensors: tensors in the group.
        numel: elements in the group.
        mean_relative_change: mean of the tensors' relative changes.
        max_relative_change: the largest relative change in the group.
        most_changed: the tensor with that largest relative change.
        pooled_relative_change: ``sqrt(sum ||B-A||^2) / sqrt(sum ||A||^2)`` over the group, i.e. the relative
            change of the group seen as one long vector (large tensors weigh more than in the mean).
    """

    model_config = _RESULT_CONFIG

    n_tensors: int = Field(ge=1)
    numel: int = Field(ge=0)
    mean_relative_change: float = Field(ge=0.0)
    max_relative_change: float = Field(ge=0.0)
    most_changed: str
    pooled_relative_change: float = Field(ge=0.0)

    @classmethod
    def _fields_from(cls, params: list[ParamDiff]) -> dict[str, Any]:
        top = max(params, key=lambda p: p.relative_change)
        base_sq = sum(p.base_norm**2 for p in params)
        diff_sq = sum(p.diff_norm**2 for p in params)
        return {
            "n_tensors": len(params),
            "numel": sum(p.numel for p in params),
            "mean_relative_change": sum(p.relative_change for p in params) / len(params),
            "max_relative_change": top.relative_change,
            "most_changed": top.param_name,
            "pooled_relative_change": _ratio(math.sqrt(diff_sq), math.sqrt(base_sq)),
        }


class LayerSummary(GroupSummary):
    """The change of all tensors of one decoder layer."""

    layer_index: int


class BlockSummary(GroupSummary):
    """The change of all tensors of one block type, over all layers."""

    block_type: str


class WeightDiff(BaseModel):
    """A base checkpoint compared tensor by tensor with a fine-tuned one of the same architecture.

    Attributes:
        base: the base checkpoint as given (path or hub id).
        finetuned: the fine-tuned checkpoint as given.
        top_k: how many singular values of each difference were kept.
        rank_rtol: the relative rank tolerance used (None: numpy ``matrix_rank``'s default rule).
        created_at: when the diff was computed (ISO 8601, UTC).
        params: one entry per tensor, in the base checkpoint's order.
        layers: one summary per decoder layer, by layer index.
        blocks: one summary per block type, by name.
    """

    model_config = _RESULT_CONFIG

    schema_version: Literal[1] = 1
    base: str
    finetuned: str
    top_k: int = Field(ge=1)
    rank_rtol: float | None
    created_at: str
    params: list[ParamDiff]
    layers: list[LayerSummary]
    blocks: list[BlockSummary]

    @classmethod
    def build(cls, params: list[ParamDiff], **fields: Any) -> WeightDiff:
        """A `WeightDiff` with its layer and block summaries computed from ``params``."""
        by_layer: dict[int, list[ParamDiff]] = defaultdict(list)
        by_block: dict[str, list[ParamDiff]] = defaultdict(list)
        for param in params:
            if param.layer_index is not None:
                by_layer[param.layer_index].append(param)
            by_block[param.block_type].append(param)
        layers = [LayerSummary(layer_index=i, **GroupSummary._fields_from(by_layer[i])) for i in sorted(by_layer)]
        blocks = [BlockSummary(block_type=b, **GroupSummary._fields_from(by_block[b])) for b in sorted(by_block)]
        return cls(params=params, layers=layers, blocks=blocks, **fields)

    @model_validator(mode="after")
    def _unique_names(self) -> WeightDiff:
        names = [p.param_name for p in self.params]
        if len(set(names)) != len(names):
            raise ValueError("every tensor must appear once in params")
        return self

    @property
    def identical(self) -> bool:
        """Whether every tensor of the fine-tuned checkpoint equals the base exactly."""
        return all(p.diff_norm == 0.0 for p in self.params)

    def ranked_params(self, n: int | None = None) -> list[ParamDiff]:
        """The ``n`` most-changed tensors (all when None), by relative change, then by norm of the difference."""
        ranked = sorted(self.params, key=lambda p: (-p.relative_change, -p.diff_norm, p.param_name))
        return ranked if n is None else ranked[:n]

    def ranked_layers(self, n: int | None = None) -> list[LayerSummary]:
        """The ``n`` most-changed layers (all when None), by pooled relative change, then by mean.

        Pooled, because it weighs each tensor by its size and stays finite when one small tensor that was
        zero in the base changed (its own relative change is infinite, and so is its layer's mean).
        """
        ranked = sorted(self.layers, key=lambda s: (-s.pooled_relative_change, -s.mean_relative_change))
        return ranked if n is None else ranked[:n]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def most_changed_params(self) -> list[str]:
        """Every tensor name, most-changed first (written to JSON for readers without this class)."""
        return [p.param_name for p in self.ranked_params()]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def most_changed_layers(self) -> list[int]:
        """Every layer index, most-changed first."""
        return [s.layer_index for s in self.ranked_layers()]

    def layer_block_changes(self) -> dict[tuple[int, str], float]:
        """Pooled relative change of each (layer, block type) pair present in the checkpoint."""
        cells: dict[tuple[int, str], list[ParamDiff]] = defaultdict(list)
        for param in self.params:
            if param.layer_index is not None:
                cells[(param.layer_index, param.block_type)].append(param)
        return {key: GroupSummary._fields_from(group)["pooled_relative_change"] for key, group in cells.items()}

    def rows(self) -> list[dict[str, Any]]:
        """One flat row per tensor for CSV / JSONL / Parquet, by layer index with non-layer tensors last."""
        ordered = sorted(
            enumerate(self.params),
            key=lambda item: (item[1].layer_index is None, item[1].layer_index or 0, item[0]),
        )
        return [_row(self, param) for _, param in ordered]


ROW_COLUMNS: tuple[str, ...] = (
    "base",
    "finetuned",
    "param_name",
    "layer_index",
    "block_type",
    "shape",
    "rows",
    "cols",
    "base_dtype",
    "finetuned_dtype",
    "base_norm",
    "finetuned_norm",
    "diff_norm",
    "relative_change",
    "cosine",
    "rank",
    "effective_rank",
    "top_singular_values",
)
"""The columns of an exported diff, in order."""


def _row(result: WeightDiff, param: ParamDiff) -> dict[str, Any]:
    rows, cols = matrix_dims(param.shape)
    values = param.model_dump()
    values.update(
        base=result.base,
        finetuned=result.finetuned,
        shape=str(tuple(param.shape)),
        rows=rows,
        cols=cols,
    )
    return {column: values[column] for column in ROW_COLUMNS}


def _ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator`` with 0/0 = 0 and x/0 = inf (a change of a tensor that was zero)."""
    if denominator > 0.0:
        return numerator / denominator
    return 0.0 if numerator == 0.0 else math.inf
