"""Sets of residual-stream directions read from files, for the weight-based direction analysis.

Three kinds of file are accepted (and several files are concatenated into one set):

* a steering direction: a file of kind ``direction`` written by `mechscope.storage.tensors.save_tensors`
  (a ``vector`` tensor, with ``layer`` and ``meta`` in the safetensors header), or a file of the earlier
  layout (a lone ``vector`` tensor with a JSON sidecar beside it): one direction, named ``meta["name"]`` or
  after the file, whose ``layer`` becomes a default layer to analyse;
* a plain safetensors file of ``[k, d_model]`` (or ``[d_model]``) tensors: the rows of every tensor, in
  key order, named ``key[i]`` (or ``key`` for a vector), used at every layer;
* a plain safetensors file with one tensor per layer, keyed by the layer number (``10``, ``layer.10``,
  ``layers_10``, ``L10``), each ``[k, d_model]`` with the same ``k``: the set to use at each of those layers,
  which are also the default layers.

Row names can be given in the safetensors metadata as ``names``: a JSON list with one name per row.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from mechscope.errors import InputError
from mechscope.storage.tensors import read_header

_LAYER_KEY = re.compile(r"^(?:layers?[._-]?|l)?(\d+)$", re.IGNORECASE)
#: The kind `mechscope.steering.directions.Direction` files are saved with.
DIRECTION_KIND = "direction"


@dataclass(frozen=True)
class DirectionSet:
    """Named directions, the same at every layer (``shared``) or given per layer (``per_layer``).

    Attributes:
        names: one name per direction (row).
        shared: ``[k, d_model]`` used at any layer, or None.
        per_layer: layer → ``[k, d_model]``; a layer listed here uses its own rows.
        layers: the layers the files name (Direction sidecars, per-layer keys); the default to analyse.
    """

    names: tuple[str, ...]
    shared: Tensor | None = None
    per_layer: dict[int, Tensor] = field(default_factory=dict)
    layers: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        tensors = ([self.shared] if self.shared is not None else []) + list(self.per_layer.values())
        if not tensors:
            raise InputError("the direction set is empty")
        for tensor in tensors:
            if tensor.dim() != 2 or tensor.shape[0] != len(self.names) or tensor.shape[1] != tensors[0].shape[1]:
                raise InputError(
                    f"direction tensors must all be [{len(self.names)}, d_model]; got {tuple(tensor.shape)}"
                )

    @property
    def d_model(self) -> int:
        """The width of the directions."""
        tensor = self.shared if self.shared is not None else next(iter(self.per_layer.values()))
        return int(tensor.shape[1])

    def at(self, layer: int) -> Tensor:
        """The ``[k, d_model]`` directions to use at ``layer`` (float32).

        Raises:
            InputError: the set is given per layer and has none for ``layer``.
        """
        if layer in self.per_layer:
            return self.per_layer[layer].float()
        if self.shared is None:
            have = ", ".join(str(i) for i in sorted(self.per_layer))
            raise InputError(f"the directions file has no directions for layer {layer} (it has layers {have})")
        return self.shared.float()

    @classmethod
    def from_tensor(cls, tensor: Tensor, names: Sequence[str] | None = None) -> DirectionSet:
        """Wrap a ``[k, d_model]`` (or ``[d_model]``) tensor, used at every layer."""
        if tensor.dim() not in (1, 2):
            raise InputError(f"directions must be [k, d_model] or [d_model]; got shape {tuple(tensor.shape)}")
        matrix = tensor.detach().float().cpu().reshape(-1, tensor.shape[-1])
        labels = tuple(names) if names is not None else tuple(f"d{i}" for i in range(matrix.shape[0]))
        return cls(names=labels, shared=matrix)


def load_directions(paths: Sequence[str | Path]) -> DirectionSet:
    """Read and concatenate the direction files ``paths`` (see the module docstring for the formats).

    Raises:
        InputError: a file is missing or unreadable, a tensor is not 1-D or 2-D, widths differ, or per-layer
            files do not cover the same layers.
    """
    if not paths:
        raise InputError("no directions file given")
    sets = [_load_one(Path(path)) for path in paths]
    return sets[0] if len(sets) == 1 else _concatenate(sets)


def _load_one(path: Path) -> DirectionSet:
    kind, _, meta = read_header(path, what="directions file")
    try:
        with safe_open(str(path), "pt") as handle:
            keys = list(handle.keys())
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key).float() for key in keys}
    except (SafetensorError, OSError) as error:
        raise InputError(f"'{path}' is not a readable safetensors file ({error})") from None
    if not tensors:
        raise InputError(f"'{path}' holds no tensors")
    for key, tensor in tensors.items():
        if tensor.dim() not in (1, 2):
            raise InputError(f"tensor '{key}' in '{path}' has shape {tuple(tensor.shape)}; expected [k, d_model]")
    legacy_direction = kind == "" and keys == ["vector"] and path.with_suffix(".json").is_file()
    if kind == DIRECTION_KIND or legacy_direction:
        return _from_direction(path, tensors, meta)
    layer_keys = {key: _LAYER_KEY.match(key) for key in keys}
    if all(layer_keys.values()) and len({t.reshape(-1, t.shape[-1]).shape[0] for t in tensors.values()}) == 1:
        per_layer = {
            int(match.group(1)): tensors[key].reshape(-1, tensors[key].shape[-1])
            for key, match in layer_keys.items()
            if match
        }
        k = next(iter(per_layer.values())).shape[0]
        names = _names(metadata, k, path) or tuple(f"d{i}" for i in range(k))
        return DirectionSet(names=names, per_layer=per_layer, layers=tuple(sorted(per_layer)))
    rows: list[Tensor] = []
    names_list: list[str] = []
    for key in keys:
        tensor = tensors[key]
        if tensor.dim() == 1:
            rows.append(tensor[None])
            names_list.append(path.stem if keys == ["vector"] else key)
        else:
            rows.append(tensor)
            names_list.extend(f"{key}[{i}]" for i in range(tensor.shape[0]))
    widths = {row.shape[1] for row in rows}
    if len(widths) > 1:
        raise InputError(f"the tensors in '{path}' have different widths {sorted(widths)}; they must share d_model")
    matrix = torch.cat(rows)
    return DirectionSet(names=_names(metadata, matrix.shape[0], path) or tuple(names_list), shared=matrix)


def _from_direction(path: Path, tensors: dict[str, Tensor], meta: dict[str, Any]) -> DirectionSet:
    if "vector" not in tensors:
        raise InputError(f"'{path}' is a direction file without a 'vector' tensor; save the direction again")
    try:
        layer = int(meta.get("layer", 0))
    except (TypeError, ValueError):
        raise InputError(f"the direction in '{path}' has no valid layer ({meta.get('layer')!r})") from None
    extra = meta.get("meta")
    name = str((extra.get("name") if isinstance(extra, dict) else None) or path.stem)
    return DirectionSet(names=(name,), shared=tensors["vector"].reshape(1, -1), layers=(layer,))


def _names(metadata: dict[str, str], k: int, path: Path) -> tuple[str, ...] | None:
    text = metadata.get("names")
    if text is None:
        return None
    try:
        names = json.loads(text)
    except json.JSONDecodeError:
        raise InputError(f"metadata 'names' of '{path}' is not a JSON list") from None
    if not isinstance(names, list) or len(names) != k:
        raise InputError(f"metadata 'names' of '{path}' must list {k} names, one per direction")
    return tuple(str(name) for name in names)


def _concatenate(sets: list[DirectionSet]) -> DirectionSet:
    widths = {s.d_model for s in sets}
    if len(widths) > 1:
        raise InputError(f"the directions files have different widths {sorted(widths)}; they must share d_model")
    names = tuple(name for s in sets for name in s.names)
    layered = [s for s in sets if s.per_layer]
    layers = tuple(sorted({layer for s in sets for layer in s.layers}))
    if not layered:
        shared = torch.cat([s.shared for s in sets if s.shared is not None])
        return DirectionSet(names=names, shared=shared, layers=layers)
    common = set(layered[0].per_layer)
    if any(set(s.per_layer) != common for s in layered):
        raise InputError("per-layer directions files must cover the same layers to be combined")
    per_layer = {layer: torch.cat([s.at(layer) for s in sets]) for layer in sorted(common)}
    return DirectionSet(names=names, per_layer=per_layer, layers=tuple(sorted(common)))
