"""The steering directions a server holds: made from contrast prompts, or uploaded as safetensors or JSON.

An upload is parsed as a mechscope direction file (safetensors, whose header carries the layer, site and
model) or as JSON ``{"layer": int, "vector": [floats], "site": "resid_post"}``; nothing else is accepted,
and nothing is ever unpickled. Either way the direction is checked against the served model (width, layer,
the model it was made for) before it is kept.
"""

from __future__ import annotations

import itertools
import json
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mechscope.core.direction import Direction
from mechscope.errors import InputError, MechscopeError
from mechscope.web.schemas import DirectionInfo

if TYPE_CHECKING:
    from mechscope.core.lm import LanguageModel

#: How many directions a server keeps (the oldest is dropped beyond this).
KEEP = 64


class UnknownDirection(InputError):
    """No direction has this id."""


class UnsupportedUpload(InputError):
    """An upload that is neither a safetensors direction nor a JSON one."""


def is_safetensors(data: bytes) -> bool:
    """Whether ``data`` starts like a safetensors file: an 8-byte header length, then a JSON object."""
    if len(data) < 10:
        return False
    size = int.from_bytes(data[:8], "little")
    return 2 <= size <= len(data) - 8 and data[8:9] == b"{"


def parse_upload(lm: LanguageModel, name: str, data: bytes, *, force: bool = False) -> Direction:
    """The direction in an uploaded file, checked against ``lm``.

    Raises:
        UnsupportedUpload: the bytes are neither safetensors nor JSON.
        InputError / ModelLoadError / ProvenanceError: the file is not a direction, or does not fit ``lm``.
    """
    if not data:
        raise UnsupportedUpload("the upload is empty; send a .safetensors or .json direction file")
    if is_safetensors(data):
        with tempfile.TemporaryDirectory(prefix="mechscope-upload-") as folder:
            path = Path(folder) / "direction.safetensors"
            path.write_bytes(data)
            try:
                return Direction.load(path, lm, force=force)
            except MechscopeError as error:  # name the user's file, not our temporary copy
                raise type(error)(str(error).replace(str(path), name)) from None
    if data.lstrip()[:1] == b"{":
        return _from_json(lm, name, data)
    raise UnsupportedUpload(
        f"'{name}' is neither safetensors nor JSON; upload a direction saved by mechscope (.safetensors) "
        'or JSON {"layer": ..., "vector": [...]}'
    )


def _from_json(lm: LanguageModel, name: str, data: bytes) -> Direction:
    try:
        body = json.loads(data)
        layer, values = int(body["layer"]), [float(v) for v in body["vector"]]
        site = str(body.get("site", "resid_post"))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise InputError(f'\'{name}\' is not a JSON direction; it needs "layer" (int) and "vector" (numbers)') from None
    direction = Direction(torch.tensor(values, dtype=torch.float32), layer, site=site, method="uploaded")
    direction.check(lm)
    return direction


class Directions:
    """The directions of one server, by id (``d1``, ``d2``, ...)."""

    def __init__(self) -> None:
        self._items: dict[str, tuple[Direction, DirectionInfo]] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def add(self, direction: Direction, name: str) -> DirectionInfo:
        """Keep ``direction`` under a new id; returns its description."""
        with self._lock:
            direction_id = f"d{next(self._ids)}"
            info = DirectionInfo(
                id=direction_id,
                name=name,
                layer=direction.layer,
                site=direction.site,
                norm=float(direction.vector.float().norm()),
                method=direction.method or "unknown",
            )
            self._items[direction_id] = (direction, info)
            while len(self._items) > KEEP:
                del self._items[next(iter(self._items))]
            return info

    def get(self, direction_id: str) -> Direction:
        """The direction with this id.

        Raises:
            UnknownDirection: no such id.
        """
        with self._lock:
            item = self._items.get(direction_id)
        if item is None:
            raise UnknownDirection(f"no direction '{direction_id}'; make one from contrast prompts or upload one")
        return item[0]

    def list(self) -> list[DirectionInfo]:
        """Every direction held, oldest first."""
        with self._lock:
            return [info for _, info in self._items.values()]
