"""The SAE core (`mechscope.sae.model`) and SAELens's folder layout (`mechscope.sae.formats`).

Encoding and decoding are checked against a numpy implementation written here from SAELens's formulas
(``sae_lens/saes/{standard,topk,jumprelu}_sae.py`` and the run-time normalisations of ``sae.py``); the
configs are written by hand from SAELens's documented keys, in its version-6 layout and the older flat one.
SAELens itself is not installed (it pulls transformer-lens), so there is no side-by-side run with it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import mechscope as ms
from mechscope.errors import InputError, ProvenanceError, SiteError
from mechscope.sae import SAE, SAEConfig, formats

D, F = 128, 256  # the toy's d_model; features


@pytest.fixture(scope="module")
def lm() -> Any:
    return ms.load("toy")


def _randomised(sae: SAE, seed: int = 0) -> SAE:
    """Every parameter random (an encoder unlike the decoder's transpose, nonzero biases, mixed thresholds)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sae.named_parameters():
            scale = 1.0 if name.startswith("W") else 0.3
            param.copy_(scale * torch.randn(param.shape, generator=generator).to(param.dtype))
    return sae


def _weights(config: dict[str, Any], seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    d_in, d_sae = config["d_in"], config["d_sae"]
    return {
        "W_enc": torch.randn(d_in, d_sae, generator=generator),
        "b_enc": torch.randn(d_sae, generator=generator),
        "W_dec": torch.randn(d_sae, d_in, generator=generator),
        "b_dec": torch.randn(d_in, generator=generator),
    }


def _write(folder: Path, config: dict[str, Any], tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """A SAELens folder written by hand: cfg.json and sae_weights.safetensors."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cfg.json").write_text(json.dumps(config), encoding="utf-8")
    save_file(tensors if tensors is not None else _weights(config), str(folder / "sae_weights.safetensors"))
    return folder


# --- numpy reference, from SAELens's formulas ------------------------------------------------------------------


def _np_normalize(x: np.ndarray, how: str, d_in: int, factor: float | None) -> tuple[np.ndarray, Any]:
    if how == "constant_norm_rescale":
        coeff = np.sqrt(d_in) / np.linalg.norm(x, axis=-1, keepdims=True)
        return x * coeff, ("scale", coeff)
    if how == "layer_norm":
        mu = x.mean(axis=-1, keepdims=True)
        std = (x - mu).std(axis=-1, ddof=1, keepdims=True)  # torch's Tensor.std is the unbiased one
        return (x - mu) / (std + 1e-5), ("affine", mu, std)
    if how == "expected_average_only_in":
        return x * factor, ("scale", np.float64(factor))
    return x, ("scale", np.float64(1.0))


def _np_denormalize(out: np.ndarray, state: Any) -> np.ndarray:
    if state[0] == "scale":
        return out / state[1]
    return out * state[2] + state[1]


def _np_encode(sae: SAE, x: np.ndarray) -> np.ndarray:
    c = sae.config
    p = {name: param.detach().double().numpy() for name, param in sae.named_parameters()}
    xn, _ = _np_normalize(x, c.normalize_activations, c.d_in, c.norm_scaling_factor)
    if c.apply_b_dec_to_input:
        xn = xn - p["b_dec"]
    h = xn @ p["W_enc"] + p["b_enc"]
    if c.architecture == "standard":
        return np.maximum(h, 0)
    if c.architecture == "jumprelu":
        return np.maximum(h, 0) * (h > p["threshold"])
    f = np.zeros_like(h)
    top = np.argsort(-h, axis=-1)[..., : c.k]
    np.put_along_axis(f, top, np.maximum(np.take_along_axis(h, top, axis=-1), 0), axis=-1)
    return f


def _np_decode(sae: SAE, f: np.ndarray, x: np.ndarray) -> np.ndarray:
    c = sae.config
    out = f @ sae.W_dec.detach().double().numpy() + sae.b_dec.detach().double().numpy()
    return _np_denormalize(out, _np_normalize(x, c.normalize_activations, c.d_in, c.norm_scaling_factor)[1])


ARCHS = [("standard", None), ("topk", 12), ("jumprelu", None)]
NORMS = ["none", "constant_norm_rescale", "layer_norm", "expected_average_only_in"]


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize(("architecture", "k"), ARCHS)
def test_encode_and_decode_match_numpy(architecture: str, k: int | None, norm: str) -> None:
    factor = 0.37 if norm == "expected_average_only_in" else None
    config = SAEConfig(D, F, "resid_post.1", architecture, k, normalize_activations=norm, norm_scaling_factor=factor)  # type: ignore[arg-type]
    sae = _randomised(SAE(config), seed=3)
    x = 3 * torch.randn(2, 7, D, generator=torch.Generator().manual_seed(4)) + 0.5
    xd = x.double().numpy()
    with torch.no_grad():
        f = sae.encode(x)
        recon = sae.decode(f, like=x)
    expected = _np_encode(sae, xd)
    np.testing.assert_allclose(f.double().numpy(), expected, rtol=1e-4, atol=1e-4)
    assert ((f != 0) == torch.from_numpy(expected != 0)).all()  # the same features fire
    np.testing.assert_allclose(recon.double().numpy(), _np_decode(sae, expected, xd), rtol=1e-4, atol=1e-3)
    with torch.no_grad():
        torch.testing.assert_close(sae(x), recon)
        # the edit op's delta: decode(f') - decode(f), from the changed columns only
        delta = torch.zeros_like(f)
        delta[..., [3, 50]] = torch.tensor([2.0, -1.5])
        moved = sae.decode_delta(delta, f, like=x)
        assert torch.equal(sae.decode_delta(torch.zeros_like(f), f, like=x), torch.zeros_like(x))
    np.testing.assert_allclose(
        moved.double().numpy(), _np_decode(sae, expected + delta.double().numpy(), xd) - _np_decode(sae, expected, xd),
        rtol=1e-4, atol=1e-3,
    )  # fmt: skip
    if architecture == "jumprelu":  # negative thresholds: SAELens's ReLU still zeroes negative pre-activations
        assert bool((sae.threshold < 0).any()) and bool((f >= 0).all())


def test_topk_keeps_exactly_k_features_per_token() -> None:
    sae = SAE.random(D, F, "resid_post.0", k=9, seed=2)
    with torch.no_grad():
        sae.b_enc.fill_(5.0)  # every pre-activation positive, so the ReLU drops none of the k
    f = sae.encode(torch.randn(4, 5, D, generator=torch.Generator().manual_seed(0)))
    assert ((f != 0).sum(-1) == 9).all()


def test_decode_under_a_per_token_normalisation_needs_the_input() -> None:
    sae = SAE(SAEConfig(D, F, "resid_post.0", "standard", normalize_activations="layer_norm"))
    with pytest.raises(InputError, match="like=x"):
        sae.decode(torch.zeros(F))


def test_config_and_input_checks() -> None:
    with pytest.raises(InputError, match="k="):
        SAEConfig(D, F, "resid_post.0", "topk")
    with pytest.raises(InputError, match="architecture"):
        SAEConfig(D, F, "resid_post.0", "gated")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="at least 1"):
        SAEConfig(0, F, "resid_post.0", "standard")
    sae = SAE.random(D, F, "resid_post.0", k=4)
    with pytest.raises(InputError, match="128-wide"):
        sae.encode(torch.zeros(3, 64))
    with pytest.raises(InputError, match="out of range"):
        sae.feature_direction(F)
    assert torch.equal(sae.feature_direction(17), sae.W_dec[17].detach())


def test_with_config_keeps_the_weights_and_changes_only_the_config() -> None:
    sae = _randomised(SAE.random(D, F, "resid_post.1", k=8, model="toy"))
    moved = sae.with_config(site="mlp_out.2", model="other")
    assert (moved.site, moved.config.model, moved.config.k) == ("mlp_out.2", "other", 8)
    assert (sae.site, sae.config.model) == ("resid_post.1", "toy")
    for (name, a), (_, b) in zip(sae.named_parameters(), moved.named_parameters(), strict=True):
        assert torch.equal(a, b), name
    with torch.no_grad():
        moved.W_dec.zero_()  # a copy: the original keeps its weights
    assert bool(sae.W_dec.abs().sum() > 0)
    with pytest.raises(InputError, match="k="):
        sae.with_config(k=0)


# --- hook names ------------------------------------------------------------------------------------------------

HOOKS = [
    ("blocks.3.hook_resid_pre", "resid_pre.3"),
    ("blocks.0.hook_resid_post", "resid_post.0"),
    ("blocks.2.hook_attn_out", "attn_out.2"),
    ("blocks.11.hook_mlp_out", "mlp_out.11"),
    ("blocks.1.attn.hook_z", "head_out.1"),
    ("hook_embed", "embed"),
]


@pytest.mark.parametrize(("hook", "site"), HOOKS)
def test_hook_names_map_both_ways(hook: str, site: str) -> None:
    assert formats.site_of_hook(hook) == site
    assert formats.hook_of_site(site) == hook
    assert formats.site_of_hook(site) == site  # a mechscope site is accepted as a hook name


@pytest.mark.parametrize("hook", ["blocks.1.hook_resid_mid", "blocks.1.attn.hook_pattern", "hook_pos_embed", ""])
def test_unknown_hook_names_are_refused(hook: str) -> None:
    with pytest.raises(SiteError, match="no mechscope site"):
        formats.site_of_hook(hook)


@pytest.mark.parametrize("site", ["head_out.1.2", "resid_post.-1", "attn_pattern.0", "resid_post.*"])
def test_sites_an_sae_cannot_read_are_refused(site: str) -> None:
    with pytest.raises(SiteError, match="whole site"):
        formats.hook_of_site(site)


# --- reading and writing ---------------------------------------------------------------------------------------


def _variants(lm: Any) -> list[SAE]:
    jump = SAEConfig(D, F, "head_out.1", "jumprelu", normalize_activations="layer_norm", model=lm.source)
    scaled = SAEConfig(
        D,
        F,
        "mlp_out.0",
        "standard",
        normalize_activations="expected_average_only_in",
        norm_scaling_factor=0.25,
        apply_b_dec_to_input=False,
        extra={"metadata.dataset_path": "d"},
    )
    return [
        _randomised(SAE.random(D, F, "resid_post.2", k=8, model=lm.source)),
        _randomised(SAE(jump)),
        _randomised(SAE(scaled, dtype=torch.bfloat16)),
        _randomised(SAE.random(D, 64, "embed", architecture="standard")),
    ]


def test_save_load_save_is_bit_identical(lm: Any, tmp_path: Path) -> None:
    for i, sae in enumerate(_variants(lm)):
        first = formats.save(sae, tmp_path / f"a{i}")
        loaded = formats.load(first, lm)
        second = formats.save(loaded, tmp_path / f"b{i}")
        for name in ("cfg.json", "sae_weights.safetensors"):
            assert (first / name).read_bytes() == (second / name).read_bytes(), (sae.site, name)
        assert _core(loaded.config) == _core(sae.config)
        assert loaded.W_enc.dtype == sae.W_enc.dtype
        for (name, a), (_, b) in zip(sae.named_parameters(), loaded.named_parameters(), strict=True):
            assert torch.equal(a, b), name


def test_saved_cfg_has_both_layouts(lm: Any, tmp_path: Path) -> None:
    cfg = json.loads((formats.save(_variants(lm)[0], tmp_path / "s") / "cfg.json").read_text())
    assert (cfg["architecture"], cfg["k"], cfg["d_in"], cfg["d_sae"]) == ("topk", 8, D, F)
    assert cfg["metadata"]["hook_name"] == cfg["hook_name"] == "blocks.2.hook_resid_post"
    assert cfg["metadata"]["model_name"] == cfg["model_name"] == lm.source
    assert (cfg["activation_fn_str"], cfg["activation_fn_kwargs"], cfg["hook_layer"]) == ("topk", {"k": 8}, 2)


V6 = {
    "architecture": "topk",
    "d_in": D,
    "d_sae": F,
    "dtype": "float32",
    "device": "cpu",
    "apply_b_dec_to_input": False,
    "normalize_activations": "none",
    "reshape_activations": "none",
    "k": 16,
    "rescale_acts_by_decoder_norm": False,
    "metadata": {
        "sae_lens_version": "6.5.1",
        "sae_lens_training_version": "6.5.1",
        "model_name": "toy",
        "hook_name": "blocks.2.hook_resid_post",
        "hook_head_index": None,
        "prepend_bos": True,
        "dataset_path": "monology/pile-uncopyrighted",
        "context_size": 1024,
        "neuronpedia_id": None,
    },
}
V5 = {
    "architecture": "standard",
    "d_in": D,
    "d_sae": F,
    "dtype": "float32",
    "device": "cpu",
    "model_name": "toy",
    "hook_name": "blocks.1.hook_mlp_out",
    "hook_layer": 1,
    "hook_head_index": None,
    "activation_fn_str": "topk",
    "activation_fn_kwargs": {"k": 12},
    "apply_b_dec_to_input": True,
    "finetuning_scaling_factor": False,
    "normalize_activations": "none",
    "context_size": 128,
    "dataset_path": "apollo-research/roneneldan-TinyStories-tokenizer-gpt2",
    "sae_lens_training_version": "5.9.1",
}
V5_RELU = {**V5, "hook_name": "blocks.0.attn.hook_z", "hook_layer": 0, "activation_fn_str": "relu"}
V5_RELU["activation_fn_kwargs"] = {}


@pytest.mark.parametrize(
    ("config", "site", "architecture", "k", "b_dec_in"),
    [(V6, "resid_post.2", "topk", 16, False), (V5, "mlp_out.1", "topk", 12, True),
     (V5_RELU, "head_out.0", "standard", None, True)],
    ids=["v6", "v5-topk", "v5-relu-hook_z"],
)  # fmt: skip
def test_saelens_layouts_load(
    lm: Any, tmp_path: Path, config: dict[str, Any], site: str, architecture: str, k: int | None, b_dec_in: bool
) -> None:
    folder = _write(tmp_path / "sae", config)
    sae = formats.load(folder, lm)
    got = (sae.site, sae.config.architecture, sae.config.k, sae.config.apply_b_dec_to_input, sae.config.model)
    assert got == (site, architecture, k, b_dec_in, "toy")
    x = torch.randn(3, D, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        np.testing.assert_allclose(sae.encode(x).double().numpy(), _np_encode(sae, x.double().numpy()), atol=1e-4)
    again = formats.save(sae, tmp_path / "again")  # the metadata survives a round trip, where it was
    saved = json.loads((again / "cfg.json").read_text())
    where = saved["metadata"] if "metadata" in config else saved
    assert where["dataset_path"] == (config.get("metadata") or config)["dataset_path"]
    moved = formats.save(sae.with_config(site="resid_pre.3"), tmp_path / "moved")  # a new site: a new hook name
    assert json.loads((moved / "cfg.json").read_text())["hook_name"] == "blocks.3.hook_resid_pre"
    assert formats.load(moved, lm).site == "resid_pre.3"
    assert _core(formats.read_config(again)) == _core(sae.config)


def _core(config: SAEConfig) -> tuple[Any, ...]:
    """What a config means (not the metadata it carries along)."""
    c = config
    return (c.d_in, c.d_sae, c.site, c.architecture, c.k, c.apply_b_dec_to_input, c.normalize_activations,
            c.norm_scaling_factor, c.model)  # fmt: skip


def _one_line(error: pytest.ExceptionInfo[Exception]) -> str:
    text = str(error.value)
    assert "\n" not in text and text
    return text


BAD: list[tuple[str, dict[str, Any], type[Exception], str]] = [
    ("layer-9", {**V6, "metadata": {**V6["metadata"], "hook_name": "blocks.9.hook_resid_post"}}, SiteError,  # type: ignore[dict-item]
     "resid_post.9"),
    ("width", {**V6, "d_in": 64}, InputError, "64-wide"),
    ("gated", {**V5, "architecture": "gated"}, InputError, "gated"),
    ("one-head", {**V5, "hook_head_index": 2}, InputError, "hook_head_index"),
    ("rescale", {**V6, "rescale_acts_by_decoder_norm": True}, InputError, "rescale_acts_by_decoder_norm"),
    ("no-hook", {key: v for key, v in V5.items() if key != "hook_name"}, InputError, "hook_name"),
    ("bad-hook", {**V5, "hook_name": "blocks.1.hook_resid_mid"}, SiteError, "hook_resid_mid"),
    ("no-d_sae", {key: v for key, v in V5.items() if key != "d_sae"}, InputError, "d_sae"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "config", "kind", "words"), BAD, ids=[b[0] for b in BAD])
def test_bad_configs_are_one_line_errors(
    lm: Any, tmp_path: Path, case: str, config: dict[str, Any], kind: type[Exception], words: str
) -> None:
    weights = _weights({"d_in": config["d_in"], "d_sae": config.get("d_sae", F)})
    folder = _write(tmp_path / case, config, weights)
    with pytest.raises(kind) as error:
        formats.load(folder, lm)
    assert words in _one_line(error)


def test_bad_folders_are_one_line_errors(lm: Any, tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    missing.mkdir()
    (missing / "cfg.json").write_text(json.dumps(V6))
    corrupt = _write(tmp_path / "corrupt", V6)
    (corrupt / "sae_weights.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    shape = _write(tmp_path / "shape", V6, {**_weights(V6), "W_enc": torch.zeros(D, F - 1)})
    lacking = _write(tmp_path / "lacking", {**V6, "architecture": "jumprelu"})  # no threshold tensor
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "cfg.json").write_text(json.dumps(V6))
    torch.save(_weights(V6), pickled / "sae_weights.pt")
    not_json = _write(tmp_path / "not-json", V6)
    (not_json / "cfg.json").write_text("{architecture: topk")
    cases = [
        (missing, "has no sae_weights.safetensors"),
        (corrupt, "not a readable safetensors"),
        (shape, "W_enc has shape (128, 255)"),
        (lacking, "lacks threshold"),
        (pickled, "never pickles"),
        (not_json, "not a JSON"),
        (tmp_path / "nowhere", "no SAE at"),
    ]
    for folder, words in cases:
        with pytest.raises(InputError) as error:
            formats.load(folder, lm)
        assert words in _one_line(error), folder.name
    with pytest.raises(InputError, match="is a file"):
        formats.save(SAE.random(D, F, "resid_post.0", k=2), missing / "cfg.json")


def test_an_sae_made_for_toy_is_refused_on_another_model(lm: Any, tmp_path: Path) -> None:
    folder = formats.save(SAE.random(D, F, "resid_post.1", k=4, model=lm.source), tmp_path / "sae")
    other = ms.load("toy-moe")
    assert other.arch.d_model == D  # the same width: only the provenance tells them apart
    with pytest.raises(ProvenanceError) as error:
        ms.sae.load(folder, other)
    assert "force" in _one_line(error)
    assert ms.sae.load(folder, other, force=True).site == "resid_post.1"
    assert ms.sae.load(folder, lm).config.model == lm.source
