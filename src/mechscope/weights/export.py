"""The weight table: one row per checkpoint tensor, written as CSV, JSONL or Parquet, and checked.

Columns are exactly `COLUMNS` (the seed system's), plus `SPECTRAL_COLUMNS` when spectral measures were
asked for. Rows are sorted by numeric ``layer_index``; tensors outside the layer stack (embeddings, final
norm, unembedding) come last; ties keep checkpoint order.

Missing values: ``layer_index`` is empty for tensors outside the layer stack, and a spectral measure that
is undefined (e.g. ``alpha`` with too few eigenvalues) is empty. A tensor holding NaN or inf has
``rank = -1`` and empty ``mean`` / ``std`` / ``var``. "Empty" is an empty field in CSV and ``null`` in JSONL
and Parquet; every other column always has a value. Tables are written by `mechscope.storage.tables`
(atomically: a temporary file in the same folder, then a rename), so a reader never sees half a table; the
format comes from the suffix (``.csv``, ``.jsonl``, ``.parquet``), and any other suffix is refused unless a
format is named.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from mechscope.errors import ExportValidationError
from mechscope.storage import tables
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
    """The table's columns, with or without the spectral ones.

    Examples:
        >>> len(columns(spectral=False)), columns(spectral=False)[-3:]
        (16, ('sparsity', 'dtype', 'created_at'))
        >>> columns(spectral=True)[16:]
        ('top_singular_value', 'frobenius_norm', 'stable_rank', 'effective_rank', 'condition_number', 'alpha')
    """
    return COLUMNS + SPECTRAL_COLUMNS if spectral else COLUMNS


def format_from_path(path: Path, fmt: str | None = None) -> str:
    """``fmt`` if given, else the format that ``path``'s suffix names.

    Examples:
        >>> format_from_path(Path("params.csv")), format_from_path(Path("params.pq"))
        ('csv', 'parquet')
        >>> format_from_path(Path("params.txt"), "jsonl")  # a format named wins over the suffix
        'jsonl'
        >>> format_from_path(Path("params.txt"))
        Traceback (most recent call last):
        ...
        mechscope.errors.InputError: cannot write a table to 'params.txt': use a .csv, .jsonl or .parquet file name

    Raises:
        InputError: an unknown format, or a suffix other than ``.csv``, ``.jsonl``, ``.parquet`` / ``.pq``.
    """
    return tables.table_format(path, fmt)


def sort_rows(rows: Iterable[ParamRow]) -> list[ParamRow]:
    """Rows by numeric layer index, non-layer rows last; ties keep their order (``sorted`` is stable).

    Examples:
        >>> import tempfile, torch
        >>> from safetensors.torch import save_file
        >>> from mechscope.weights.analyze import analyze_checkpoint
        >>> from mechscope.weights.reader import open_checkpoint
        >>> folder = Path(tempfile.mkdtemp())
        >>> weights = {"model.norm.weight": torch.ones(4), "model.layers.1.mlp.up_proj.weight": torch.eye(4)}
        >>> save_file(weights | {"model.layers.0.self_attn.q_proj.weight": torch.eye(4)}, folder / "model.safetensors")
        >>> with open_checkpoint(folder) as checkpoint:
        ...     rows, names = analyze_checkpoint(checkpoint, created_at="2026-01-01T00:00:00Z"), checkpoint.names()
        >>> [row.param_name for row in reversed(rows)]
        ['model.norm.weight', 'model.layers.1.mlp.up_proj.weight', 'model.layers.0.self_attn.q_proj.weight']
        >>> [(row.param_name, row.layer_index) for row in sort_rows(reversed(rows))]  # doctest: +NORMALIZE_WHITESPACE
        [('model.layers.0.self_attn.q_proj.weight', 0), ('model.layers.1.mlp.up_proj.weight', 1),
         ('model.norm.weight', None)]
    """
    return sorted(rows, key=lambda row: (row.layer_index is None, row.layer_index or 0))


def write_table(rows: Sequence[ParamRow], path: Path, fmt: str | None = None, *, spectral: bool = False) -> Path:
    """Write ``rows`` (already sorted) to ``path``, atomically.

    Args:
        rows: The table rows, in the order they should appear.
        path: Destination file; its folder is created.
        fmt: ``"csv"``, ``"jsonl"`` or ``"parquet"`` (None: from the suffix).
        spectral: Include the spectral columns.

    Returns:
        ``path``.

    Examples:
        >>> import tempfile, torch
        >>> from safetensors.torch import save_file
        >>> from mechscope.weights.analyze import analyze_checkpoint
        >>> from mechscope.weights.reader import open_checkpoint
        >>> folder = Path(tempfile.mkdtemp())
        >>> weights = {"model.norm.weight": torch.ones(4), "model.layers.1.mlp.up_proj.weight": torch.eye(4)}
        >>> save_file(weights | {"model.layers.0.self_attn.q_proj.weight": torch.eye(4)}, folder / "model.safetensors")
        >>> with open_checkpoint(folder) as checkpoint:
        ...     rows, names = analyze_checkpoint(checkpoint, created_at="2026-01-01T00:00:00Z"), checkpoint.names()
        >>> path = write_table(rows, folder / "out" / "params.csv")  # the folder "out" is created
        >>> lines = path.read_text().splitlines()
        >>> path.relative_to(folder), len(lines), lines[0].split(",")[3:6]  # a header and a line per tensor
        (PosixPath('out/params.csv'), 4, ['param_name', 'layer_index', 'block_type'])
    """
    names = columns(spectral)
    chosen = format_from_path(path, fmt)
    records = [row.model_dump(include=set(names)) for row in rows]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return tables.write_table(path, records, names, fmt=chosen, types={name: _arrow_type(name) for name in names})


def _arrow_type(name: str) -> tables.ArrowType:
    if name in _INT_COLUMNS:
        return "int"
    if name in _FLOAT_COLUMNS:
        return "float"
    return "string"


def read_table(path: Path, fmt: str | None = None) -> tuple[list[str], list[dict[str, Any]]]:
    """Read a weight table back: its column names and its rows, typed, with None for missing values.

    Examples:
        >>> import tempfile, torch
        >>> from safetensors.torch import save_file
        >>> from mechscope.weights.analyze import analyze_checkpoint
        >>> from mechscope.weights.reader import open_checkpoint
        >>> folder = Path(tempfile.mkdtemp())
        >>> weights = {"model.norm.weight": torch.ones(4), "model.layers.1.mlp.up_proj.weight": torch.eye(4)}
        >>> save_file(weights | {"model.layers.0.self_attn.q_proj.weight": torch.eye(4)}, folder / "model.safetensors")
        >>> with open_checkpoint(folder) as checkpoint:
        ...     rows, names = analyze_checkpoint(checkpoint, created_at="2026-01-01T00:00:00Z"), checkpoint.names()
        >>> header, back = read_table(write_table(rows, folder / "params.csv"))
        >>> header == list(columns(spectral=False)), [(row["layer_index"], row["rank"]) for row in back]
        (True, [(0, 4), (1, 4), (None, 1)])
    """
    chosen = format_from_path(path, fmt)
    header, rows = tables.read_table(path, chosen)
    if chosen == "csv":
        rows = [{key: _parse_csv(key, value) for key, value in row.items()} for row in rows]
    return header, rows


def _parse_csv(name: str | None, value: str | None) -> Any:
    if value is None or value == "":
        return None
    if name in _INT_COLUMNS:
        return int(value)
    if name in _FLOAT_COLUMNS:
        return float(value)
    return value


def validate_table(
    path: Path, fmt: str | None, *, expected_names: Sequence[str], spectral: bool, shown_as: Path | None = None
) -> int:
    """Check a written table: exact columns, one row per checkpoint tensor, no missing required values.

    Args:
        path: The table file.
        fmt: Its format (None: from the suffix).
        expected_names: The checkpoint's tensor names (each must appear exactly once, nothing else).
        spectral: Whether the spectral columns are expected.
        shown_as: The name errors give the table (a table validated aside, before it takes its final name).

    Returns:
        The number of rows.

    Examples:
        >>> import tempfile, torch
        >>> from safetensors.torch import save_file
        >>> from mechscope.weights.analyze import analyze_checkpoint
        >>> from mechscope.weights.reader import open_checkpoint
        >>> folder = Path(tempfile.mkdtemp())
        >>> weights = {"model.norm.weight": torch.ones(4), "model.layers.1.mlp.up_proj.weight": torch.eye(4)}
        >>> save_file(weights | {"model.layers.0.self_attn.q_proj.weight": torch.eye(4)}, folder / "model.safetensors")
        >>> with open_checkpoint(folder) as checkpoint:
        ...     rows, names = analyze_checkpoint(checkpoint, created_at="2026-01-01T00:00:00Z"), checkpoint.names()
        >>> path = write_table(rows, folder / "params.jsonl")
        >>> validate_table(path, None, expected_names=names, spectral=False)
        3
        >>> validate_table(path, None, expected_names=names, spectral=True)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        mechscope.errors.ExportValidationError: ...params.jsonl has the wrong columns (missing [...], unexpected [], ...

    Raises:
        ExportValidationError: the first problem found, in one line naming the file.
    """
    label = path if shown_as is None else shown_as
    try:
        header, rows = read_table(path, fmt)
    except (OSError, ValueError, KeyError) as error:
        raise ExportValidationError(f"{label} cannot be read back ({type(error).__name__}: {error})") from None
    expected_columns = list(columns(spectral))
    if header != expected_columns:
        missing = [c for c in expected_columns if c not in header]
        extra = [c for c in header if c not in expected_columns]
        raise ExportValidationError(
            f"{label} has the wrong columns (missing {missing}, unexpected {extra}, or out of order); "
            "rerun the analysis"
        )
    if len(rows) != len(expected_names):
        raise ExportValidationError(
            f"{label} has {len(rows)} rows but the checkpoint has {len(expected_names)} tensors; rerun the analysis"
        )
    seen = [row["param_name"] for row in rows]
    if sorted(seen) != sorted(expected_names):
        wrong = sorted(set(seen) ^ set(expected_names))[:3] or ["a duplicated name"]
        raise ExportValidationError(f"{label} does not list each checkpoint tensor once (e.g. {wrong}); rerun")
    for number, row in enumerate(rows, start=1):
        for name in expected_columns:
            if row.get(name) is not None or name in _OPTIONAL:
                continue
            if name in _NON_FINITE_OPTIONAL and row.get("rank") == -1:
                continue
            raise ExportValidationError(f"{label} row {number} ({row.get('param_name')}) has no '{name}'; rerun")
    layers = [row["layer_index"] for row in rows]
    ordered = [layer for layer in layers if layer is not None]
    if ordered != sorted(ordered) or None in layers[: len(ordered)]:
        raise ExportValidationError(f"{label} is not sorted by layer_index with non-layer rows last; rerun")
    return len(rows)
