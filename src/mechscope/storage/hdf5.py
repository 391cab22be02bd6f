"""HDF5 files (h5py): open with a one-line error for a corrupt file, and change a file by swapping a copy.

HDF5 is not crash-safe: a process killed while it writes can leave a file that no longer opens. So
mechscope never writes into the only copy of an HDF5 file: `rewrite` copies it beside itself, lets the
caller change the copy, and replaces the original atomically only when that succeeded.

Examples:
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
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from mechscope.errors import InputError
from mechscope.storage.atomic import atomic_write

#: gzip level for float16 activations, which HDF5's shuffle filter goes before (bytes grouped by significance).
#: Measured on MiniLM's pooled states: shuffle + level 1 stores 87.5% of the raw size in 0.11 s per 5000 x 384,
#: level 4 86.3% in 0.17 s, no shuffle 93% at either level; deflate buys little on activations, so be fast.
GZIP_LEVEL = 1


def _h5py() -> Any:
    try:
        import h5py
    except ImportError as error:  # pragma: no cover - h5py is a dependency of the concepts extra
        raise InputError("HDF5 needs h5py: pip install 'mechscope[concepts]'") from error
    return h5py


def open_h5(path: str | os.PathLike[str], mode: str = "r") -> Any:
    """Open an HDF5 file (an ``h5py.File``, a context manager).

    Examples:
        >>> import tempfile, pathlib, numpy as np
        >>> from mechscope.storage.hdf5 import create, open_h5
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> path = create(folder / "data.h5", lambda f: f.create_dataset("x", data=np.arange(3)))
        >>> with open_h5(path) as f:
        ...     f["x"][:].tolist()
        [0, 1, 2]
        >>> _ = (folder / "broken.h5").write_bytes(b"not HDF5")  # a damaged file: one line saying so
        >>> open_h5(folder / "broken.h5")
        Traceback (most recent call last):
        ...
        mechscope.errors.InputError: '...broken.h5' is not a readable HDF5 file (...); it is truncated or corrupt: ...

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
    """Write a new HDF5 file at ``path`` atomically: ``fill(h5py.File)`` writes into a temporary file.

    Examples:
        >>> import tempfile, pathlib, numpy as np
        >>> from mechscope.storage.hdf5 import create, open_h5
        >>> def fill(f):
        ...     f.create_dataset("x", data=np.zeros((2, 3)))
        ...     f.attrs["site"] = "resid_post.1"
        >>> path = create(pathlib.Path(tempfile.mkdtemp()) / "acts.h5", fill)
        >>> with open_h5(path) as f:
        ...     f["x"].shape, f.attrs["site"]
        ((2, 3), 'resid_post.1')
    """

    def write(temporary: Path) -> None:
        with _h5py().File(temporary, "w") as handle:
            fill(handle)

    return atomic_write(path, write)


def rewrite(path: str | os.PathLike[str], change: Callable[[Any], object]) -> Path:
    """Change an existing HDF5 file without ever risking it: copy, ``change(copy)``, then swap atomically.

    On any failure (an exception, Ctrl-C, a kill before the swap) the original is untouched.

    Examples:
        >>> import tempfile, pathlib, numpy as np
        >>> from mechscope.storage.hdf5 import create, open_h5, rewrite
        >>> path = create(pathlib.Path(tempfile.mkdtemp()) / "data.h5", lambda f: f.create_dataset("x", data=[1, 2]))
        >>> _ = rewrite(path, lambda f: f.create_dataset("y", data=[3]))
        >>> def broken(f):
        ...     del f["x"]
        ...     raise RuntimeError("stopped halfway")
        >>> rewrite(path, broken)
        Traceback (most recent call last):
        ...
        RuntimeError: stopped halfway
        >>> with open_h5(path) as f:  # the failed change never reached the file
        ...     sorted(f), f["x"][:].tolist()
        (['x', 'y'], [1, 2])
        >>> sorted(p.name for p in path.parent.iterdir())
        ['data.h5']

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


def gzip_datasets(
    handle: Any, names: Sequence[str], values: np.ndarray, chunks: tuple[int, int], *, resizable: Sequence[str] = ()
) -> None:
    """Write one 2-D array into each of ``names`` as compressed, chunked datasets, compressing it once.

    The datasets are ordinary HDF5 datasets with the shuffle and deflate filters (level `GZIP_LEVEL`), which
    any HDF5 reader opens and h5py keeps applying to later writes. Here each chunk is shuffled by numpy and
    deflated by zlib — the library behind HDF5's filter — on a thread pool (zlib releases the GIL), then
    written raw (``write_direct_chunk``): an array stored under several names (stage 0's means are also its
    samples) is compressed once, on every core. The names in ``resizable`` can grow along their first axis.

    Examples:
        >>> import tempfile, pathlib, numpy as np
        >>> from mechscope.storage.hdf5 import create, gzip_datasets, open_h5
        >>> values = np.arange(12, dtype=np.float16).reshape(6, 2)
        >>> fill = lambda f: gzip_datasets(f, ["means", "samples"], values, (4, 2), resizable=["samples"])
        >>> path = create(pathlib.Path(tempfile.mkdtemp()) / "acts.h5", fill)
        >>> with open_h5(path) as f:  # plain gzip + shuffle datasets, read back by h5py's own filters
        ...     samples = f["samples"]
        ...     samples.compression, samples.shuffle, samples.chunks, samples.maxshape, f["means"].maxshape
        ...     bool((samples[:] == values).all() and (f["means"][:] == values).all())
        ('gzip', True, (4, 2), (None, 2), (6, 2))
        True
    """
    if values.ndim != 2 or chunks[1] != values.shape[1]:
        raise ValueError(f"gzip_datasets takes a 2-D array chunked by whole rows; got {values.shape}, {chunks}")
    rows = chunks[0]
    datasets = [
        handle.create_dataset(
            name,
            shape=values.shape,
            dtype=values.dtype,
            chunks=chunks,
            compression="gzip",
            compression_opts=GZIP_LEVEL,
            shuffle=True,
            maxshape=(None, values.shape[1]) if name in resizable else None,
        )
        for name in names
    ]

    def deflate(start: int) -> bytes:
        block = values[start : start + rows]
        if len(block) < rows:  # an edge chunk is stored at full size, padded with the fill value (0)
            block = np.concatenate([block, np.zeros((rows - len(block), values.shape[1]), values.dtype)])
        # HDF5's shuffle: the first byte of every element, then the second, ...
        shuffled = np.ascontiguousarray(block).view(np.uint8).reshape(-1, values.dtype.itemsize).T
        return zlib.compress(np.ascontiguousarray(shuffled).tobytes(), GZIP_LEVEL)

    starts = range(0, values.shape[0], rows)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for start, compressed in zip(starts, pool.map(deflate, starts), strict=True):
            for dataset in datasets:
                dataset.id.write_direct_chunk((start, 0), compressed)


def text_dataset(handle: Any, name: str, values: list[str]) -> Any:
    """A dataset of UTF-8 strings (variable length).

    Examples:
        >>> import tempfile, pathlib
        >>> from mechscope.storage.hdf5 import create, open_h5, text_dataset
        >>> fill = lambda f: text_dataset(f, "words", ["cat", "é"])
        >>> path = create(pathlib.Path(tempfile.mkdtemp()) / "words.h5", fill)
        >>> with open_h5(path) as f:  # h5py hands the strings back as UTF-8 bytes (`read_text` decodes them)
        ...     f["words"].shape, f["words"][()].tolist()
        ((2,), [b'cat', b'\\xc3\\xa9'])
    """
    h5py = _h5py()
    return handle.create_dataset(name, data=values, dtype=h5py.string_dtype("utf-8"))


def read_text(dataset: Any) -> list[str]:
    """The strings of a `text_dataset`.

    Examples:
        >>> import tempfile, pathlib
        >>> from mechscope.storage.hdf5 import create, open_h5, read_text, text_dataset
        >>> fill = lambda f: text_dataset(f, "words", ["cat", "é"])
        >>> path = create(pathlib.Path(tempfile.mkdtemp()) / "words.h5", fill)
        >>> with open_h5(path) as f:
        ...     read_text(f["words"])
        ['cat', 'é']
    """
    return [value.decode("utf-8") if isinstance(value, bytes) else str(value) for value in dataset[()]]


def remove_stale_temporaries(path: str | os.PathLike[str]) -> int:
    """Delete temporary files that a killed writer of ``path`` left beside it; returns how many.

    Examples:
        >>> import tempfile, pathlib
        >>> from mechscope.storage.hdf5 import remove_stale_temporaries
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> for name in ("acts.h5", ".acts.h5.k3j2x9.tmp", ".other.h5.a1b2c3.tmp"):  # one left by a killed writer
        ...     _ = (folder / name).write_bytes(b"")
        >>> remove_stale_temporaries(folder / "acts.h5"), sorted(p.name for p in folder.iterdir())
        (1, ['.other.h5.a1b2c3.tmp', 'acts.h5'])
    """
    target = Path(path)
    stale = list(target.parent.glob(f".{target.name}.*.tmp")) if target.parent.is_dir() else []
    for leftover in stale:
        leftover.unlink(missing_ok=True)
    return len(stale)
