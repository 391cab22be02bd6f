"""SAEs on disk in SAELens's layout, and which mechscope site a SAELens hook name is.

A SAELens SAE is a folder with ``cfg.json`` and ``sae_weights.safetensors`` (``W_enc``, ``b_enc``, ``W_dec``,
``b_dec``; ``threshold`` for JumpReLU). `load` reads both layouts SAELens has written: version 6
(``architecture``, ``d_in``, ``d_sae``, ``apply_b_dec_to_input``, ``normalize_activations``, ``k`` for TopK,
and the model and hook under ``metadata``) and the earlier flat one (``hook_name``, ``model_name``,
``activation_fn_str`` with ``activation_fn_kwargs: {"k": ...}`` at the top level). `save` writes version 6's
keys and the flat ones beside them, which version 6 ignores, so that either SAELens reads our SAEs; the
mechscope site goes under ``metadata.mechscope_site``. Only safetensors is read or written, never a pickle.

Hook names are TransformerLens's (SAELens uses them): ``blocks.L.hook_resid_pre`` → ``resid_pre.L``,
``hook_resid_post`` → ``resid_post.L``, ``hook_attn_out`` → ``attn_out.L``, ``hook_mlp_out`` →
``mlp_out.L``, ``blocks.L.attn.hook_z`` → ``head_out.L`` (all heads, flattened to ``heads × head_dim``),
``hook_embed`` → ``embed``. A mechscope site name is accepted as a hook name too.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mechscope.core.layers import resolve_layer
from mechscope.errors import InputError, SiteError
from mechscope.sae.model import SAE, SAEConfig
from mechscope.storage.atomic import atomic_write, atomic_write_text

if TYPE_CHECKING:
    from mechscope.core.lm import LanguageModel

CFG_NAME = "cfg.json"
WEIGHTS_NAME = "sae_weights.safetensors"
#: mechscope site kinds an SAE can read, with their TransformerLens hook names.
HOOKS = {
    "resid_pre": "blocks.{layer}.hook_resid_pre",
    "resid_post": "blocks.{layer}.hook_resid_post",
    "attn_out": "blocks.{layer}.hook_attn_out",
    "mlp_out": "blocks.{layer}.hook_mlp_out",
    "head_out": "blocks.{layer}.attn.hook_z",
    "embed": "hook_embed",
}
_HOOK_RE = re.compile(
    r"^blocks\.(?P<layer>\d+)\.(?P<name>hook_resid_pre|hook_resid_post|hook_attn_out|hook_mlp_out|attn\.hook_z)$"
)
_KINDS = {"hook_resid_pre": "resid_pre", "hook_resid_post": "resid_post", "hook_attn_out": "attn_out"}
_KINDS |= {"hook_mlp_out": "mlp_out", "attn.hook_z": "head_out"}
_SITE_RE = re.compile(r"^(?P<kind>resid_pre|resid_post|attn_out|mlp_out|head_out)\.(?P<layer>-?\d+)$|^embed$")


def site_of_hook(hook_name: str) -> str:
    """The mechscope site a TransformerLens / SAELens hook name reads.

    Examples:
        >>> site_of_hook("blocks.2.hook_resid_post"), site_of_hook("blocks.0.attn.hook_z")
        ('resid_post.2', 'head_out.0')
        >>> site_of_hook("mlp_out.1")  # a mechscope site is its own hook name
        'mlp_out.1'

    Raises:
        SiteError: a hook mechscope has no site for (the message lists the ones it has).
    """
    if hook_name == "hook_embed":
        return "embed"
    if _SITE_RE.match(hook_name):
        return hook_name
    found = _HOOK_RE.match(hook_name)
    if found is None:
        known = ", ".join(sorted(set(HOOKS.values())))
        raise SiteError(f"SAE hook '{hook_name}' has no mechscope site; SAEs can read {known} (L a layer)")
    return f"{_KINDS[found['name']]}.{found['layer']}"


def hook_of_site(site: str) -> str:
    """The TransformerLens hook name of a site an SAE can read (``resid_post.2`` → ``blocks.2.hook_resid_post``).

    Examples:
        >>> hook_of_site("resid_post.2"), hook_of_site("head_out.1"), hook_of_site("embed")
        ('blocks.2.hook_resid_post', 'blocks.1.attn.hook_z', 'hook_embed')
        >>> hook_of_site("resid_post.-1")
        Traceback (most recent call last):
        ...
        mechscope.errors.SiteError: an SAE reads one whole site: ... (L >= 0); got 'resid_post.-1'

    Raises:
        SiteError: a site an SAE cannot read (a pattern, a single head, a router).
    """
    found = _SITE_RE.match(site)
    if found is None or (found["layer"] is not None and int(found["layer"]) < 0):
        raise SiteError(
            f"an SAE reads one whole site: resid_pre.L, resid_post.L, attn_out.L, mlp_out.L, head_out.L or embed "
            f"(L >= 0); got '{site}'"
        )
    if site == "embed":
        return HOOKS["embed"]
    return HOOKS[found["kind"]].format(layer=found["layer"])


def resolve_site(site: str, lm: LanguageModel) -> str:
    """``site`` with a layer counted from the end made absolute (``resid_post.-1`` → ``resid_post.3`` on toy).

    Examples:
        >>> import mechscope as ms
        >>> lm = ms.load("toy")
        >>> resolve_site("resid_post.-1", lm), resolve_site("head_out.1", lm), resolve_site("embed", lm)
        ('resid_post.3', 'head_out.1', 'embed')

    Raises:
        SiteError: a site an SAE cannot read, or a layer the model lacks.
    """
    found = _SITE_RE.match(site)
    if found is None or found["layer"] is None:
        return site  # not a layered SAE site: site_width and hook_of_site name the problem
    return f"{found['kind']}.{resolve_layer(int(found['layer']), lm.arch.n_layers)}"


def site_width(site: str, lm: LanguageModel) -> int:
    """How wide ``site``'s value is on ``lm`` (``head_out.L``: heads × head_dim).

    Examples:
        >>> import mechscope as ms
        >>> lm = ms.load("toy")
        >>> site_width("resid_post.2", lm), site_width("head_out.1", lm), lm.arch.n_heads * lm.arch.head_dim
        (128, 128, 128)

    Raises:
        SiteError: the site does not exist on ``lm`` (its layer is out of range, or it is not SAE-readable).
    """
    hook_of_site(site)
    resolved = lm.sites(site)  # checks the layer against the model
    if resolved[0].kind == "head_out":
        return int(lm.arch.n_heads * lm.arch.head_dim)
    return int(lm.arch.d_model)


def check_fits(sae: SAE, lm: LanguageModel, *, force: bool = False) -> None:
    """Refuse an SAE whose site is missing on ``lm``, whose width is not the site's, or made for another model.

    Examples:
        >>> import mechscope as ms
        >>> lm = ms.load("toy")
        >>> sae = ms.sae.SAE.random(lm.arch.d_model, 256, "resid_post.2", k=8, seed=0)
        >>> check_fits(sae, lm)  # the right site and width, and no model recorded: it fits
        >>> check_fits(ms.sae.SAE.random(64, 256, "resid_post.2", k=8), lm)
        Traceback (most recent call last):
        ...
        mechscope.errors.InputError: the SAE reads 64-wide values at resid_post.2, but ... has 128 there; ...
        >>> check_fits(sae.with_config(model="gpt2"), lm)
        Traceback (most recent call last):
        ...
        mechscope.errors.ProvenanceError: the SAE was made for 'gpt2', not '...toy'; ...
        >>> check_fits(sae.with_config(model="gpt2"), lm, force=True)  # run it anyway

    Raises:
        SiteError: the site does not exist on the model.
        InputError: ``d_in`` differs from the site's width.
        ProvenanceError: the SAE records another model (and not ``force``).
    """
    from mechscope.models.registry import check_provenance

    try:
        width = site_width(sae.site, lm)
    except SiteError as error:
        raise SiteError(f"the SAE reads {sae.site}, which {lm.source} lacks: {error}") from None
    if width != sae.config.d_in:
        raise InputError(
            f"the SAE reads {sae.config.d_in}-wide values at {sae.site}, but {lm.source} has {width} there; "
            "give an SAE trained on this model"
        )
    check_provenance(sae.config.model or "", lm.source, "SAE", force=force)


# --- reading -----------------------------------------------------------------------------------------------


def _folder(path: str | os.PathLike[str]) -> Path:
    source = Path(path)
    if source.name == CFG_NAME or source.name == WEIGHTS_NAME:
        source = source.parent
    if not source.exists():
        raise InputError(f"no SAE at '{source}'; give a folder with {CFG_NAME} and {WEIGHTS_NAME}")
    if not (source / CFG_NAME).is_file():
        raise InputError(f"'{source}' has no {CFG_NAME}; an SAE folder holds {CFG_NAME} and {WEIGHTS_NAME}")
    if not (source / WEIGHTS_NAME).is_file():
        raise InputError(f"'{source}' has no {WEIGHTS_NAME} (only safetensors SAEs are read, never pickles)")
    return source


def read_config(path: str | os.PathLike[str]) -> SAEConfig:
    """The `SAEConfig` of a SAELens ``cfg.json`` (either layout).

    Examples:
        SAELens < 6's flat layout, a TopK SAE whose ``k`` sits in ``activation_fn_kwargs``:

        >>> import json, tempfile
        >>> from pathlib import Path
        >>> folder = Path(tempfile.mkdtemp())
        >>> cfg = {"d_in": 128, "d_sae": 256, "hook_name": "blocks.2.hook_resid_post", "model_name": "gpt2",
        ...        "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 8}}
        >>> _ = (folder / "cfg.json").write_text(json.dumps(cfg))
        >>> _ = (folder / "sae_weights.safetensors").write_bytes(b"")  # read_config reads only cfg.json
        >>> config = read_config(folder)
        >>> config.site, config.architecture, config.k, config.model
        ('resid_post.2', 'topk', 8, 'gpt2')

    Raises:
        InputError: the file is not JSON or lacks ``d_in`` / ``d_sae`` / a hook name, or names an architecture
            or normalisation mechscope does not run (gated, ...), or sets ``rescale_acts_by_decoder_norm`` or
            ``finetuning_scaling_factor``.
        SiteError: the hook has no mechscope site.
    """
    folder = _folder(path)
    try:
        raw = json.loads((folder / CFG_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"'{folder / CFG_NAME}' is not a JSON SAE config ({error})") from None
    if not isinstance(raw, dict):
        raise InputError(f"'{folder / CFG_NAME}' is not a JSON object")
    metadata = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}
    assert isinstance(metadata, dict)

    def pick(key: str) -> Any:
        return metadata.get(key, raw.get(key))

    missing = [key for key in ("d_in", "d_sae") if not isinstance(raw.get(key), int)]
    if missing:
        raise InputError(f"'{folder / CFG_NAME}' lacks {' and '.join(missing)} (an integer each)")
    hook_name = pick("hook_name")
    site = pick("mechscope_site") or (site_of_hook(hook_name) if isinstance(hook_name, str) else None)
    if site is None:
        raise InputError(f"'{folder / CFG_NAME}' names no hook_name; it says where on the model the SAE reads")
    if pick("hook_head_index") is not None:
        raise InputError(f"'{folder / CFG_NAME}' reads one head (hook_head_index); mechscope's SAEs read whole sites")
    architecture = str(raw.get("architecture") or "standard")
    activation = str(raw.get("activation_fn_str") or "")
    kwargs = raw.get("activation_fn_kwargs") if isinstance(raw.get("activation_fn_kwargs"), dict) else {}
    assert isinstance(kwargs, dict)
    if architecture == "standard" and activation == "topk":
        architecture = "topk"  # SAELens 5 wrote TopK SAEs as standard + activation_fn_str "topk"
    if architecture not in ("standard", "topk", "jumprelu"):
        raise InputError(
            f"'{folder / CFG_NAME}' is a {architecture} SAE; mechscope runs standard (ReLU), topk and jumprelu"
        )
    for flag in ("rescale_acts_by_decoder_norm", "finetuning_scaling_factor"):  # both change the maths if set
        if raw.get(flag):
            raise InputError(f"'{folder / CFG_NAME}' sets {flag}, which mechscope does not run; fold it in first")
    k = raw.get("k", kwargs.get("k"))
    known = {"d_in", "d_sae", "architecture", "k", "apply_b_dec_to_input", "normalize_activations", "metadata"}
    known |= {"hook_name", "model_name", "activation_fn_str", "activation_fn_kwargs", "norm_scaling_factor"}
    known |= {"dtype", "device", "reshape_activations", "hook_layer", "hook_head_index"}  # written from the rest
    extra = {key: value for key, value in raw.items() if key not in known}
    extra |= {f"metadata.{key}": value for key, value in metadata.items() if key not in ("hook_name", "model_name")}
    return SAEConfig(
        d_in=int(raw["d_in"]),
        d_sae=int(raw["d_sae"]),
        site=str(site),
        architecture=architecture,  # type: ignore[arg-type]
        k=int(k) if k is not None else None,
        apply_b_dec_to_input=bool(raw.get("apply_b_dec_to_input", True)),
        normalize_activations=str(raw.get("normalize_activations") or "none"),  # type: ignore[arg-type]
        norm_scaling_factor=raw.get("norm_scaling_factor"),
        model=pick("model_name"),
        hook_name=hook_name if isinstance(hook_name, str) else None,
        extra=extra,
    )


def load(
    path: str | os.PathLike[str],
    lm: LanguageModel | None = None,
    *,
    device: str | torch.device | None = None,
    force: bool = False,
) -> SAE:
    """Read an SAE folder in SAELens's layout (``cfg.json`` + ``sae_weights.safetensors``).

    Args:
        path: the folder (or its ``cfg.json``).
        lm: the model it will run on: its site and width are checked, and it goes to the model's device.
        device: where to put the weights (default: ``lm``'s device, else the CPU).
        force: run an SAE made for another model (of the same width) anyway.

    Examples:
        >>> import tempfile, torch, mechscope as ms
        >>> lm = ms.load("toy")
        >>> sae = ms.sae.SAE.random(lm.arch.d_model, 256, "resid_post.2", k=8, seed=0)
        >>> folder = save(sae, tempfile.mkdtemp())
        >>> loaded = load(folder, lm)  # checked against the model, and put on its device
        >>> loaded.site, loaded.config.architecture, loaded.config.k, loaded.d_sae
        ('resid_post.2', 'topk', 8, 256)
        >>> torch.equal(loaded.W_dec, sae.W_dec)
        True

    Raises:
        InputError: a missing or malformed file, weights of the wrong shape, or a width that is not the site's.
        SiteError: the SAE's hook has no mechscope site, or the site is missing on ``lm``.
        ProvenanceError: the SAE records another model than ``lm`` (and not ``force``).
    """
    folder = _folder(path)
    config = read_config(folder)
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(folder / WEIGHTS_NAME))
    except (SafetensorError, OSError, ValueError) as error:
        raise InputError(f"'{folder / WEIGHTS_NAME}' is not a readable safetensors file ({error})") from None
    dtypes = {tensor.dtype for tensor in tensors.values()}
    sae = SAE(config, dtype=dtypes.pop() if len(dtypes) == 1 else torch.float32)
    expected = {name: tuple(param.shape) for name, param in sae.named_parameters()}
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise InputError(f"'{folder / WEIGHTS_NAME}' lacks {', '.join(missing)} for a {config.architecture} SAE")
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise InputError(
                f"'{folder / WEIGHTS_NAME}': {name} has shape {tuple(tensors[name].shape)}; "
                f"cfg.json's d_in={config.d_in}, d_sae={config.d_sae} need {shape}"
            )
    sae.load_state_dict({name: tensors[name] for name in expected})
    if lm is not None:
        check_fits(sae, lm, force=force)
    target = device if device is not None else (lm.device if lm is not None else None)
    return sae.to(target) if target is not None else sae


# --- writing -----------------------------------------------------------------------------------------------


def config_dict(config: SAEConfig, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """``cfg.json`` for ``config``: SAELens 6's keys, with the flat keys of earlier SAELens beside them.

    Examples:
        >>> cfg = config_dict(SAEConfig(d_in=128, d_sae=256, site="mlp_out.1", k=8))
        >>> cfg["architecture"], cfg["k"], cfg["metadata"]["hook_name"], cfg["metadata"]["mechscope_site"]
        ('topk', 8, 'blocks.1.hook_mlp_out', 'mlp_out.1')
        >>> cfg["hook_name"], cfg["activation_fn_str"], cfg["activation_fn_kwargs"]  # the flat layout's keys
        ('blocks.1.hook_mlp_out', 'topk', {'k': 8})
    """
    hook_name = config.hook_name or hook_of_site(config.site)
    metadata = {
        key.removeprefix("metadata."): value for key, value in config.extra.items() if key.startswith("metadata.")
    }
    metadata |= {"model_name": config.model, "hook_name": hook_name, "mechscope_site": config.site}
    metadata.setdefault("hook_head_index", None)
    flat = {key: value for key, value in config.extra.items() if not key.startswith("metadata.")}
    cfg: dict[str, Any] = {
        **flat,
        "architecture": config.architecture,
        "d_in": config.d_in,
        "d_sae": config.d_sae,
        "dtype": str(dtype).removeprefix("torch."),
        "device": "cpu",
        "apply_b_dec_to_input": config.apply_b_dec_to_input,
        "normalize_activations": config.normalize_activations,
        "reshape_activations": "hook_z" if config.site.startswith("head_out") else "none",
        "metadata": metadata,
        # the flat layout (SAELens < 6)
        "model_name": config.model,
        "hook_name": hook_name,
        "hook_layer": int(config.site.split(".")[1]) if "." in config.site else 0,
        "hook_head_index": None,
        "activation_fn_str": {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu"}[config.architecture],
        "activation_fn_kwargs": {"k": config.k} if config.k is not None else {},
    }
    if config.k is not None:
        cfg["k"] = config.k
    if config.norm_scaling_factor is not None:
        cfg["norm_scaling_factor"] = config.norm_scaling_factor
    return cfg


def save(sae: SAE, path: str | os.PathLike[str]) -> Path:
    """Write ``sae`` as a SAELens folder (``cfg.json`` + ``sae_weights.safetensors``), each file atomically.

    Examples:
        >>> import json, tempfile, mechscope as ms
        >>> sae = ms.sae.SAE.random(128, 256, "resid_post.2", k=8, seed=0)
        >>> folder = save(sae, tempfile.mkdtemp())
        >>> sorted(path.name for path in folder.iterdir())
        ['cfg.json', 'sae_weights.safetensors']
        >>> json.loads((folder / "cfg.json").read_text())["metadata"]["hook_name"]
        'blocks.2.hook_resid_post'

    Returns:
        The folder.
    """
    from safetensors.torch import save_file

    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"'{folder}' is a file; give a folder for the SAE")
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: param.detach().cpu().contiguous() for name, param in sae.named_parameters()}
    atomic_write(folder / WEIGHTS_NAME, lambda temporary: save_file(tensors, str(temporary)))
    atomic_write_text(
        folder / CFG_NAME, json.dumps(config_dict(sae.config, sae.W_enc.dtype), indent=2, sort_keys=True) + "\n"
    )
    return folder


__all__ = ["CFG_NAME", "HOOKS", "WEIGHTS_NAME", "check_fits", "config_dict", "hook_of_site", "load", "read_config"]
__all__ += ["resolve_site", "save", "site_of_hook", "site_width"]
