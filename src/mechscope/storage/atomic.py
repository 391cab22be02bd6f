"""All-or-nothing file writes: a temporary file in the target's folder, fsync, rename, cleanup on failure.

Every file mechscope writes goes through `atomic_write`, so an interrupted or failed write never leaves
half a file at the target, nor a temporary file beside it.

Examples:
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> atomic_write_text(folder / "report.txt", "hello").read_text()
    'hello'
    >>> sorted(p.name for p in folder.iterdir())
    ['report.txt']
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from mechscope.errors import InputError


def check_target(path: str | os.PathLike[str]) -> Path:
    """``path`` as a `Path` once it is known to be writable as a file.

    Examples:
        >>> import tempfile, pathlib
        >>> from mechscope.storage.atomic import check_target
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> check_target(folder / "out.csv") == folder / "out.csv"
        True
        >>> check_target(folder / "missing" / "out.csv")
        Traceback (most recent call last):
        ...
        mechscope.errors.InputError: the folder '.../missing' does not exist; create it first or write elsewhere

    Raises:
        InputError: the path names a folder, or its folder does not exist.
    """
    target = Path(path)
    if target.is_dir():
        raise InputError(f"'{target}' is a folder; give a file name inside it, e.g. {target / 'out'}")
    if not target.parent.is_dir():
        raise InputError(f"the folder '{target.parent}' does not exist; create it first or write elsewhere")
    return target


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], object], *, fsync: bool = True) -> Path:
    """Call ``write(temporary_path)`` and move the result to ``path`` only if it succeeded.

    The temporary file lives in the target's folder (so the rename is atomic on one file system) and is
    fsynced before the rename; on any failure, Ctrl-C included, it is removed and the target is untouched.
    ``fsync=False`` skips the fsync, for files that are checked when read and remade when damaged (a killed
    process still leaves the whole file or none; only a power cut can leave a damaged one).

    Examples:
        A writer that fails halfway leaves the old file as it was, and no temporary file beside it:

        >>> import tempfile, pathlib
        >>> from mechscope.storage.atomic import atomic_write
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> atomic_write(folder / "scores.csv", lambda temporary: temporary.write_text("a,b\\n1,2\\n")).name
        'scores.csv'
        >>> def broken(temporary):
        ...     temporary.write_text("a,b\\n3,")
        ...     raise RuntimeError("disk full")
        >>> atomic_write(folder / "scores.csv", broken)
        Traceback (most recent call last):
        ...
        RuntimeError: disk full
        >>> (folder / "scores.csv").read_text().splitlines(), [p.name for p in folder.iterdir()]
        (['a,b', '1,2'], ['scores.csv'])

    Raises:
        InputError: ``path`` names a folder or its folder is missing (checked before ``write`` runs).
    """
    target = check_target(path)
    handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        write(temporary)
        # mkstemp creates the file 0600; give the result the mode a plain open() would (0666 less the umask)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        if fsync:
            with open(temporary, "rb+") as written:
                os.fsync(written.fileno())
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically.

    Examples:
        >>> import tempfile, pathlib
        >>> from mechscope.storage.atomic import atomic_write_text
        >>> path = atomic_write_text(pathlib.Path(tempfile.mkdtemp()) / "note.txt", "café")
        >>> path.name, path.read_bytes()
        ('note.txt', b'caf\\xc3\\xa9')
    """
    return atomic_write(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically.

    Examples:
        >>> import tempfile, pathlib
        >>> from mechscope.storage.atomic import atomic_write_bytes
        >>> path = atomic_write_bytes(pathlib.Path(tempfile.mkdtemp()) / "blob.bin", bytes([0, 1, 255]))
        >>> list(path.read_bytes())
        [0, 1, 255]
    """
    return atomic_write(path, lambda temporary: temporary.write_bytes(data))
