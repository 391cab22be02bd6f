"""Tensors with their metadata in one safetensors file: a ``kind``, a ``schema_version`` and JSON metadata.

The metadata lives in the safetensors header (``__metadata__``: ``kind``, ``schema_version``, ``meta`` as
JSON), so one atomic write stores everything and nothing can drift apart. Files of the earlier layout
(metadata in a ``.json`` sidecar beside the tensors) are still read.

Examples:
    >>> import tempfile, pathlib, torch
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "v.safetensors"
    >>> _ = save_tensors(path, {"vector": torch.ones(3)}, kind="direction", meta={"layer": 1})
    >>> stored = load_tensors(path, kind="direction")
    >>> stored.meta["layer"], stored.tensors["vector"].tolist()
    (1, [1.0, 1.0, 1.0])
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mechscope.errors import InputError
from mechscope.storage.atomic import atomic_write

if TYPE_CHECKING:
    from torch import Tensor


class StoredFileError(InputError):
    """A tensor file is missing, not safetensors, or holds another kind of object than expected."""


@dataclass
class StoredTensors:
    """What `load_tensors` returns: the tensors, their kind, schema version and metadata."""

    tensors: dict[str, Tensor]
    kind: str
    schema_version: int
    meta: dict[str, Any] = field(default_factory=dict)


def save_tensors(
    path: str | os.PathLike[str],
    tensors: Mapping[str, Tensor],
    *,
    kind: str,
    meta: Mapping[str, Any] | None = None,
    schema_version: int = 1,
    fsync: bool = True,
) -> Path:
    """Write ``tensors`` (moved to the CPU, made contiguous) and their metadata to ``path`` atomically.

    ``fsync=False``: see `mechscope.storage.atomic.atomic_write` (for parts that are checked when read).

    Examples:
        >>> import tempfile, pathlib, torch
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "v.safetensors"
        >>> save_tensors(path, {"vector": torch.ones(3)}, kind="direction", meta={"layer": 1}) == path
        True
    """
    from safetensors.torch import save_file

    header = {"kind": kind, "schema_version": str(schema_version), "meta": json.dumps(dict(meta or {}))}
    plain = {name: value.detach().cpu().contiguous() for name, value in tensors.items()}
    return atomic_write(path, lambda temporary: save_file(plain, str(temporary), metadata=header), fsync=fsync)


def read_header(path: str | os.PathLike[str], *, what: str = "tensor file") -> tuple[str, int, dict[str, Any]]:
    """``(kind, schema_version, meta)`` of a file written by `save_tensors`, without reading its tensors.

    A file of the earlier layout gets its kind and metadata from the ``.json`` sidecar (kind ``""`` if it
    names none).

    Examples:
        >>> import tempfile, pathlib, torch
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "v.safetensors"
        >>> _ = save_tensors(path, {"vector": torch.ones(3)}, kind="direction", meta={"layer": 1})
        >>> read_header(path)
        ('direction', 1, {'layer': 1})
        >>> _ = path.write_bytes(b"not safetensors")
        >>> read_header(path)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        mechscope.storage.tensors.StoredFileError: '...v.safetensors' is not a safetensors tensor file (...); give a ...

    Raises:
        StoredFileError: the file is missing or is not a safetensors file.
    """
    from safetensors import safe_open

    source = _existing(path, what)
    try:
        with safe_open(str(source), framework="pt") as handle:
            header = handle.metadata() or {}
    except Exception as error:  # safetensors raises its own error type, or OSError, on foreign bytes
        raise StoredFileError(
            f"'{source}' is not a safetensors {what} ({type(error).__name__}); give a file mechscope wrote"
        ) from None
    if "kind" in header:
        try:
            meta = json.loads(header.get("meta", "{}"))
        except json.JSONDecodeError:
            raise StoredFileError(f"the metadata in '{source}' is not valid JSON; the file is corrupt") from None
        return header["kind"], int(header.get("schema_version", "1")), meta
    return _legacy_header(source, header)


def _legacy_header(source: Path, header: dict[str, str]) -> tuple[str, int, dict[str, Any]]:
    sidecar = source.with_suffix(".json")
    meta: dict[str, Any] = {}
    if sidecar.is_file():
        try:
            meta = json.loads(sidecar.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise StoredFileError(f"the sidecar '{sidecar}' is not valid JSON; delete or fix it") from None
    version = int(meta.pop("schema_version", header.get("schema_version", 1)))
    return str(meta.pop("kind", "")), version, meta


def load_tensors(
    path: str | os.PathLike[str], *, kind: str | None = None, what: str | None = None, device: str = "cpu"
) -> StoredTensors:
    """Read a file written by `save_tensors` (or of the earlier sidecar layout).

    Args:
        kind: the kind expected; a file that names another kind is refused (legacy files name none).
        what: how error messages call the file (default: the kind).
        device: where the tensors land.

    Examples:
        >>> import tempfile, pathlib, torch
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "v.safetensors"
        >>> _ = save_tensors(path, {"vector": torch.ones(3)}, kind="direction", meta={"layer": 1})
        >>> stored = load_tensors(path, kind="direction")
        >>> stored.kind, stored.meta, stored.tensors["vector"].tolist()
        ('direction', {'layer': 1}, [1.0, 1.0, 1.0])
        >>> load_tensors(path, kind="probe")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        mechscope.storage.tensors.StoredFileError: '...v.safetensors' holds a direction, not a probe

    Raises:
        StoredFileError: the file is missing, not safetensors, or of another kind.
    """
    from safetensors.torch import load_file

    label = what or kind or "tensor file"
    found, version, meta = read_header(path, what=label)
    if kind is not None and found not in ("", kind):
        raise StoredFileError(f"'{path}' holds a {found}, not a {label}")
    tensors = load_file(str(path), device=device)
    return StoredTensors(tensors=tensors, kind=found or (kind or ""), schema_version=version, meta=meta)


def stored_meta(path: str | os.PathLike[str], kind: str) -> dict[str, Any] | None:
    """The metadata of a complete file of ``kind`` at ``path``, or None when it is missing or unreadable.

    What a sharded job asks of a part before it trusts it (and redoes the shard when the answer is None).

    Examples:
        >>> import tempfile, pathlib, torch
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "v.safetensors"
        >>> stored_meta(path, "part") is None  # not written yet
        True
        >>> _ = save_tensors(path, {"rows": torch.zeros(2, 3)}, kind="part", meta={"shard": 4})
        >>> stored_meta(path, "part")
        {'shard': 4}
    """
    if not Path(path).is_file():
        return None
    try:
        return load_tensors(path, kind=kind).meta
    except StoredFileError:
        return None  # never complete (atomic writes make this rare): the shard is redone


def _existing(path: str | os.PathLike[str], what: str) -> Path:
    source = Path(path)
    if not source.is_file():
        raise StoredFileError(f"no {what} at '{source}'")
    return source
