"""HDF5 files (h5py): open with a one-line error for a corrupt file, and change a file by swapping a copy.

HDF5 is not crash-safe: a process killed while it writes can leave a file that no longer opens. So
mechscope never writes into the only copy of an HDF5 file: `rewrite` copies it beside itself, lets the
caller change the copy, and replaces the original atomically only when that succeeded.

Example:
    >>> import tempfile, pathlib, numpy as np
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "data.h5"
    >>> _ = create(path, lambda f: f.create_dataset("x", data=np.arange(3)))
    >>> _ = rewrite(path, lambda f: f["x"].__setitem__(0, 7))
    >>> with open_h5(path) as f:
    ...     f["x"][:].tolist()
    [7, 1, 2]
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mechscope.errors import InputError
from mechscope.storage.atomic import atomic_write

#: gzip level for float16 activations: level 4 is within a few percent of 9's size at a fraction of its time.
GZIP_LEVEL = 4


def _h5py() -> Any:
    try:
        import h5py
    except ImportError as error:  # pragma: no cover - h5py is a dependency of the concepts extra
        raise InputError("HDF5 needs h5py: pip install 'mechscope[concepts]'") from error
    return h5py


def open_h5(path: str | os.PathLike[str], mode: str = "r") -> Any:
    """Open an HDF5 file (an ``h5py.File``, a context manager).

    Raises:
        InputError: the file is missing, or is not a readable HDF5 file (truncated, corrupt, another format).
    """
    source = Path(path)
    if mode == "r" and not source.is_file():
        raise InputError(f"no HDF5 file at '{source}'; check the path")
    h5py = _h5py()
    try:
        return h5py.File(source, mode)
    except OSError as error:
        reason = str(error).split(";")[0].split("(")[0].strip() or "unreadable"
        raise InputError(
            f"'{source}' is not a readable HDF5 file ({reason}); it is truncated or corrupt: rebuild it"
        ) from error


def create(path: str | os.PathLike[str], fill: Callable[[Any], object]) -> Path:
    """Write a new HDF5 file at ``path`` atomically: ``fill(h5py.File)`` writes into a temporary file."""

    def write(temporary: Path) -> None:
        with _h5py().File(temporary, "w") as handle:
            fill(handle)

    return atomic_write(path, write)


def rewrite(path: str | os.PathLike[str], change: Callable[[Any], object]) -> Path:
    """Change an existing HDF5 file without ever risking it: copy, ``change(copy)``, then swap atomically.

    On any failure (an exception, Ctrl-C, a kill before the swap) the original is untouched.

    Raises:
        InputError: the file is missing or unreadable.
    """
    source = Path(path)
    with open_h5(source):
        pass  # refuse a corrupt file before copying it

    def write(temporary: Path) -> None:
        shutil.copyfile(source, temporary)
        with _h5py().File(temporary, "r+") as handle:
            change(handle)

    return atomic_write(source, write)


def text_dataset(handle: Any, name: str, values: list[str]) -> Any:
    """A dataset of UTF-8 strings (variable length)."""
    h5py = _h5py()
    return handle.create_dataset(name, data=values, dtype=h5py.string_dtype("utf-8"))


def read_text(dataset: Any) -> list[str]:
    """The strings of a `text_dataset`."""
    return [value.decode("utf-8") if isinstance(value, bytes) else str(value) for value in dataset[()]]


def remove_stale_temporaries(path: str | os.PathLike[str]) -> int:
    """Delete temporary files that a killed writer of ``path`` left beside it; returns how many."""
    target = Path(path)
    stale = list(target.parent.glob(f".{target.name}.*.tmp")) if target.parent.is_dir() else []
    for leftover in stale:
        leftover.unlink(missing_ok=True)
    return len(stale)
