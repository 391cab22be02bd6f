"""Load a model and its tokenizer from a bundled organism name, a local folder or a hub id, or wrap one.

Loading always goes through transformers' own ``from_pretrained`` (safetensors first, remote code off
unless asked for). Failures become one-line `ModelLoadError` messages that say what to do. A folder
without tokenizer files loads without a tokenizer (token-id inputs only). `wrap_model` takes a model
already in memory (PEFT, quantized, sharded with ``device_map``, custom-loaded) instead.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mechscope.errors import ModelLoadError
from mechscope.models.archmap import ModelMap, build_map
from mechscope.models.families import FAMILIES
from mechscope.models.registry import find_organism

logger = logging.getLogger(__name__)

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
    """A loaded model, its tokenizer (None when the model has none), its architecture map and where it came from."""

    model: nn.Module
    tokenizer: Any
    arch: ModelMap
    source: str


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str | None:
    """Turn ``"bfloat16"``-style names into torch dtypes; ``"auto"`` and None pass through.

    Examples:
        >>> resolve_dtype("bf16"), resolve_dtype("float32"), resolve_dtype("auto")
        (torch.bfloat16, torch.float32, 'auto')
        >>> resolve_dtype("int4")
        Traceback (most recent call last):
        ...
        mechscope.errors.ModelLoadError: unknown dtype 'int4'; use one of float32, fp32, float16, ... or auto
    """
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype.lower() == "auto":
        return "auto"
    try:
        return DTYPES[dtype.lower()]
    except KeyError:
        raise ModelLoadError(f"unknown dtype '{dtype}'; use one of {', '.join(DTYPES)} or auto") from None


def resolve_device(device: str | torch.device | None) -> torch.device | None:
    """Check a device name (``"cpu"``, ``"cuda:1"``, ``"mps"``) before anything is loaded; None passes through.

    Examples:
        >>> resolve_device("cpu"), resolve_device(None)
        (device(type='cpu'), None)
        >>> resolve_device("gpu")  # not a torch device name: fails before any weight is read
        Traceback (most recent call last):
        ...
        mechscope.errors.ModelLoadError: unknown device 'gpu'; use cpu, cuda, cuda:1, mps ...

    Raises:
        ModelLoadError: the name is not a device, or that device is not available on this machine.
    """
    if device is None or isinstance(device, torch.device):
        return device
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ModelLoadError(f"unknown device '{device}'; use cpu, cuda, cuda:1, mps ...") from None
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ModelLoadError(f"device '{device}' is not available: torch sees no CUDA GPU here; use cpu")
        if resolved.index is not None and resolved.index >= count:
            raise ModelLoadError(f"device '{device}' is not available: torch sees {count} CUDA GPU(s) (cuda:0 ...)")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError(f"device '{device}' is not available on this machine; use cpu")
    return resolved


def resolve_source(name_or_path: str | os.PathLike[str]) -> tuple[str, bool]:
    """Return ``(where to load from, is_local)`` for an organism name, a folder or a hub id.

    Examples:
        >>> import tempfile
        >>> resolve_source("toy")  # a bundled organism: its folder inside the package
        ('.../mechscope/zoo/toy', True)
        >>> resolve_source("Qwen/Qwen3-0.6B")  # neither an organism nor a folder: a hub id
        ('Qwen/Qwen3-0.6B', False)
        >>> resolve_source(tempfile.mkdtemp())
        Traceback (most recent call last):
        ...
        mechscope.errors.ModelLoadError: folder '...' has no config.json; pass a save_pretrained folder
    """
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


def _first_sentence(error: BaseException) -> str:
    """The first sentence of an error message, on one line (messages often continue on the next line)."""
    text = " ".join(str(error).split())
    if not text:
        return type(error).__name__
    # A sentence ends at ". " but not inside "e.g. " / "i.e. " or an open parenthesis.
    first, depth = text, 0
    for i, char in enumerate(text):
        depth += (char == "(") - (char == ")")
        if char == "." and text[i + 1 : i + 2] == " " and depth <= 0 and text[max(0, i - 3) : i] not in ("e.g", "i.e"):
            first = text[:i]
            break
    first = first.rstrip(" .:")
    return first if len(first) <= 300 else first[:297] + "..."


def _hub_error(name: str, error: BaseException) -> ModelLoadError:
    first = _first_sentence(error)
    lowered = first.lower()
    if any(word in lowered for word in ("offline", "cache", "connect", "resolve", "network", "internet")):
        return ModelLoadError(
            f"model '{name}' is not in the local Hugging Face cache and the hub cannot be reached; "
            f"run `hf download {name}` on a machine with network (same HF_HOME) or pass a local folder"
        )
    if "not a valid model identifier" in lowered or "repository not found" in lowered or "404" in lowered:
        return ModelLoadError(f"'{name}' is neither a local folder, a bundled organism nor a hub model id")
    if "no file named" in lowered or "does not appear to have a file named" in lowered:
        return ModelLoadError(f"hub model '{name}' has no weight files transformers can load: {first}")
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

    A folder (or cached hub snapshot) without tokenizer files loads with ``tokenizer=None``: token-id
    inputs work, text raises `InputError`. transformers' progress bar shows only for loads that take a
    while: hub models and local checkpoints of `QUIET_LOAD_BYTES` or more.

    Args:
        name_or_path: a bundled organism name (``"toy"``), a ``save_pretrained`` folder or a hub id.
        dtype: ``"float32"``, ``"bfloat16"``, ``"float16"``, ``"auto"`` or a torch dtype.
        device: where to put the model when ``device_map`` is None (default: cpu).
        device_map: passed to ``from_pretrained`` (e.g. ``"auto"`` to spread a large model over GPUs).
        revision: a hub branch, tag or commit.
        trust_remote_code: run a hub repo's own modelling code; off unless you trust the repo.
        attn_implementation: ``"eager"``, ``"sdpa"`` ... (default: transformers' choice).

    Examples:
        >>> loaded = load_model("toy", dtype="bfloat16")
        >>> type(loaded.model).__name__, loaded.arch.family, next(loaded.model.parameters()).dtype
        ('LlamaForCausalLM', 'llama', torch.bfloat16)
        >>> loaded.source, loaded.tokenizer.padding_side  # decoders batch with left padding
        ('.../mechscope/zoo/toy', 'left')

    Raises:
        ModelLoadError: the model cannot be found or read (weights missing, truncated or corrupt; an unknown
            dtype or device); the message says how to fix it.
    """
    import transformers

    torch_dtype = resolve_dtype(dtype)
    target = resolve_device(device)
    source, local = resolve_source(name_or_path)
    common: dict[str, Any] = {"revision": revision, "trust_remote_code": trust_remote_code}
    if local:
        common["local_files_only"] = True
    else:
        common.update(_hub_access(source, revision))
    weight_bytes: int | None = None
    if local:
        weights = _weight_files(Path(source))
        if not weights:
            raise _missing_weights(source)
        weight_bytes = sum(path.stat().st_size for path in weights)
    try:
        config = transformers.AutoConfig.from_pretrained(source, **common)
    except (OSError, ValueError) as error:
        raise (_hub_error(source, error) if not local else _local_error(source, error)) from None
    kwargs: dict[str, Any] = {**common, "dtype": torch_dtype}
    if device_map is not None:
        kwargs["device_map"] = device_map
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    # A small local checkpoint loads in a moment: transformers' "Loading weights" bar would only be noise.
    quiet = weight_bytes is not None and weight_bytes < QUIET_LOAD_BYTES
    try:
        with _progress_bars(enabled=not quiet):
            model = _model_class(config).from_pretrained(source, config=config, **kwargs)
    except Exception as error:  # transformers and safetensors raise many types; all mean "cannot load"
        raise (_hub_error(source, error) if not local else _local_error(source, error)) from None
    tokenizer = _load_tokenizer(source, local, revision, common)
    if device_map is None:
        model = model.to(target or "cpu")
    model.eval()
    arch = build_map(model)
    if tokenizer is not None:
        _prepare_tokenizer(tokenizer, arch)
    return LoadedModel(model=model, tokenizer=tokenizer, arch=arch, source=source)


def wrap_model(model: nn.Module, tokenizer: Any = None) -> LoadedModel:
    """Bind a model already in memory (and optionally its tokenizer) the way `load_model` binds a loaded one.

    ``model`` is a transformers model however it was made: ``from_pretrained`` with quantization or a
    ``device_map``, built from a config, trained in this process. A wrapper that holds the transformers
    model (PEFT's ``PeftModel`` at ``.base_model.model``, ``DataParallel``'s ``.module``, ``torch.compile``'s
    ``._orig_mod``) is unwrapped: hooks go on the inner model's modules, where adapters such as LoRA sit
    in place, so they act on every pass. (Prompt-learning adapters, which live in the wrapper's own
    forward, do not.) The model is put in eval mode, as `load_model` does. A given tokenizer gets a pad
    token if it has none and the padding side mechscope batches with (left for decoders, right for encoders).

    Raises:
        ModelLoadError: ``model`` is not a transformers model (or a wrapper of one), or ``tokenizer`` is not a
            tokenizer.
        ArchitectureError: the architecture map cannot be built for the model.

    Examples:
        >>> import torch
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        ...                      num_attention_heads=4, num_key_value_heads=4)
        >>> model = LlamaForCausalLM(config)  # built in memory: no folder, no tokenizer
        >>> loaded = wrap_model(model)
        >>> loaded.source, loaded.tokenizer, loaded.arch.n_layers, loaded.arch.d_model, model.training
        ('LlamaForCausalLM', None, 2, 32, False)
        >>> wrap_model(torch.nn.Linear(2, 2))
        Traceback (most recent call last):
        ...
        mechscope.errors.ModelLoadError: Linear has no Hugging Face config; wrap() takes a transformers model ...
    """
    if not isinstance(model, nn.Module):
        raise ModelLoadError(
            f"wrap() takes a torch model (a transformers PreTrainedModel), not a {type(model).__name__}; "
            "load one with from_pretrained first"
        )
    inner = _inner_model(model)
    config = getattr(inner, "config", None)
    if config is None or not hasattr(config, "model_type"):
        raise ModelLoadError(
            f"{type(model).__name__} has no Hugging Face config; wrap() takes a transformers model "
            "(PreTrainedModel) or a wrapper that holds one (PEFT, DataParallel, torch.compile)"
        )
    if tokenizer is not None and not (callable(tokenizer) and hasattr(tokenizer, "pad_token")):
        raise ModelLoadError(
            f"the tokenizer given is a {type(tokenizer).__name__}, not a transformers tokenizer; "
            "pass AutoTokenizer.from_pretrained(...) or leave it out to use token ids"
        )
    model.eval()
    arch = build_map(inner)
    if tokenizer is not None:
        _prepare_tokenizer(tokenizer, arch)
    return LoadedModel(model=inner, tokenizer=tokenizer, arch=arch, source=_model_source(inner))


_WRAPPER_PATHS = ("_orig_mod", "module", "base_model.model")  # torch.compile, DataParallel / DDP, PEFT


def _inner_model(model: nn.Module) -> nn.Module:
    """The transformers model inside ``model``: itself, or what a known wrapper holds (a few levels deep)."""
    from transformers import PreTrainedModel

    current = model
    for _ in range(4):
        if isinstance(current, PreTrainedModel):
            break
        for path in _WRAPPER_PATHS:
            inner: Any = current
            for name in path.split("."):
                inner = getattr(inner, name, None)
            if isinstance(inner, nn.Module) and inner is not current:
                current = inner
                break
        else:
            break
    return current


def _model_source(model: nn.Module) -> str:
    """What a wrapped model calls itself: its ``name_or_path`` (the folder or hub id), else its class name."""
    config = getattr(model, "config", None)
    for name in (getattr(model, "name_or_path", None), getattr(config, "_name_or_path", None)):
        if isinstance(name, str | os.PathLike) and str(name):
            return str(name)
    return type(model).__name__


QUIET_LOAD_BYTES = 500 * 2**20
"""Local checkpoints whose weight files total less than this load without transformers' progress bar."""

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".index.json")
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "tokenizer.tiktoken",
    "tekken.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "special_tokens_map.json",
)


def _weight_files(folder: Path) -> list[Path]:
    """The files of ``folder`` that can hold weights (or list them: shard indexes)."""
    return [p for p in folder.iterdir() if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES)]


def _missing_weights(source: str) -> ModelLoadError:
    return ModelLoadError(
        f"'{source}' has a config.json but no weight files (model.safetensors, pytorch_model.bin or a shard "
        "index); save the model there with save_pretrained or download its weights into it"
    )


@contextmanager
def _progress_bars(*, enabled: bool) -> Iterator[None]:
    """Turn transformers' progress bars off for the block when ``enabled`` is False, then restore them."""
    from transformers.utils import logging as hf_logging

    if enabled or not hf_logging.is_progress_bar_enabled():
        yield
        return
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()


def _load_tokenizer(source: str, local: bool, revision: str | None, common: dict[str, Any]) -> Any:
    """The tokenizer of ``source``, or None when its folder (or cached hub snapshot) has no tokenizer files."""
    import transformers

    try:
        return transformers.AutoTokenizer.from_pretrained(source, **common)
    except Exception as error:  # tokenizers fail in many ways; a folder without tokenizer files is not an error
        folder = Path(source) if local else _cached_snapshot(source, revision)
        if folder is not None and not any((folder / name).is_file() for name in _TOKENIZER_FILES):
            logger.info("%s has no tokenizer files; loaded without a tokenizer (token-id inputs only)", source)
            return None
        if not local:
            raise _hub_error(source, error) from None
        raise ModelLoadError(
            f"could not load the tokenizer in '{source}': {_first_sentence(error)}; "
            "re-save it with tokenizer.save_pretrained, or remove the tokenizer files to load token ids only"
        ) from None


def _cached_snapshot(name: str, revision: str | None) -> Path | None:
    """The local snapshot folder of hub model ``name`` (where its config.json was cached), if any."""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(name, "config.json", revision=revision)
    return Path(cached).parent if isinstance(cached, str) else None


_FILE_WORDS = ("header", "safetensor", "corrupt", "truncat", "eof", "incomplete", "invalid load key", "deserializ")


def _local_error(source: str, error: BaseException) -> ModelLoadError:
    text = str(error).strip()
    first = _first_sentence(error)
    if "no file named" in text.lower():
        return _missing_weights(source)
    hint = ""
    if any(word in f"{type(error).__name__} {text}".lower() for word in _FILE_WORDS):
        hint = "; a weight file is truncated or corrupt: re-save or re-download it"
    return ModelLoadError(f"could not load the model in '{source}': {first}{hint}")


def _prepare_tokenizer(tokenizer: Any, arch: ModelMap) -> None:
    """Give the tokenizer a pad token and the padding side the model needs for batching.

    Decoders pad on the left so that the last column is every prompt's last token during generation;
    encoders pad on the right as they were trained.

    Raises:
        ModelLoadError: the tokenizer can produce ids the model's embedding has no row for.
    """
    size, rows = len(tokenizer), int(getattr(arch.embed_module(), "num_embeddings", arch.vocab))
    if size > rows:
        raise ModelLoadError(
            f"the tokenizer has {size} tokens but the model's embedding has {rows} rows, so some token ids "
            "have no embedding; load the tokenizer that belongs to this model (or resize the model's embeddings)"
        )
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token or tokenizer.bos_token
        if fallback is None:
            raise ModelLoadError("the tokenizer has no pad, eos, unk or bos token to pad batches with")
        tokenizer.pad_token = fallback
    tokenizer.padding_side = "left" if arch.kind == "decoder" else "right"
