"""Load a model and its tokenizer from a bundled organism name, a local folder or a hub id.

Loading always goes through transformers' own ``from_pretrained`` (safetensors first, remote code off
unless asked for). Failures become one-line `ModelLoadError` messages that say what to do.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mechscope.errors import ModelLoadError
from mechscope.models.archmap import ModelMap, build_map
from mechscope.models.families import FAMILIES
from mechscope.models.registry import find_organism

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float64": torch.float64,
}


@dataclass(frozen=True)
class LoadedModel:
    """A loaded model, its tokenizer, its architecture map and where it came from."""

    model: nn.Module
    tokenizer: Any
    arch: ModelMap
    source: str


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str | None:
    """Turn ``"bfloat16"``-style names into torch dtypes; ``"auto"`` and None pass through."""
    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    try:
        return DTYPES[dtype.lower()]
    except KeyError:
        raise ModelLoadError(f"unknown dtype '{dtype}'; use one of {', '.join(DTYPES)} or auto") from None


def resolve_source(name_or_path: str | os.PathLike[str]) -> tuple[str, bool]:
    """Return ``(where to load from, is_local)`` for an organism name, a folder or a hub id."""
    text = str(name_or_path).strip()
    if not text:
        raise ModelLoadError("empty model name; pass a hub id, a local folder or a bundled organism name")
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"folder '{path}' has no config.json; pass a save_pretrained folder")
        return str(path), True
    organism = find_organism(text)
    if organism is not None:
        return str(organism.path), True
    if text.startswith((".", "/", "~")) or path.exists():
        raise ModelLoadError(f"no model folder at '{text}'; check the path")
    return text, False


def _hub_error(name: str, error: BaseException) -> ModelLoadError:
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    lowered = first.lower()
    if any(word in lowered for word in ("offline", "cache", "connect", "resolve", "network", "internet")):
        return ModelLoadError(
            f"model '{name}' is not in the local Hugging Face cache and the hub cannot be reached; "
            f"run `hf download {name}` on a machine with network (same HF_HOME) or pass a local folder"
        )
    if "not a valid model identifier" in lowered or "repository not found" in lowered or "404" in lowered:
        return ModelLoadError(f"'{name}' is neither a local folder, a bundled organism nor a hub model id")
    return ModelLoadError(f"could not load '{name}': {first}")


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub's host answers a TCP connection within ``timeout`` seconds.

    huggingface_hub retries unreachable hosts for half a minute; asking once first lets a machine with
    no network fail in seconds with a useful message.
    """
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def _hub_access(name: str, revision: str | None) -> dict[str, Any]:
    """Extra ``from_pretrained`` arguments for hub id ``name``: local-only when cached, else check network."""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(name, "config.json", revision=revision)
    if isinstance(cached, str):
        return {"local_files_only": True}
    if not _hub_reachable():
        raise _hub_error(name, OSError("offline: not in cache and the hub cannot be reached"))
    return {}


def _model_class(config: Any) -> Any:
    import transformers

    spec = FAMILIES.get(str(getattr(config, "model_type", "")))
    if spec is not None and spec.kind == "encoder":
        return transformers.AutoModel
    return transformers.AutoModelForCausalLM


def load_model(
    name_or_path: str | os.PathLike[str],
    *,
    dtype: str | torch.dtype | None = "float32",
    device: str | torch.device | None = None,
    device_map: str | dict[str, Any] | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
) -> LoadedModel:
    """Load model + tokenizer with transformers and build their `ModelMap`.

    Args:
        name_or_path: a bundled organism name (``"toy"``), a ``save_pretrained`` folder or a hub id.
        dtype: ``"float32"``, ``"bfloat16"``, ``"float16"``, ``"auto"`` or a torch dtype.
        device: where to put the model when ``device_map`` is None (default: cpu).
        device_map: passed to ``from_pretrained`` (e.g. ``"auto"`` to spread a large model over GPUs).
        revision: a hub branch, tag or commit.
        trust_remote_code: run a hub repo's own modelling code; off unless you trust the repo.
        attn_implementation: ``"eager"``, ``"sdpa"`` ... (default: transformers' choice).

    Raises:
        ModelLoadError: the model cannot be found or read; the message says how to fix it.
    """
    import transformers

    torch_dtype = resolve_dtype(dtype)
    source, local = resolve_source(name_or_path)
    common: dict[str, Any] = {"revision": revision, "trust_remote_code": trust_remote_code}
    if local:
        common["local_files_only"] = True
    else:
        common.update(_hub_access(source, revision))
    try:
        config = transformers.AutoConfig.from_pretrained(source, **common)
    except (OSError, ValueError) as error:
        raise (_hub_error(source, error) if not local else _local_error(source, error)) from None
    kwargs: dict[str, Any] = {**common, "dtype": torch_dtype}
    if device_map is not None:
        kwargs["device_map"] = device_map
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = _model_class(config).from_pretrained(source, config=config, **kwargs)
        tokenizer = transformers.AutoTokenizer.from_pretrained(source, **common)
    except Exception as error:  # transformers and safetensors raise many types; all mean "cannot load"
        raise (_hub_error(source, error) if not local else _local_error(source, error)) from None
    if device_map is None:
        model = model.to(device or "cpu")
    model.eval()
    arch = build_map(model)
    _prepare_tokenizer(tokenizer, arch)
    return LoadedModel(model=model, tokenizer=tokenizer, arch=arch, source=source)


_FILE_WORDS = ("header", "safetensor", "corrupt", "truncat", "eof", "incomplete", "invalid load key", "deserializ")


def _local_error(source: str, error: BaseException) -> ModelLoadError:
    text = str(error).strip()
    first = text.splitlines()[0].split(". ")[0] if text else type(error).__name__
    hint = ""
    if any(word in f"{type(error).__name__} {text}".lower() for word in _FILE_WORDS):
        hint = "; a weight file is truncated or corrupt: re-save or re-download it"
    return ModelLoadError(f"could not load the model in '{source}': {first}{hint}")


def _prepare_tokenizer(tokenizer: Any, arch: ModelMap) -> None:
    """Give the tokenizer a pad token and the padding side the model needs for batching.

    Decoders pad on the left so that the last column is every prompt's last token during generation;
    encoders pad on the right as they were trained.
    """
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token or tokenizer.bos_token
        if fallback is None:
            raise ModelLoadError("the tokenizer has no pad, eos, unk or bos token to pad batches with")
        tokenizer.pad_token = fallback
    tokenizer.padding_side = "left" if arch.kind == "decoder" else "right"
