"""Write a `WeightDiff`'s per-tensor rows as CSV, JSONL or Parquet, chosen by the file's suffix.

Rows come from `WeightDiff.rows` (sorted by layer index, non-layer tensors last; columns
`mechscope.weights.diff_results.ROW_COLUMNS`) and are written by `mechscope.storage.tables`. In CSV a
missing layer index is an empty cell and the top singular values are a JSON list; in JSONL an infinite
relative change is the string ``"Infinity"``, as in the result's own JSON; Parquet keeps the list as a list
column and the infinity as a float. Any suffix other than ``.csv``, ``.jsonl`` or ``.parquet`` (``.pq``) is
refused with an `InputError`.
"""

from __future__ import annotations

from pathlib import Path

from mechscope.storage.tables import ArrowType, table_format, write_table
from mechscope.weights.diff_results import ROW_COLUMNS, WeightDiff

__all__ = ["table_format", "write_diff_table"]

#: Parquet column types of the diff table.
_TYPES: dict[str, ArrowType] = {
    "layer_index": "int",
    "rows": "int",
    "cols": "int",
    "rank": "int",
    "base_norm": "float",
    "finetuned_norm": "float",
    "diff_norm": "float",
    "relative_change": "float",
    "cosine": "float",
    "effective_rank": "float",
    "top_singular_values": "float_list",
}


def write_diff_table(result: WeightDiff, path: Path) -> Path:
    """Write one row per tensor to ``path`` (atomically: a temporary file renamed at the end)."""
    path = Path(path)
    table_format(path)  # a bad suffix fails before any folder is created
    path.parent.mkdir(parents=True, exist_ok=True)
    write_table(path, result.rows(), ROW_COLUMNS, types=_TYPES)
    return path
