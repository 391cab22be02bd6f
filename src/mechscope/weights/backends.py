"""The weight-file formats `mechscope.weights.reader.Checkpoint` reads, one backend per format.

Each backend opens one file, lists its tensors (name, shape, stored dtype) up front, checking every header,
and reads one tensor on demand as float32 on the CPU:

* safetensors: the header is parsed and checked against the file size (a truncated file fails at open);
  tensors are read with plain ``readinto`` calls into a fresh buffer, not through a memory map, whose
  touched pages would stay resident until the file is closed and grow the process to the size of the model,
  so at most the raw tensor and its float32 copy are alive per call;
* PyTorch ``.bin`` / ``.pt``: ``torch.load(weights_only=True, mmap=True)`` (pages that were read stay
  mapped until the checkpoint is closed, so prefer safetensors for very large models); legacy non-zip
  files are loaded without mmap;
* GGUF: read with the ``gguf`` package (memory-mapped), quantized tensors dequantized one per call, shapes
  turned to torch order;
* ``.npz``: shapes from each member's ``.npy`` header, one array loaded per call.

A file that cannot be read raises a one-line `WeightFileError` naming it.
"""

from __future__ import annotations

import json
import logging
import struct
import threading
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from mechscope.errors import WeightFileError

logger = logging.getLogger(__name__)

#: The formats there is a backend for.
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


def dtype_name(dtype: torch.dtype | np.dtype[Any]) -> str:
    """``torch.bfloat16`` → ``"bfloat16"``, ``np.dtype('float32')`` → ``"float32"``."""
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class Entry:
    """Where one tensor lives and what it is."""

    file: Path
    shape: tuple[int, ...]
    dtype: str


class Backend(Protocol):
    """One weight file: lists its tensors up front, reads one on demand."""

    path: Path

    def entries(self) -> list[tuple[str, Entry]]:
        """Every tensor's name and `Entry` (file, shape, dtype), in the order a full pass should read them."""
        ...

    def read(self, name: str) -> torch.Tensor:
        """The tensor ``name`` as float32, read from the file on demand."""
        ...

    def close(self) -> None:
        """Release the file (safe to call twice)."""
        ...


def _to_float32(tensor: torch.Tensor) -> torch.Tensor:
    # Complex or float64 would lose information silently; no checkpoint we read stores them as weights
    # that matter, but say so instead of hiding it.
    if tensor.dtype == torch.float64:
        logger.debug("downcasting a float64 tensor to float32 for analysis")
    return tensor.to(torch.float32)


class SafetensorsFile:
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

    def entries(self) -> list[tuple[str, Entry]]:
        """Every tensor's name and `Entry` (file, shape, dtype), in the order a full pass should read them."""
        # File order (by data offset) so that a full pass reads the file front to back.
        ordered = sorted(self._tensors.items(), key=lambda item: item[1][2])
        return [(name, Entry(self.path, shape, dtype_name(dtype))) for name, (dtype, shape, _, _) in ordered]

    def read(self, name: str) -> torch.Tensor:
        """The tensor ``name`` as float32, read from the file on demand."""
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
        """Release the file (safe to call twice)."""
        with self._lock:
            if self._handle is not None:
                self._handle.close()
                self._handle = None


class TorchBinFile:
    """A PyTorch pickle (``.bin``/``.pt``), loaded with ``weights_only=True`` and memory-mapped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._state: Mapping[str, torch.Tensor] | None = None
        self._lock = threading.Lock()
        state = self._load()
        self._entries = [
            (name, Entry(path, tuple(tensor.shape), dtype_name(tensor.dtype))) for name, tensor in state.items()
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

    def entries(self) -> list[tuple[str, Entry]]:
        """Every tensor's name and `Entry` (file, shape, dtype), in the order a full pass should read them."""
        return list(self._entries)

    def read(self, name: str) -> torch.Tensor:
        """The tensor ``name`` as float32, read from the file on demand."""
        with self._lock:
            if self._state is None:
                self._state = self._load()
            tensor = self._state[name]
        # A copy, so the result does not pin the memory map.
        return tensor.to(torch.float32, copy=True)

    def close(self) -> None:
        """Release the file (safe to call twice)."""
        with self._lock:
            self._state = None


class GGUFFile:
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

    def entries(self) -> list[tuple[str, Entry]]:
        """Every tensor's name and `Entry` (file, shape, dtype), in the order a full pass should read them."""
        # GGUF lists dims fastest-varying first; torch order is the reverse.
        return [
            (name, Entry(self.path, tuple(int(d) for d in reversed(tensor.shape.tolist())), self._dtype(tensor)))
            for name, tensor in self._tensors.items()
        ]

    def read(self, name: str) -> torch.Tensor:
        """The tensor ``name`` as float32, read from the file on demand."""
        from gguf.quants import dequantize

        tensor = self._tensors[name]
        shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
        values = np.array(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32, copy=True)
        return torch.from_numpy(values.reshape(shape))

    def close(self) -> None:
        """Release the file (safe to call twice)."""
        self._tensors = {}


class NpzFile:
    """A numpy ``.npz`` archive; shapes come from each member's ``.npy`` header, arrays load one at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._entries: list[tuple[str, Entry]] = []
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
                    self._entries.append((member[: -len(".npy")], Entry(path, tuple(shape), dtype_name(dtype))))
            self._archive: Any = np.load(path, allow_pickle=False)
        except (OSError, ValueError, zipfile.BadZipFile) as error:
            raise WeightFileError(
                f"{path} is not a readable .npz archive ({type(error).__name__}); re-create it"
            ) from None

    def entries(self) -> list[tuple[str, Entry]]:
        """Every tensor's name and `Entry` (file, shape, dtype), in the order a full pass should read them."""
        return list(self._entries)

    def read(self, name: str) -> torch.Tensor:
        """The tensor ``name`` as float32, read from the file on demand."""
        with self._lock:
            array = self._archive[name]
        return _to_float32(torch.from_numpy(np.ascontiguousarray(array)))

    def close(self) -> None:
        """Release the file (safe to call twice)."""
        self._archive.close()


BACKENDS: dict[str, type[SafetensorsFile] | type[TorchBinFile] | type[GGUFFile] | type[NpzFile]] = {
    "safetensors": SafetensorsFile,
    "bin": TorchBinFile,
    "gguf": GGUFFile,
    "npz": NpzFile,
}
