"""Tables as CSV, JSONL or Parquet, chosen by the file's suffix, written atomically.

One writer for every table mechscope produces. Cells are plain values; ``None`` is a missing value (an
empty CSV cell, JSON ``null``, a Parquet null). Lists and dicts become JSON text in CSV. Non-finite
floats are written as ``"Infinity"``, ``"-Infinity"`` or ``"NaN"`` in JSONL (JSON has no such numbers).

Examples:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "t.csv"
    >>> _ = write_table(path, [{"a": 1, "b": None}], ["a", "b"])
    >>> path.read_text().splitlines()
    ['a,b', '1,']
"""

from __future__ import annotations

import csv
import importlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from mechscope.errors import InputError
from mechscope.storage.atomic import atomic_write

#: What each suffix writes.
TABLE_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
TABLE_FORMATS = ("csv", "jsonl", "parquet")

#: Column types a Parquet schema can be given (others are inferred by pyarrow).
ArrowType = Literal["int", "float", "string", "bool", "float_list"]


def table_format(path: str | os.PathLike[str], fmt: str | None = None) -> str:
    """``fmt`` if given, else the format ``path``'s suffix names.

    Examples:
        >>> from mechscope.storage.tables import table_format
        >>> table_format("scores.CSV"), table_format("runs.jsonl"), table_format("t.pq"), table_format("t.txt", "jsonl")
        ('csv', 'jsonl', 'parquet', 'jsonl')
        >>> table_format("scores.xlsx")
        Traceback (most recent call last):
        ...
        mechscope.errors.InputError: cannot write a table to 'scores.xlsx': use a .csv, .jsonl or .parquet file name

    Raises:
        InputError: an unknown format or suffix (nothing is guessed).
    """
    if fmt is not None:
        if fmt not in TABLE_FORMATS:
            raise InputError(f"unknown table format '{fmt}'; use one of {', '.join(TABLE_FORMATS)}")
        return fmt
    chosen = TABLE_SUFFIXES.get(Path(path).suffix.lower())
    if chosen is None:
        raise InputError(f"cannot write a table to '{path}': use a .csv, .jsonl or .parquet file name")
    return chosen


def write_table(
    path: str | os.PathLike[str],
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    *,
    fmt: str | None = None,
    types: Mapping[str, ArrowType] | None = None,
) -> Path:
    """Write ``rows`` (the ``columns`` of each, in order) to ``path`` atomically; returns the path.

    Examples:
        >>> import tempfile, pathlib
        >>> from mechscope.storage.tables import write_table
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> rows = [{"layer": 0, "accuracy": 0.5, "tags": ["a"]}, {"layer": 1, "accuracy": float("inf")}]
        >>> write_table(folder / "scores.csv", rows, ["layer", "accuracy", "tags"]).read_text().splitlines()
        ['layer,accuracy,tags', '0,0.5,"[""a""]"', '1,inf,']
        >>> write_table(folder / "scores.jsonl", rows, ["layer", "accuracy"]).read_text().splitlines()
        ['{"layer": 0, "accuracy": 0.5}', '{"layer": 1, "accuracy": "Infinity"}']

    Args:
        fmt: ``csv``, ``jsonl`` or ``parquet``; default from the suffix.
        types: Parquet column types (the rest are inferred); ignored by the text formats.
    """
    chosen = table_format(path, fmt)
    names = list(columns)
    if chosen == "parquet":
        pa, pq = pyarrow_modules()
        arrow = {"int": pa.int64(), "float": pa.float64(), "string": pa.string(), "bool": pa.bool_()}
        arrow["float_list"] = pa.list_(pa.float64())
        data = {name: [row.get(name) for row in rows] for name in names}
        known = types or {}
        table = pa.table({name: pa.array(data[name], type=arrow.get(known.get(name, ""))) for name in names})
        return atomic_write(path, lambda temporary: pq.write_table(table, temporary))
    writer = _write_csv if chosen == "csv" else _write_jsonl
    return atomic_write(path, lambda temporary: writer(temporary, rows, names))


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]], names: list[str]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(names)
        for row in rows:
            writer.writerow([_csv_cell(row.get(name)) for name in names])


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, list | tuple | dict):
        return json.dumps(value)
    return value


def _write_jsonl(path: Path, rows: Sequence[Mapping[str, Any]], names: list[str]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps({name: _json_cell(row.get(name)) for name in names}, allow_nan=False) + "\n")


def _json_cell(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def read_table(path: str | os.PathLike[str], fmt: str | None = None) -> tuple[list[str], list[dict[str, Any]]]:
    """A table's column names and rows. CSV cells come back as strings (``None`` where empty).

    Examples:
        >>> import tempfile, pathlib
        >>> from mechscope.storage.tables import read_table, write_table
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> rows = [{"layer": 0, "site": "resid_post.0"}, {"layer": 1, "site": None}]
        >>> read_table(write_table(folder / "t.csv", rows, ["layer", "site"]))
        (['layer', 'site'], [{'layer': '0', 'site': 'resid_post.0'}, {'layer': '1', 'site': None}])
        >>> read_table(write_table(folder / "t.parquet", rows, ["layer", "site"]))  # Parquet keeps the types
        (['layer', 'site'], [{'layer': 0, 'site': 'resid_post.0'}, {'layer': 1, 'site': None}])
    """
    source = Path(path)
    chosen = table_format(source, fmt)
    if chosen == "parquet":
        _, pq = pyarrow_modules()
        table = pq.read_table(source)
        return list(table.column_names), table.to_pylist()
    if chosen == "jsonl":
        with source.open(encoding="utf-8") as handle:
            rows = [json.loads(line) for line in handle if line.strip()]
        return (list(rows[0]) if rows else []), rows
    with source.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = list(reader.fieldnames or [])
        return header, [{key: (value if value != "" else None) for key, value in row.items()} for row in reader]


def pyarrow_modules() -> tuple[Any, Any]:
    """``(pyarrow, pyarrow.parquet)``, or a one-line error saying how to install them.

    Examples:
        >>> import tempfile, pathlib
        >>> from mechscope.storage.tables import pyarrow_modules, write_table
        >>> pa, pq = pyarrow_modules()
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "t.parquet"
        >>> _ = write_table(path, [{"n": None, "v": [1.0, 2.0]}], ["n", "v"], types={"n": "int", "v": "float_list"})
        >>> pq.read_schema(path).types == [pa.int64(), pa.list_(pa.float64())]
        True
    """
    try:
        # Imported by name: pyarrow is optional and untyped, and this keeps mypy's view of it to Any.
        return importlib.import_module("pyarrow"), importlib.import_module("pyarrow.parquet")
    except ImportError:
        raise InputError(
            "Parquet tables need pyarrow: pip install 'mechscope[weights]', or write .csv/.jsonl"
        ) from None
