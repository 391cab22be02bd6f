"""Directions through weights: exact against the loaded model's own modules, planted structure, errors."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from typer.testing import CliRunner

import mechscope as ms
from mechscope.cli.main import app
from mechscope.core.direction import Direction
from mechscope.errors import ArchitectureError, InputError, SiteError
from mechscope.models.block_weights import BLOCK_WEIGHTS
from mechscope.models.families import FAMILIES
from mechscope.weights.direction_sets import load_directions
from mechscope.weights.directions import directions_through_weights, readout, resolve_layers
from mechscope.weights.directions_results import DirectionsResult
from mechscope.weights.layer_weights import build_skeleton, read_layer
from mechscope.weights.reader import open_checkpoint

runner = CliRunner()

# Independent reference: per family, how the loaded model's own modules compute q/k/v for one layer.
# attn norm, mlp norm (None: none in front), projection kind, q/k norm scope.
_REFERENCE: dict[str, tuple[str | None, str | None, str, str | None]] = {
    "llama": ("input_layernorm", "post_attention_layernorm", "separate", None),
    "mistral": ("input_layernorm", "post_attention_layernorm", "separate", None),
    "gemma": ("input_layernorm", "post_attention_layernorm", "separate", None),
    "gemma3_text": ("input_layernorm", "pre_feedforward_layernorm", "separate", "head"),
    "qwen3_moe": ("input_layernorm", "post_attention_layernorm", "separate", "head"),
    "olmoe": ("input_layernorm", "post_attention_layernorm", "separate", "full"),
    "qwen2": ("input_layernorm", "post_attention_layernorm", "separate", None),
    "gemma2": ("input_layernorm", "pre_feedforward_layernorm", "separate", None),
    "qwen3": ("input_layernorm", "post_attention_layernorm", "separate", "head"),
    "olmo2": (None, None, "separate", "full"),
    "phi3": ("input_layernorm", "post_attention_layernorm", "phi3", None),
    "gpt2": ("ln_1", "ln_2", "gpt2", None),
    "gpt_neox": ("input_layernorm", "post_attention_layernorm", "neox", None),
    "bert": (None, None, "bert", None),
    "mixtral": ("input_layernorm", "post_attention_layernorm", "separate", None),
    "qwen2_moe": ("input_layernorm", "post_attention_layernorm", "separate", None),
    "granitemoe": ("input_layernorm", "post_attention_layernorm", "separate", None),
    "gpt_oss": ("input_layernorm", "post_attention_layernorm", "separate", None),
}


def _first(out: Any) -> Tensor:
    return out[0] if isinstance(out, tuple) else out


def _reference(lm: ms.LanguageModel, family: str, layer: int, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """QK ``[head, n, n]``, OV ``[head, n, d]`` and MLP ``[n, d]`` from the loaded model's modules."""
    arch = lm.arch
    n, heads, kv, hd = x.shape[0], arch.n_heads, arch.n_kv_heads, arch.head_dim
    block = arch.layer(layer)
    attn_norm, mlp_norm, kind, qk_norm = _REFERENCE[family]
    h = block.get_submodule(attn_norm)(x) if attn_norm else x
    attn = arch.part("attn", layer)
    o_proj = arch.part("o_proj", layer)
    if kind == "phi3":
        qkv = attn.qkv_proj(h)
        q, k, v = qkv.split([heads * hd, kv * hd, kv * hd], dim=-1)
    elif kind == "gpt2":
        q, k, v = attn.c_attn(h).split(arch.d_model, dim=-1)
    elif kind == "neox":
        q, k, v = attn.query_key_value(h).view(n, heads, 3 * hd).chunk(3, dim=-1)
    elif kind == "bert":
        q, k, v = attn.query(h), attn.key(h), attn.value(h)
    else:
        q, k, v = attn.q_proj(h), attn.k_proj(h), attn.v_proj(h)
    if qk_norm == "full":
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k, v = q.reshape(n, heads, hd), k.reshape(n, kv, hd), v.reshape(n, kv, hd)
    if qk_norm == "head":
        q, k = attn.q_norm(q), attn.k_norm(k)
    group = heads // kv
    scale = getattr(lm.model.config, "attention_multiplier", hd**-0.5)  # Granite scales by its multiplier
    qk = torch.stack([q[:, i] @ k[:, i // group].T * scale for i in range(heads)])
    zero = o_proj(torch.zeros(1, heads * hd))
    ov = []
    for i in range(heads):
        padded = torch.zeros(n, heads, hd)
        padded[:, i] = v[:, i // group]
        ov.append(o_proj(padded.reshape(n, -1)) - zero)
    m = block.get_submodule(mlp_norm)(x) if mlp_norm else x
    if family == "bert":
        mlp = block.output.dense(block.intermediate(m))
    else:
        mlp = _first(block.get_submodule(arch.spec.mlp_out if family == "granitemoe" else "mlp")(m[None]))[0]
    return qk, torch.stack(ov), mlp


def test_every_mapped_family_has_block_weights() -> None:
    assert set(BLOCK_WEIGHTS) == set(FAMILIES) == set(_REFERENCE)


@pytest.mark.parametrize("family", sorted(_REFERENCE))
def test_readout_equals_the_models_own_modules(
    family: str, tiny_dir: Callable[[str], Path], load_tiny: Callable[..., ms.LanguageModel]
) -> None:
    lm = load_tiny(family)
    x = torch.randn(5, lm.arch.d_model, generator=torch.Generator().manual_seed(1))
    with open_checkpoint(tiny_dir(family)) as ckpt:
        skeleton = build_skeleton(ckpt)
        for layer in range(lm.arch.n_layers):
            weights = read_layer(ckpt, skeleton, layer)
            assert weights.mlp_note is None
            got = readout(weights, x)
            with torch.no_grad():
                qk, ov, mlp = _reference(lm, family, layer, x)
            torch.testing.assert_close(got.qk, qk, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(got.ov, ov, rtol=1e-4, atol=1e-5)
            assert got.mlp is not None
            torch.testing.assert_close(got.mlp, mlp, rtol=1e-4, atol=1e-5)


def test_result_matrices_are_the_readout_projected(
    tiny_dir: Callable[[str], Path], load_tiny: Callable[..., ms.LanguageModel]
) -> None:
    lm = load_tiny("gpt2")
    raw = torch.randn(3, 64, generator=torch.Generator().manual_seed(2)) * 5
    result = directions_through_weights(tiny_dir("gpt2"), raw, layers="1", n_random=20, top=5)
    unit = raw / raw.norm(dim=-1, keepdim=True)
    with torch.no_grad():
        qk, ov, mlp = _reference(lm, "gpt2", 1, unit)
    entry = result.layer(1)
    torch.testing.assert_close(torch.tensor(entry.qk), qk, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.tensor(entry.ov), ov @ unit.T, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.tensor(entry.ov_norm), ov.norm(dim=-1), rtol=1e-4, atol=1e-5)
    assert entry.mlp is not None and entry.mlp_norm is not None
    torch.testing.assert_close(torch.tensor(entry.mlp), mlp @ unit.T, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.tensor(entry.mlp_norm), mlp.norm(dim=-1), rtol=1e-4, atol=1e-5)
    assert DirectionsResult.model_validate_json(result.model_dump_json()) == result


def test_planted_qk_head_is_the_top_interaction(tiny_dir: Callable[[str], Path], tmp_path: Path) -> None:
    folder = tmp_path / "planted"
    shutil.copytree(tiny_dir("llama"), folder)
    basis = torch.linalg.qr(torch.randn(64, 4, generator=torch.Generator().manual_seed(3)))[0].T  # 4 orthonormal
    layer, head, kv_head, hd = 1, 2, 1, 16  # 4 query heads share 2 kv heads: head 2 reads kv head 1
    weights = load_file(str(folder / "model.safetensors"))
    prefix = f"model.layers.{layer}.self_attn"
    e = torch.zeros(hd)
    e[0] = 1.0
    weights[f"{prefix}.q_proj.weight"][head * hd : (head + 1) * hd] = torch.outer(e, basis[0])
    weights[f"{prefix}.k_proj.weight"][kv_head * hd : (kv_head + 1) * hd] = torch.outer(e, basis[1])
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    save_file({"probe": basis}, str(tmp_path / "dirs.safetensors"))

    result = directions_through_weights(folder, tmp_path / "dirs.safetensors", n_random=100, top=10)
    best = result.top[0]
    assert (best.layer, best.head, best.kind, best.i, best.j) == (layer, head, "qk", 0, 1)
    assert best.z > 20, best
    assert result.directions[:2] == ["probe[0]", "probe[1]"]
    # Heads that do not share the planted query or key weights stay unremarkable.
    for entry in result.layers:
        for h, z in enumerate(entry.qk_z):
            if (entry.layer, h // 2) != (layer, kv_head):
                assert torch.tensor(z).abs().max() < 5


def test_difference_with_itself_is_zero(tiny_dir: Callable[[str], Path]) -> None:
    folder = tiny_dir("phi3")
    result = directions_through_weights(folder, torch.randn(3, 64), base=folder, n_random=10, top=3)
    assert result.base == str(folder)
    for entry in result.layers:
        for values in (entry.qk, entry.qk_z, entry.ov, entry.ov_z, entry.ov_norm, entry.mlp, entry.mlp_z):
            assert torch.tensor(values).abs().max() == 0


def test_difference_is_the_change_of_the_bilinear_map(tiny_dir: Callable[[str], Path], tmp_path: Path) -> None:
    folder = tmp_path / "tuned"
    shutil.copytree(tiny_dir("llama"), folder)
    weights = load_file(str(folder / "model.safetensors"))
    name = "model.layers.0.self_attn.o_proj.weight"
    weights[name] = weights[name] * 3
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    dirs = torch.randn(3, 64, generator=torch.Generator().manual_seed(4))
    base = directions_through_weights(tiny_dir("llama"), dirs, layers="0", n_random=10)
    diff = directions_through_weights(folder, dirs, base=tiny_dir("llama"), layers="0", n_random=10)
    torch.testing.assert_close(torch.tensor(diff.layers[0].ov), 2 * torch.tensor(base.layers[0].ov))
    assert torch.tensor(diff.layers[0].qk).abs().max() == 0


def test_direction_files_and_layer_text(tiny_dir: Callable[[str], Path], tmp_path: Path) -> None:
    vector = torch.randn(64)
    Direction(vector=vector, layer=1, method="pca").save(tmp_path / "pirate.safetensors")
    save_file({"layer.0": torch.randn(2, 64), "layer.1": torch.randn(2, 64)}, str(tmp_path / "per_layer.safetensors"))
    single = load_directions([tmp_path / "pirate.safetensors"])
    assert single.names == ("pirate",) and single.layers == (1,)
    result = directions_through_weights(tiny_dir("llama"), tmp_path / "pirate.safetensors", n_random=5)
    assert [entry.layer for entry in result.layers] == [1]
    per_layer = load_directions([tmp_path / "per_layer.safetensors"])
    assert per_layer.layers == (0, 1) and per_layer.names == ("d0", "d1")
    save_file({"pc1": torch.randn(64), "pc2": torch.randn(64)}, str(tmp_path / "pcs.safetensors"))
    assert load_directions([tmp_path / "pcs.safetensors"]).names == ("pc1", "pc2")  # names, not layers
    assert resolve_layers("0-2,5,-1", 8) == [0, 1, 2, 5, 7]
    assert resolve_layers(None, 4) == [0, 1, 2, 3]


def test_bad_inputs_are_one_line_errors(tiny_dir: Callable[[str], Path], tmp_path: Path) -> None:
    folder = tiny_dir("llama")
    with pytest.raises(InputError, match="width 32 but llama has d_model 64"):
        directions_through_weights(folder, torch.randn(2, 32))
    with pytest.raises(SiteError, match="layer 7 is out of range"):
        directions_through_weights(folder, torch.randn(2, 64), layers="7")
    with pytest.raises(InputError, match="another architecture"):
        directions_through_weights(folder, torch.randn(2, 64), base=tiny_dir("gpt2"))
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "config.json").write_text(json.dumps({"model_type": "t5"}))
    save_file({"x": torch.zeros(1)}, str(odd / "model.safetensors"))
    with pytest.raises(ArchitectureError, match="does not support model_type 't5'; supported: bert"):
        directions_through_weights(odd, torch.randn(2, 64))

    save_file({"wide": torch.randn(2, 32)}, str(tmp_path / "wide.safetensors"))
    args = ["weights", "directions", "-m", str(folder), "-d", str(tmp_path / "wide.safetensors")]
    out = runner.invoke(app, args)
    assert out.exit_code == 2
    assert out.stderr.strip().count("\n") == 0 and "d_model 64" in out.stderr
    out = runner.invoke(app, [*args[:-1], str(tmp_path / "missing.safetensors")])
    assert out.exit_code == 2 and "no directions file" in out.stderr


def test_cli_writes_json_and_prints_the_table(tiny_dir: Callable[[str], Path], tmp_path: Path) -> None:
    save_file({"pcs": torch.randn(3, 64)}, str(tmp_path / "dirs.safetensors"))
    args = ["weights", "directions", "-m", str(tiny_dir("bert")), "-d", str(tmp_path / "dirs.safetensors")]
    options = ["--layers", "0-1", "--random", "10", "--top", "4", "--out", str(tmp_path / "r.json")]
    out = runner.invoke(app, [*args, *options])
    assert out.exit_code == 0, out.output
    assert "Strongest interactions" in out.stdout
    result = DirectionsResult.load(tmp_path / "r.json")
    assert len(result.top) == 4 and [entry.layer for entry in result.layers] == [0, 1]
    out = runner.invoke(app, [*args, "--layers", "1", "--random", "10", "--json"])
    assert out.exit_code == 0
    assert DirectionsResult.model_validate_json(out.stdout).layers[0].layer == 1
    out = runner.invoke(app, [*args, "--layers", "2"])
    assert out.exit_code == 2 and "out of range" in out.stderr
