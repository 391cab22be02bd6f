"""Open a checkpoint and stream its tensors one at a time, without building the model.

`open_checkpoint` accepts a weight file, a folder, a Hugging Face cache folder (``models--org--name`` or
one of its ``snapshots/<rev>``), or a hub id (looked up in the local HF cache first, downloaded otherwise).
Formats: safetensors (single file or sharded with ``model.safetensors.index.json``), PyTorch ``.bin``
(single or sharded with ``pytorch_model.bin.index.json``), GGUF (dequantized with the ``gguf`` package)
and ``.npz``. Safetensors wins when a folder holds both it and ``.bin`` files.

Every header is checked when the checkpoint is opened, so a truncated file or a missing shard fails
before any analysis starts, with a one-line `WeightFileError` naming the file.

Memory: `Checkpoint.read` returns one tensor as float32 on the CPU. Safetensors tensors are read with
plain file reads into a fresh buffer (not through a memory map, whose touched pages would stay resident
until the file is closed and grow the process to the size of the model), so at most the raw tensor and its
float32 copy are alive per call. ``.bin`` shards are memory-mapped by ``torch.load(mmap=True)`` (pages
that were read stay mapped until the checkpoint is closed, so prefer safetensors for very large models);
GGUF (memory-mapped by the ``gguf`` package) and ``.npz`` read one tensor per call.

Example:
    >>> with open_checkpoint("path/to/model") as checkpoint:  # doctest: +SKIP
    ...     for name, tensor in checkpoint:
    ...         print(name, checkpoint.dtype(name), tuple(tensor.shape))
"""

from __future__ import annotations

import json
import logging
import re
import struct
import threading
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import numpy as np
import torch

from mechscope.errors import WeightFileError

logger = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = ("safetensors", "bin", "gguf", "npz")

_SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "U16": torch.uint16,
    "U32": torch.uint32,
    "U64": torch.uint64,
    "BOOL": torch.bool,
}
# A safetensors header larger than this is corrupt rather than large (real ones are a few MB at most).
_MAX_HEADER_BYTES = 100 * 1024 * 1024
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_GGUF_SPLIT = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$")


def dtype_name(dtype: torch.dtype | np.dtype[Any]) -> str:
    """``torch.bfloat16`` → ``"bfloat16"``, ``np.dtype('float32')`` → ``"float32"``."""
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class _Entry:
    """Where one tensor lives and what it is."""

    file: Path
    shape: tuple[int, ...]
    dtype: str


class _Backend(Protocol):
    """One weight file: lists its tensors up front, reads one on demand."""

    path: Path

    def entries(self) -> list[tuple[str, _Entry]]: ...

    def read(self, name: str) -> torch.Tensor: ...

    def close(self) -> None: ...


def _to_float32(tensor: torch.Tensor) -> torch.Tensor:
    # Complex or float64 would lose information silently; no checkpoint we read stores them as weights
    # that matter, but say so instead of hiding it.
    if tensor.dtype == torch.float64:
        logger.debug("downcasting a float64 tensor to float32 for analysis")
    return tensor.to(torch.float32)


class _SafetensorsFile:
    """A safetensors file read with plain ``readinto`` calls (see the module docstring for why)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._handle: Any = None
        self._tensors: dict[str, tuple[torch.dtype, tuple[int, ...], int, int]] = {}
        self._data_start = 0
        self._parse_header()

    def _fail(self, problem: str) -> WeightFileError:
        return WeightFileError(f"{self.path} {problem}; re-download or re-save the checkpoint")

    def _parse_header(self) -> None:
        try:
            size = self.path.stat().st_size
            with self.path.open("rb") as handle:
                prefix = handle.read(8)
                if len(prefix) < 8:
                    raise self._fail("is not a safetensors file (shorter than its 8-byte header length)")
                (header_len,) = struct.unpack("<Q", prefix)
                if header_len > _MAX_HEADER_BYTES or 8 + header_len > size:
                    raise self._fail(f"is truncated or corrupt (header of {header_len} bytes, file of {size})")
                header = json.loads(handle.read(header_len))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise self._fail(f"has an unreadable safetensors header ({type(error).__name__})") from None
        if not isinstance(header, dict):
            raise self._fail("has a safetensors header that is not a JSON object")
        self._data_start = 8 + header_len
        data_size = size - self._data_start
        for name, info in header.items():
            if name == "__metadata__":
                continue
            try:
                dtype = _SAFETENSORS_DTYPES[info["dtype"]]
                shape = tuple(int(d) for d in info["shape"])
                begin, end = (int(o) for o in info["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise self._fail(f"has an invalid header entry for tensor '{name}'") from None
            expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if end - begin != expected or begin < 0:
                raise self._fail(f"has inconsistent offsets for tensor '{name}'")
            if end > data_size:
                raise self._fail(
                    f"is truncated: tensor '{name}' ends at byte {end} but the file holds {data_size} data bytes"
                )
            self._tensors[name] = (dtype, shape, begin, end)

    def entries(self) -> list[tuple[str, _Entry]]:
        # File order (by data offset) so that a full pass reads the file front to back.
        ordered = sorted(self._tensors.items(), key=lambda item: item[1][2])
        return [(name, _Entry(self.path, shape, dtype_name(dtype))) for name, (dtype, shape, _, _) in ordered]

    def read(self, name: str) -> torch.Tensor:
        dtype, shape, begin, end = self._tensors[name]
        if end == begin:
            return torch.zeros(shape, dtype=torch.float32)
        buffer = bytearray(end - begin)
        with self._lock:
            if self._handle is None:
                self._handle = self.path.open("rb")
            self._handle.seek(self._data_start + begin)
            got = self._handle.readinto(buffer)
        if got != len(buffer):
            raise self._fail(f"ended early while reading tensor '{name}'")
        return _to_float32(torch.frombuffer(buffer, dtype=dtype).reshape(shape))

    def close(self) -> None:
        with self._lock:
            if self._handle is not None:
                self._handle.close()
                self._handle = None


class _TorchBinFile:
    """A PyTorch pickle (``.bin``/``.pt``), loaded with ``weights_only=True`` and memory-mapped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._state: Mapping[str, torch.Tensor] | None = None
        self._lock = threading.Lock()
        state = self._load()
        self._entries = [
            (name, _Entry(path, tuple(tensor.shape), dtype_name(tensor.dtype))) for name, tensor in state.items()
        ]

    def _load(self) -> Mapping[str, torch.Tensor]:
        try:
            try:
                state = torch.load(self.path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as error:
                if "mmap" not in str(error):
                    raise
                # Files written with the legacy (non-zip) serializer cannot be memory-mapped.
                logger.warning("%s uses the legacy torch format; loading it without mmap", self.path)
                state = torch.load(self.path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile) as error:
            raise WeightFileError(
                f"{self.path} is not a readable PyTorch checkpoint ({type(error).__name__}); re-download it"
            ) from None
        except Exception as error:  # weights_only refusals come as pickle.UnpicklingError and friends
            raise WeightFileError(
                f"{self.path} cannot be loaded with weights_only=True ({type(error).__name__}); "
                "convert it to safetensors"
            ) from None
        if not isinstance(state, Mapping) or not all(isinstance(t, torch.Tensor) for t in state.values()):
            raise WeightFileError(f"{self.path} does not hold a flat name -> tensor state dict; convert it")
        return state

    def entries(self) -> list[tuple[str, _Entry]]:
        return list(self._entries)

    def read(self, name: str) -> torch.Tensor:
        with self._lock:
            if self._state is None:
                self._state = self._load()
            tensor = self._state[name]
        # A copy, so the result does not pin the memory map.
        return tensor.to(torch.float32, copy=True)

    def close(self) -> None:
        with self._lock:
            self._state = None


class _GGUFFile:
    """A llama.cpp GGUF file; quantized tensors are dequantized with ``gguf.quants.dequantize``."""

    def __init__(self, path: Path) -> None:
        try:
            from gguf import GGUFReader
        except ImportError:
            raise WeightFileError(f"reading {path} needs the gguf package: pip install 'mechscope[weights]'") from None
        self.path = path
        try:
            self._reader = GGUFReader(path, "r")
        except Exception as error:  # gguf raises ValueError, struct.error, IndexError ... on bad files
            raise WeightFileError(
                f"{path} is not a readable GGUF file ({type(error).__name__}); re-download it"
            ) from None
        self._tensors = {tensor.name: tensor for tensor in self._reader.tensors}

    @staticmethod
    def _dtype(tensor: Any) -> str:
        kind = str(tensor.tensor_type.name)
        plain = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}
        plain |= {f"I{bits}": f"int{bits}" for bits in (8, 16, 32, 64)}
        return plain.get(kind, kind.lower())  # quantized types keep llama.cpp's name: q8_0, q4_k, iq2_xxs ...

    def entries(self) -> list[tuple[str, _Entry]]:
        # GGUF lists dims fastest-varying first; torch order is the reverse.
        return [
            (name, _Entry(self.path, tuple(int(d) for d in reversed(tensor.shape.tolist())), self._dtype(tensor)))
            for name, tensor in self._tensors.items()
        ]

    def read(self, name: str) -> torch.Tensor:
        from gguf.quants import dequantize

        tensor = self._tensors[name]
        shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
        values = np.array(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32, copy=True)
        return torch.from_numpy(values.reshape(shape))

    def close(self) -> None:
        self._tensors = {}


class _NpzFile:
    """A numpy ``.npz`` archive; shapes come from each member's ``.npy`` header, arrays load one at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._entries: list[tuple[str, _Entry]] = []
        try:
            with zipfile.ZipFile(path) as archive:
                for member in archive.namelist():
                    if not member.endswith(".npy"):
                        continue
                    with archive.open(member) as handle:
                        major, _ = np.lib.format.read_magic(handle)
                        read_header = (
                            np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                        )
                        shape, _, dtype = read_header(handle)
                    self._entries.append((member[: -len(".npy")], _Entry(path, tuple(shape), dtype_name(dtype))))
            self._archive: Any = np.load(path, allow_pickle=False)
        except (OSError, ValueError, zipfile.BadZipFile) as error:
            raise WeightFileError(
                f"{path} is not a readable .npz archive ({type(error).__name__}); re-create it"
            ) from None

    def entries(self) -> list[tuple[str, _Entry]]:
        return list(self._entries)

    def read(self, name: str) -> torch.Tensor:
        with self._lock:
            array = self._archive[name]
        return _to_float32(torch.from_numpy(np.ascontiguousarray(array)))

    def close(self) -> None:
        self._archive.close()


_BACKENDS: dict[str, type[_SafetensorsFile] | type[_TorchBinFile] | type[_GGUFFile] | type[_NpzFile]] = {
    "safetensors": _SafetensorsFile,
    "bin": _TorchBinFile,
    "gguf": _GGUFFile,
    "npz": _NpzFile,
}


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
        self._backends: dict[Path, _Backend] = {}
        self._entries: dict[str, _Entry] = {}
        try:
            for file in files:
                backend = _BACKENDS[format](file)
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

    def _entry(self, name: str) -> _Entry:
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


# ----------------------------------------------------------------------------------------------------
# Finding the weight files
# ----------------------------------------------------------------------------------------------------


def _format_of_file(path: Path) -> str | None:
    name = path.name
    if name.endswith(".safetensors"):
        return "safetensors"
    if name.endswith((".bin", ".pt", ".pth")):
        return "bin"
    if name.endswith(".gguf"):
        return "gguf"
    if name.endswith(".npz"):
        return "npz"
    return None


def _read_index(index: Path) -> tuple[list[Path], dict[str, Path]]:
    """The shards an index lists (sorted, checked to exist) and which shard holds each tensor."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError
    except (OSError, KeyError, TypeError, json.JSONDecodeError):
        raise WeightFileError(f"{index} is not a valid shard index (no 'weight_map'); re-download it") from None
    shards = sorted({index.parent / str(shard) for shard in weight_map.values()})
    for shard in shards:
        if not shard.is_file():
            raise WeightFileError(f"shard {shard} listed in {index.name} is missing; download it or re-save the model")
    return shards, {str(name): index.parent / str(shard) for name, shard in weight_map.items()}


def _files_in_folder(folder: Path) -> tuple[str, list[Path], dict[str, Path]]:
    """Pick the weight files of a folder: safetensors, then ``.bin``, then GGUF, then ``.npz``."""
    for fmt, index_name, single in (
        ("safetensors", "model.safetensors.index.json", "model.safetensors"),
        ("bin", "pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        index = folder / index_name
        if index.is_file():
            shards, expected = _read_index(index)
            return fmt, shards, expected
        if (folder / single).is_file():
            return fmt, [folder / single], {}
    found = {
        fmt: sorted(p for p in folder.iterdir() if p.is_file() and _format_of_file(p) == fmt)
        for fmt in ("safetensors", "bin", "gguf", "npz")
    }
    for fmt in ("safetensors", "bin"):
        if found[fmt]:
            return fmt, found[fmt], {}
    if found["gguf"]:
        ggufs = found["gguf"]
        if len(ggufs) > 1 and not all(_GGUF_SPLIT.search(p.name) for p in ggufs):
            names = ", ".join(p.name for p in ggufs[:4])
            raise WeightFileError(f"{folder} holds several GGUF files ({names}); pass the one to analyse")
        return "gguf", ggufs, {}
    if found["npz"]:
        if len(found["npz"]) > 1:
            raise WeightFileError(f"{folder} holds several .npz files; pass the one to analyse")
        return "npz", found["npz"], {}
    raise WeightFileError(
        f"no weight files in {folder} (looked for *.safetensors, *.bin, *.gguf, *.npz); pass a model folder or file"
    )


def _resolve_cache_repo(folder: Path, revision: str | None) -> tuple[Path, str]:
    """``.../models--org--name`` → its snapshot for ``revision`` (a branch in ``refs/`` or a commit hash)."""
    wanted = revision or "main"
    ref = folder / "refs" / wanted
    commit = ref.read_text().strip() if ref.is_file() else wanted
    snapshot = folder / "snapshots" / commit
    if not snapshot.is_dir():
        snapshots = sorted(p.name for p in (folder / "snapshots").glob("*")) if (folder / "snapshots").is_dir() else []
        raise WeightFileError(
            f"{folder} has no snapshot for revision '{wanted}' (snapshots: {', '.join(snapshots) or 'none'}); "
            "pass --revision or download it"
        )
    return snapshot, commit


def _cache_identity(path: Path) -> tuple[str | None, str | None]:
    """The hub id and commit of a path inside an HF cache (``models--org--name/snapshots/<commit>``)."""
    parts = path.parts
    for i, part in enumerate(parts):
        if part.startswith("models--") and i + 2 < len(parts) and parts[i + 1] == "snapshots":
            return part.removeprefix("models--").replace("--", "/"), parts[i + 2]
    return None, None


def _manifest_identity(folder: Path) -> tuple[str | None, str | None]:
    """The hub id and commit recorded by `mechscope.weights.download` in a downloaded folder, if any."""
    path = folder / "mechscope-manifest.json"  # written by mechscope.weights.download
    try:
        manifest = json.loads(path.read_text())
        return str(manifest["model_id"]), str(manifest["commit"])
    except (OSError, KeyError, TypeError, json.JSONDecodeError):
        return None, None


def _from_hub(model_id: str, revision: str | None, cache_dir: Path | None) -> Path:
    """The local snapshot of a hub id: the HF cache when it has one, else a fresh download."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model_id, revision=revision, cache_dir=cache_dir, local_files_only=True))
    except Exception as error:  # LocalEntryNotFoundError and friends: not cached, fall through to download
        logger.info("%s is not in the local HF cache (%s); downloading", model_id, type(error).__name__)
    from mechscope.weights.download import download

    return download(model_id, revision=revision, out=cache_dir or Path("data/models"))


def open_checkpoint(source: str | Path, *, revision: str | None = None, cache_dir: Path | None = None) -> Checkpoint:
    """Open a checkpoint for streaming; every header is checked before this returns.

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
    path = Path(source).expanduser()
    model_id: str | None = None
    if not path.exists():
        text = str(source)
        if not _HUB_ID.match(text):
            raise WeightFileError(
                f"{source} does not exist; pass a checkpoint file, a model folder or a hub id org/name"
            )
        model_id = text
        path = _from_hub(text, revision, cache_dir)
    if path.is_dir() and path.name.startswith("models--") and (path / "snapshots").is_dir():
        path, revision = _resolve_cache_repo(path, revision)
    cached_id, cached_revision = _cache_identity(path.resolve())
    if cached_id is None:
        cached_id, cached_revision = _manifest_identity(path if path.is_dir() else path.parent)
    model_id = model_id or cached_id
    revision = cached_revision or revision

    expected: dict[str, Path] = {}
    if path.is_dir():
        fmt, files, expected = _files_in_folder(path)
    elif path.name.endswith(".index.json"):
        fmt = "bin" if ".bin." in path.name else "safetensors"
        files, expected = _read_index(path)
    else:
        detected = _format_of_file(path)
        if detected is None:
            raise WeightFileError(f"{path} is not a weight file (.safetensors, .bin, .pt, .gguf, .npz); pass one")
        fmt, files = detected, [path]
    logger.info("opening %d %s file(s) under %s", len(files), fmt, path)
    return Checkpoint(path, fmt, files, model_id=model_id, revision=revision, expected=expected)
