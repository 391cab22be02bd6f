"""Write a `WeightDiff`'s per-tensor rows as CSV, JSONL or Parquet, chosen by the file's suffix.

Rows come from `WeightDiff.rows` (sorted by layer index, non-layer tensors last; columns
`mechscope.weights.diff_results.ROW_COLUMNS`). In CSV a missing layer index is an empty cell and the top
singular values are a JSON list; in JSONL an infinite relative change is the string ``"Infinity"``, as in
the result's own JSON; Parquet keeps the list as a list column and the infinity as a float.
"""

from __future__ import annotations

import csv
import importlib
import json
import math
from pathlib import Path
from typing import Any

from mechscope.errors import InputError
from mechscope.weights.diff_results import ROW_COLUMNS, WeightDiff
from mechscope.weights.export import atomic_write

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".parquet": "parquet"}


def table_format(path: Path) -> str:
    """``"csv"``, ``"jsonl"`` or ``"parquet"`` from the suffix of ``path``; raises `InputError` otherwise."""
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise InputError(f"cannot write a table to {path}: use a .csv, .jsonl or .parquet file name")
    return fmt


def write_diff_table(result: WeightDiff, path: Path) -> Path:
    """Write one row per tensor to ``path`` (atomically: a temporary file renamed at the end)."""
    path = Path(path)
    fmt = table_format(path)
    rows = result.rows()
    writer = {"csv": _write_csv, "jsonl": _write_jsonl, "parquet": _write_parquet}[fmt]
    atomic_write(path, lambda temporary: writer(rows, temporary))
    return path


def _write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(ROW_COLUMNS))
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "top_singular_values": json.dumps(row["top_singular_values"])})


def _write_jsonl(rows: list[dict[str, Any]], path: Path) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            clean = {key: "Infinity" if isinstance(v, float) and math.isinf(v) else v for key, v in row.items()}
            handle.write(json.dumps(clean, allow_nan=False) + "\n")


def _write_parquet(rows: list[dict[str, Any]], path: Path) -> None:
    try:
        # Imported by name: pyarrow is optional and untyped, and this keeps mypy's view of it to Any.
        parquet = importlib.import_module("pyarrow.parquet")
        arrow = importlib.import_module("pyarrow")
    except ImportError:
        raise InputError("writing Parquet needs pyarrow; pip install pyarrow, or write .csv / .jsonl") from None
    columns = {column: [row[column] for row in rows] for column in ROW_COLUMNS}
    parquet.write_table(arrow.table(columns), path)
