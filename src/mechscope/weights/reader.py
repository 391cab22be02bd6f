"""Open a checkpoint and stream its tensors one at a time, without building the model.

`open_checkpoint` accepts a weight file, a folder, a Hugging Face cache folder (``models--org--name`` or
one of its ``snapshots/<rev>``), or a hub id (looked up in the local HF cache first, downloaded otherwise).
Formats: safetensors (single file or sharded with ``model.safetensors.index.json``), PyTorch ``.bin``
(single or sharded with ``pytorch_model.bin.index.json``), GGUF (dequantized with the ``gguf`` package)
and ``.npz``. Safetensors wins when a folder holds both it and ``.bin`` files.

Every header is checked when the checkpoint is opened, so a truncated file or a missing shard fails
before any analysis starts, with a one-line `WeightFileError` naming the file.

Memory: `Checkpoint.read` returns one tensor as float32 on the CPU; how each format reads it (plain file
reads for safetensors, ``torch.load(weights_only=True, mmap=True)`` for ``.bin``, ...) is in
`mechscope.weights.backends`, and how a source is turned into weight files is `mechscope.weights.sources`.

Example (``dtype`` is the stored one; the tensors read are float32):
    >>> import tempfile
    >>> from safetensors.torch import save_file
    >>> folder = Path(tempfile.mkdtemp())
    >>> weights = {"lm_head.weight": torch.ones(8, 4, dtype=torch.float16), "model.norm.weight": torch.ones(4)}
    >>> save_file(weights, folder / "model.safetensors")
    >>> with open_checkpoint(folder) as checkpoint:
    ...     for name, tensor in checkpoint:
    ...         print(name, checkpoint.dtype(name), tuple(tensor.shape), tensor.dtype)
    model.norm.weight float32 (4,) torch.float32
    lm_head.weight float16 (8, 4) torch.float32
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

from mechscope.errors import WeightFileError
from mechscope.weights.backends import BACKENDS, Backend, Entry
from mechscope.weights.sources import resolve_source

logger = logging.getLogger(__name__)


class Checkpoint:
    """An opened checkpoint: tensor names, shapes and dtypes known up front, tensors read on demand.

    Attributes:
        root: The folder (or single file) that was opened.
        format: ``"safetensors"``, ``"bin"``, ``"gguf"`` or ``"npz"``.
        files: The weight files, in order.
        model_id: The hub id when known (a hub id or HF cache folder was opened), else None.
        revision: The commit hash of an HF cache snapshot, or the revision asked for, else None.
    """

    def __init__(
        self,
        root: Path,
        format: str,
        files: list[Path],
        *,
        model_id: str | None = None,
        revision: str | None = None,
        expected: Mapping[str, Path] | None = None,
    ) -> None:
        self.root = root
        self.format = format
        self.files = files
        self.model_id = model_id
        self.revision = revision
        self._backends: dict[Path, Backend] = {}
        self._entries: dict[str, Entry] = {}
        try:
            for file in files:
                backend = BACKENDS[format](file)
                self._backends[file] = backend
                for name, entry in backend.entries():
                    if name in self._entries:
                        raise WeightFileError(
                            f"tensor '{name}' is in both {self._entries[name].file} and {file}; remove the stray shard"
                        )
                    self._entries[name] = entry
            for name, file in (expected or {}).items():
                if name not in self._entries:
                    raise WeightFileError(f"{file} does not hold tensor '{name}' that the index lists; re-download it")
        except BaseException:
            self.close()
            raise

    def names(self) -> list[str]:
        """Every tensor name, in checkpoint order (file order, then position in the file), each once."""
        return list(self._entries)

    def _entry(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(f"checkpoint {self.root} has no tensor '{name}'") from None

    def shape(self, name: str) -> tuple[int, ...]:
        """The tensor's shape, in torch order (GGUF's reversed dims are turned around)."""
        return self._entry(name).shape

    def dtype(self, name: str) -> str:
        """The dtype stored in the file, e.g. ``"bfloat16"``, ``"float32"``, or ``"q8_0"`` for GGUF."""
        return self._entry(name).dtype

    def file_of(self, name: str) -> Path:
        """The weight file that holds ``name``."""
        return self._entry(name).file

    def read(self, name: str) -> torch.Tensor:
        """One tensor as float32 on the CPU (bf16/fp16/quantized values upcast), independent of the file."""
        return self._backends[self._entry(name).file].read(name)

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Stream ``(name, read(name))`` in checkpoint order, one tensor alive at a time."""
        for name in self._entries:
            yield name, self.read(name)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def config(self) -> dict[str, Any] | None:
        """The ``config.json`` next to the weights, if there is one."""
        folder = self.root if self.root.is_dir() else self.root.parent
        path = folder / "config.json"
        if not path.is_file():
            return None
        try:
            config = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            raise WeightFileError(f"{path} is not valid JSON; re-download it") from None
        return config if isinstance(config, dict) else None

    def total_bytes(self) -> int:
        """The size of all weight files together."""
        return sum(file.stat().st_size for file in self.files)

    def close(self) -> None:
        """Close every open file."""
        for backend in self._backends.values():
            backend.close()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Checkpoint({str(self.root)!r}, format={self.format!r}, files={len(self.files)}, tensors={len(self)})"


def open_checkpoint(source: str | Path, *, revision: str | None = None, cache_dir: Path | None = None) -> Checkpoint:
    """Open a checkpoint for streaming; every header is checked before this returns.

    Examples:
        >>> import tempfile
        >>> import numpy as np
        >>> folder = Path(tempfile.mkdtemp())
        >>> np.savez(folder / "weights.npz", **{"embed.weight": np.ones((6, 4), np.float32), "head.bias": np.zeros(6)})
        >>> with open_checkpoint(folder / "weights.npz") as checkpoint:
        ...     checkpoint.format, checkpoint.names(), checkpoint.dtype("head.bias"), checkpoint.read("head.bias").dtype
        ('npz', ['embed.weight', 'head.bias'], 'float64', torch.float32)
        >>> _ = (folder / "broken.safetensors").write_bytes(b"abc")  # a truncated file fails when opened
        >>> open_checkpoint(folder / "broken.safetensors")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        mechscope.errors.WeightFileError: ...broken.safetensors is not a safetensors file (shorter than its 8-byte ...

    Args:
        source: A weight file (``.safetensors``, ``.bin``/``.pt``, ``.gguf``, ``.npz``, or a shard index
            ``*.index.json``), a folder holding them, an HF cache folder (``models--org--name``, resolved
            through ``refs/``, or a ``snapshots/<commit>`` folder), or a hub id ``org/name``.
        revision: Branch, tag or commit for a hub id or an HF cache folder.
        cache_dir: HF cache to look a hub id up in (default: the user's HF cache); downloads go here too.

    Returns:
        The open `Checkpoint`; use it as a context manager or call `Checkpoint.close`.

    Raises:
        WeightFileError: nothing found, a shard missing, a header truncated or corrupt (the message names
            the file and the fix).
    """
    found = resolve_source(source, revision=revision, cache_dir=cache_dir)
    logger.info("opening %d %s file(s) under %s", len(found.files), found.format, found.path)
    return Checkpoint(
        found.path,
        found.format,
        found.files,
        model_id=found.model_id,
        revision=found.revision,
        expected=found.expected,
    )
