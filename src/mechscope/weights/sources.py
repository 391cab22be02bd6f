"""Where a checkpoint's weight files are: a file, a folder, an HF cache folder, a hub id, a shard index.

A bundled organism's name (``toy``) resolves to its folder, as `mechscope.load` resolves it.

`resolve_source` turns what the user gave into the weight files to open, their format, the tensors a
shard index promises (checked once the files are open), and the model's hub id and revision when known
(from the HF cache layout ``models--org--name/snapshots/<commit>``, or from the manifest
`mechscope.weights.download` writes). A folder's weight files are chosen in the order safetensors (its
index, ``model.safetensors`` or any ``*.safetensors``), ``.bin``, GGUF (one file, or the parts of one split
file), ``.npz`` (one file).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from mechscope.errors import WeightFileError
from mechscope.weights.backends import FORMATS

logger = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")  # org/name, or a legacy top-level name (gpt2)
_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".npz", ".json")
_GGUF_SPLIT = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$")


@dataclass(frozen=True)
class Source:
    """The weight files of a checkpoint and what is known about it.

    Attributes:
        path: The file or folder that was resolved (an HF cache repo becomes its snapshot folder).
        format: One of `mechscope.weights.backends.FORMATS`.
        files: The weight files, in order.
        expected: Tensor name -> shard, for the tensors a shard index lists (empty without an index).
        model_id: The hub id when known, else None.
        revision: The commit of an HF cache snapshot or download manifest, or the revision asked for.
    """

    path: Path
    format: str
    files: list[Path]
    expected: dict[str, Path] = field(default_factory=dict)
    model_id: str | None = None
    revision: str | None = None


def resolve_source(source: str | Path, *, revision: str | None = None, cache_dir: Path | None = None) -> Source:
    """The weight files of ``source`` (see `mechscope.weights.reader.open_checkpoint` for what it may be).

    Raises:
        WeightFileError: nothing found, a shard missing, an unreadable index (one line naming the file).
    """
    path = Path(source).expanduser()
    model_id: str | None = None
    if not path.exists():
        from mechscope.models.registry import find_organism

        text = str(source)
        organism = find_organism(text)
        if organism is not None:
            path = organism.path
        elif _is_hub_id(text):
            model_id = text
            path = _from_hub(text, revision, cache_dir)
        else:
            raise WeightFileError(
                f"{source} does not exist; pass a checkpoint file, a model folder, a bundled organism name "
                "or a hub id org/name"
            )
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
    return Source(path, fmt, files, expected, model_id=model_id, revision=revision)


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
    found = {fmt: sorted(p for p in folder.iterdir() if p.is_file() and _format_of_file(p) == fmt) for fmt in FORMATS}
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


def _is_hub_id(text: str) -> bool:
    """Whether ``text`` (not an existing path) can name a hub model rather than a missing local file."""
    return bool(_HUB_ID.match(text)) and ".." not in text and "--" not in text and not text.endswith(_FILE_SUFFIXES)


def _from_hub(model_id: str, revision: str | None, cache_dir: Path | None) -> Path:
    """The local snapshot of a hub id: the HF cache when it has one, else a fresh download.

    Raises:
        WeightFileError: it is in neither the HF cache nor a verified download folder and the hub cannot
            be reached.
    """
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model_id, revision=revision, cache_dir=cache_dir, local_files_only=True))
    except Exception as error:  # LocalEntryNotFoundError and friends: not cached, fall through to download
        logger.info("%s is not in the local HF cache (%s); downloading", model_id, type(error).__name__)
    from mechscope.weights.download import _hub_offline, download

    out = cache_dir or Path("data/models")
    if not out.joinpath(*model_id.split("/")).is_dir() and _hub_offline():
        raise WeightFileError(
            f"'{model_id}' is not a local path nor in the local Hugging Face cache, and the hub cannot be "
            f"reached to download it; run `mechscope weights download --model-id {model_id}` on a machine "
            "with network (or set HF_HOME to a cache that has it), or pass a local folder"
        )
    return download(model_id, revision=revision, out=out)
