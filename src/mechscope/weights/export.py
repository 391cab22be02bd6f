"""The weight table: one row per checkpoint tensor, written as CSV, JSONL or Parquet, and checked.

Columns are exactly `COLUMNS` (the seed system's), plus `SPECTRAL_COLUMNS` when spectral measures were
asked for. Rows are sorted by numeric ``layer_index``; tensors outside the layer stack (embeddings, final
norm, unembedding) come last; ties keep checkpoint order.

Missing values: ``layer_index`` is empty for tensors outside the layer stack, and a spectral measure that
is undefined (e.g. ``alpha`` with too few eigenvalues) is empty. A tensor holding NaN or inf has
``rank = -1`` and empty ``mean`` / ``std`` / ``var``. "Empty" is an empty field in CSV and ``null`` in JSONL
and Parquet; every other column always has a value. Files are written atomically (a temporary file in the
same folder, then a rename), so a reader never sees half a table.
"""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from mechscope.errors import ExportValidationError, WeightFileError
from mechscope.weights.blocks import BLOCK_TYPES
from mechscope.weights.stats import SPECTRAL_COLUMNS

#: The columns of the weight table, in order (the seed system's CSV header).
COLUMNS: tuple[str, ...] = (
    "model_path",
    "model_id",
    "revision",
    "param_name",
    "layer_index",
    "block_type",
    "shape",
    "rows",
    "cols",
    "rank",
    "mean",
    "std",
    "var",
    "sparsity",
    "dtype",
    "created_at",
)
#: Table formats, by name.
TABLE_FORMATS: tuple[str, ...] = ("csv", "jsonl", "parquet")

_INT_COLUMNS = frozenset({"layer_index", "rows", "cols", "rank"})
_FLOAT_COLUMNS = frozenset({"mean", "std", "var", "sparsity", *SPECTRAL_COLUMNS})
# Columns that may be empty; mean/std/var only on rows with rank -1 (non-finite tensors).
_OPTIONAL = frozenset({"layer_index", *SPECTRAL_COLUMNS})
_NON_FINITE_OPTIONAL = frozenset({"mean", "std", "var"})


class ParamRow(BaseModel):
    """One row of the weight table (see the module docstring for missing values)."""

    model_config = ConfigDict(frozen=True)

    model_path: str
    model_id: str
    revision: str
    param_name: str
    layer_index: int | None
    block_type: str
    shape: str
    rows: int
    cols: int
    rank: int
    mean: float | None
    std: float | None
    var: float | None
    sparsity: float
    dtype: str
    created_at: str
    top_singular_value: float | None = None
    frobenius_norm: float | None = None
    stable_rank: float | None = None
    effective_rank: float | None = None
    condition_number: float | None = None
    alpha: float | None = None

    @field_validator("block_type")
    @classmethod
    def _known_block(cls, value: str) -> str:
        if value not in BLOCK_TYPES:
            raise ValueError(f"block_type {value!r} is not one of {BLOCK_TYPES}")
        return value

    @field_validator("mean", "std", "var", *SPECTRAL_COLUMNS)
    @classmethod
    def _finite_or_none(cls, value: float | None) -> float | None:
        # NaN / inf become missing: JSON has no NaN, and all three formats must carry the same rows.
        return None if value is None or not math.isfinite(value) else value


def columns(spectral: bool) -> tuple[str, ...]:
    """The table's columns, with or without the spectral ones."""
    return COLUMNS + SPECTRAL_COLUMNS if spectral else COLUMNS


def format_from_path(path: Path, fmt: str | None = None) -> str:
    """``fmt`` if given, else the format that ``path``'s suffix names (CSV by default)."""
    chosen = fmt or {".jsonl": "jsonl", ".parquet": "parquet", ".pq": "parquet"}.get(path.suffix.lower(), "csv")
    if chosen not in TABLE_FORMATS:
        raise WeightFileError(f"unknown table format '{chosen}'; use one of {', '.join(TABLE_FORMATS)}")
    return chosen


def sort_rows(rows: Iterable[ParamRow]) -> list[ParamRow]:
    """Rows by numeric layer index, non-layer rows last; ties keep their order (``sorted`` is stable)."""
    return sorted(rows, key=lambda row: (row.layer_index is None, row.layer_index or 0))


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(temporary_path)`` and rename the result onto ``path``; nothing is left on failure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(Path(temporary))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _records(rows: Sequence[ParamRow], names: tuple[str, ...]) -> list[dict[str, Any]]:
    return [row.model_dump(include=set(names)) for row in rows]


def write_table(rows: Sequence[ParamRow], path: Path, fmt: str, *, spectral: bool = False) -> Path:
    """Write ``rows`` (already sorted) to ``path`` in ``fmt``, atomically.

    Args:
        rows: The table rows, in the order they should appear.
        path: Destination file; its folder is created.
        fmt: ``"csv"``, ``"jsonl"`` or ``"parquet"``.
        spectral: Include the spectral columns.

    Returns:
        ``path``.
    """
    names = columns(spectral)
    records = _records(rows, names)
    if fmt == "csv":

        def write(temporary: Path) -> None:
            with temporary.open("w", newline="", encoding="utf-8") as handle:
                writer = csv.DictWriter(handle, fieldnames=names)
                writer.writeheader()
                for record in records:
                    writer.writerow({key: "" if value is None else value for key, value in record.items()})

    elif fmt == "jsonl":

        def write(temporary: Path) -> None:
            with temporary.open("w", encoding="utf-8") as handle:
                for record in records:
                    handle.write(json.dumps({key: record[key] for key in names}, allow_nan=False) + "\n")

    elif fmt == "parquet":
        pa, pq = _pyarrow()
        schema = pa.schema([(name, _arrow_type(pa, name)) for name in names])
        table = pa.Table.from_pylist(records, schema=schema)

        def write(temporary: Path) -> None:
            pq.write_table(table, temporary)

    else:
        raise WeightFileError(f"unknown table format '{fmt}'; use one of {', '.join(TABLE_FORMATS)}")
    atomic_write(path, write)
    return path


def _pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise WeightFileError("Parquet output needs pyarrow: pip install 'mechscope[weights]'") from None
    return pa, pq


def _arrow_type(pa: Any, name: str) -> Any:
    if name in _INT_COLUMNS:
        return pa.int64()
    if name in _FLOAT_COLUMNS:
        return pa.float64()
    return pa.string()


def read_table(path: Path, fmt: str | None = None) -> tuple[list[str], list[dict[str, Any]]]:
    """Read a weight table back: its column names and its rows, typed, with None for missing values."""
    fmt = format_from_path(path, fmt)
    if fmt == "parquet":
        _, pq = _pyarrow()
        table = pq.read_table(path)
        return list(table.column_names), table.to_pylist()
    if fmt == "jsonl":
        with path.open(encoding="utf-8") as handle:
            rows = [json.loads(line) for line in handle if line.strip()]
        header = list(rows[0]) if rows else []
        return header, rows
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = list(reader.fieldnames or [])
        return header, [{key: _parse_csv(key, value) for key, value in row.items()} for row in reader]


def _parse_csv(name: str | None, value: str | None) -> Any:
    if value is None or value == "":
        return None
    if name in _INT_COLUMNS:
        return int(value)
    if name in _FLOAT_COLUMNS:
        return float(value)
    return value


def validate_table(path: Path, fmt: str | None, *, expected_names: Sequence[str], spectral: bool) -> int:
    """Check a written table: exact columns, one row per checkpoint tensor, no missing required values.

    Args:
        path: The table file.
        fmt: Its format (None: from the suffix).
        expected_names: The checkpoint's tensor names (each must appear exactly once, nothing else).
        spectral: Whether the spectral columns are expected.

    Returns:
        The number of rows.

    Raises:
        ExportValidationError: the first problem found, in one line naming the file.
    """
    try:
        header, rows = read_table(path, fmt)
    except (OSError, ValueError, KeyError) as error:
        raise ExportValidationError(f"{path} cannot be read back ({type(error).__name__}: {error})") from None
    expected_columns = list(columns(spectral))
    if header != expected_columns:
        missing = [c for c in expected_columns if c not in header]
        extra = [c for c in header if c not in expected_columns]
        raise ExportValidationError(
            f"{path} has the wrong columns (missing {missing}, unexpected {extra}, or out of order); rerun the analysis"
        )
    if len(rows) != len(expected_names):
        raise ExportValidationError(
            f"{path} has {len(rows)} rows but the checkpoint has {len(expected_names)} tensors; rerun the analysis"
        )
    seen = [row["param_name"] for row in rows]
    if sorted(seen) != sorted(expected_names):
        wrong = sorted(set(seen) ^ set(expected_names))[:3] or ["a duplicated name"]
        raise ExportValidationError(f"{path} does not list each checkpoint tensor once (e.g. {wrong}); rerun")
    for number, row in enumerate(rows, start=1):
        for name in expected_columns:
            if row.get(name) is not None or name in _OPTIONAL:
                continue
            if name in _NON_FINITE_OPTIONAL and row.get("rank") == -1:
                continue
            raise ExportValidationError(f"{path} row {number} ({row.get('param_name')}) has no '{name}'; rerun")
    layers = [row["layer_index"] for row in rows]
    ordered = [layer for layer in layers if layer is not None]
    if ordered != sorted(ordered) or None in layers[: len(ordered)]:
        raise ExportValidationError(f"{path} is not sorted by layer_index with non-layer rows last; rerun")
    return len(rows)
