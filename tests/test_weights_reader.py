"""Checkpoint reader and block classification on real files of every supported family (no mocks)."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoModelForCausalLM, PreTrainedModel

from mechscope.errors import WeightFileError
from mechscope.models.archmap import build_map
from mechscope.testing.tiny_models import FAMILIES
from mechscope.weights.blocks import BLOCK_TYPES, classify
from mechscope.weights.reader import open_checkpoint

# Roles the architecture map does not name, written out per module path (relative to a layer, or to the
# model root for non-layer modules) from the families' transformers modelling code. Everything else is
# derived from `build_map`: layer ownership, embedding, unembedding, final norm, o_proj, router, experts,
# and norms (modules whose class is a norm).
LAYER_ROLES = {
    "self_attn.q_proj": "q_proj",
    "self_attn.k_proj": "k_proj",
    "self_attn.v_proj": "v_proj",
    "self_attn.qkv_proj": "qkv",
    "attn.c_attn": "qkv",
    "attention.query_key_value": "qkv",
    "attention.self.query": "q_proj",
    "attention.self.key": "k_proj",
    "attention.self.value": "v_proj",
    "self_attn": "other",  # GPT-OSS attention sinks sit on the attention module itself
    "mlp.gate_proj": "mlp_gate",
    "mlp.up_proj": "mlp_up",
    "mlp.gate_up_proj": "mlp_up",  # Phi-3's fused gate+up
    "mlp.down_proj": "mlp_down",
    "mlp.c_fc": "mlp_up",
    "mlp.c_proj": "mlp_down",
    "mlp.dense_h_to_4h": "mlp_up",
    "mlp.dense_4h_to_h": "mlp_down",
    "intermediate.dense": "mlp_up",
    "output.dense": "mlp_down",
    "mlp.shared_expert.gate_proj": "mlp_gate",
    "mlp.shared_expert.up_proj": "mlp_up",
    "mlp.shared_expert.down_proj": "mlp_down",
    "mlp.shared_expert_gate": "router",
}
ROOT_ROLES = {
    "transformer.wpe": "embedding",
    "embeddings.position_embeddings": "embedding",
    "embeddings.token_type_embeddings": "embedding",
    "pooler.dense": "other",
}

# save_pretrained writes some tensors (MoE experts, NeoX's head) under their hub names; this maps them
# to the loaded model's names.
FILE_TO_MODEL = (
    (r"block_sparse_moe\.experts\.\d+\.w[13]\.weight$", "mlp.experts.gate_up_proj"),
    (r"block_sparse_moe\.experts\.\d+\.w2\.weight$", "mlp.experts.down_proj"),
    (r"block_sparse_moe\.gate\.weight$", "mlp.gate.weight"),
    (r"mlp\.experts\.\d+\.(?:gate|up)_proj\.weight$", "mlp.experts.gate_up_proj"),
    (r"mlp\.experts\.\d+\.down_proj\.weight$", "mlp.experts.down_proj"),
    (r"block_sparse_moe\.input_linear\.weight$", "block_sparse_moe.experts.gate_up_proj"),
    (r"block_sparse_moe\.output_linear\.weight$", "block_sparse_moe.experts.down_proj"),
    (r"block_sparse_moe\.router\.layer\.weight$", "block_sparse_moe.router.weight"),
    (r"^embed_out\.weight$", "lm_head.weight"),  # GPT-NeoX
)


def _load(folder: Path, family: str) -> PreTrainedModel:
    return (AutoModel if family == "bert" else AutoModelForCausalLM).from_pretrained(folder)


def expected_blocks(model: PreTrainedModel) -> dict[str, tuple[int | None, str]]:
    """(layer, block) for every parameter, derived from the model's structure via the architecture map."""
    arch = build_map(model)
    path_of = {id(module): name for name, module in model.named_modules()}
    roots: list[tuple[str, str]] = [(path_of[id(arch.embed_module())], "embedding")]
    for module, block in ((arch.unembed(), "output"), (arch.final_norm(), "norm")):
        if module is not None:
            roots.append((path_of[id(module)], block))
    layer_parts: list[tuple[str, int, str]] = []  # (module path, layer, block) for map-named parts
    layer_paths = {}
    for layer in range(arch.n_layers):
        layer_paths[layer] = path_of[id(arch.layer(layer))]
        layer_parts.append((path_of[id(arch.part("o_proj", layer))], layer, "o_proj"))
        if layer in arch.moe_layers:
            layer_parts.append((path_of[id(arch.part("router", layer))], layer, "router"))
            layer_parts.append((path_of[id(arch.part("experts", layer))], layer, "expert"))
    expected: dict[str, tuple[int | None, str]] = {}
    for name, _ in model.named_parameters():
        module_path = name.rsplit(".", 1)[0]
        owner = next((i for i, p in layer_paths.items() if module_path.startswith(p + ".")), None)
        block = next((b for p, _, b in layer_parts if module_path == p or module_path.startswith(p + ".")), None)
        block = block or next((b for p, b in roots if module_path == p), None)
        if block is None and "Norm" in type(model.get_submodule(module_path)).__name__:
            block = "norm"
        if block is None and owner is not None:
            block = LAYER_ROLES.get(module_path[len(layer_paths[owner]) + 1 :])
        if block is None and owner is None:
            block = ROOT_ROLES.get(module_path)
        assert block is not None, f"test cannot derive a block for {name}"
        expected[name] = (owner, block)
    return expected


def _model_name(file_key: str) -> str:
    for pattern, replacement in FILE_TO_MODEL:
        if re.search(pattern, file_key):
            return re.sub(pattern, replacement, file_key)
    return file_key


@pytest.mark.parametrize("family", FAMILIES)
def test_classify_matches_the_architecture_map(family: str, tiny_dir: Callable[[str], Path], tmp_path: Path) -> None:
    folder = tiny_dir(family)
    model = _load(folder, family)
    expected = expected_blocks(model)
    # 1) the file save_pretrained wrote (hub names, per-expert tensors for some MoE families)
    with open_checkpoint(folder) as checkpoint:
        assert len(checkpoint) == len(set(checkpoint.names()))
        for name in checkpoint.names():
            got = classify(name, checkpoint.shape(name))
            assert got == expected[_model_name(name)], (family, name)
    # 2) the loaded model's own names (packed experts, fused projections) in a plain safetensors file
    internal = tmp_path / "internal.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, internal)
    with open_checkpoint(internal) as checkpoint:
        assert set(checkpoint.names()) == set(expected)
        for name in checkpoint.names():
            assert classify(name, checkpoint.shape(name)) == expected[name], (family, name)


def test_every_block_type_is_reachable_and_gguf_names() -> None:
    gguf_names = {
        "token_embd.weight": (None, "embedding"),
        "blk.3.attn_q.weight": (3, "q_proj"),
        "blk.3.attn_k.weight": (3, "k_proj"),
        "blk.3.attn_v.weight": (3, "v_proj"),
        "blk.3.attn_output.weight": (3, "o_proj"),
        "blk.0.attn_qkv.weight": (0, "qkv"),
        "blk.1.ffn_gate.weight": (1, "mlp_gate"),
        "blk.1.ffn_up.weight": (1, "mlp_up"),
        "blk.1.ffn_down.weight": (1, "mlp_down"),
        "blk.2.ffn_gate_inp.weight": (2, "router"),
        "blk.2.ffn_gate_exps.weight": (2, "expert"),
        "blk.2.ffn_down_exps.weight": (2, "expert"),
        "blk.2.attn_norm.weight": (2, "norm"),
        "blk.2.attn_q_norm.weight": (2, "norm"),
        "blk.2.ffn_norm.weight": (2, "norm"),
        "output_norm.weight": (None, "norm"),
        "output.weight": (None, "output"),
    }
    for name, want in gguf_names.items():
        assert classify(name) == want, name
    assert {block for _, block in gguf_names.values()} | {"other"} == set(BLOCK_TYPES)
    # Dense gate_proj is an MLP gate; a 3-D stacked MLP tensor is an expert stack.
    assert classify("model.layers.5.mlp.gate_proj.weight") == (5, "mlp_gate")
    assert classify("model.layers.5.mlp.gate.weight") == (5, "router")
    assert classify("model.layers.5.mlp.gate_up_proj", (8, 16, 32)) == (5, "expert")
    assert classify("model.layers.7.block_sparse_moe.experts.3.w1.weight") == (7, "expert")
    assert classify("embeddings.position_ids") == (None, "other")


def _tiny_folder(tiny_dir: Callable[[str], Path], tmp_path: Path, family: str = "llama") -> Path:
    folder = tmp_path / family
    shutil.copytree(tiny_dir(family), folder)
    return folder


def test_sharded_safetensors_and_missing_shard(tiny_dir: Callable[[str], Path], tmp_path: Path) -> None:
    reference = load_file(tiny_dir("llama") / "model.safetensors")
    sharded = tmp_path / "sharded"
    _load(tiny_dir("llama"), "llama").save_pretrained(sharded, max_shard_size="50KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    with open_checkpoint(sharded) as checkpoint:
        assert checkpoint.format == "safetensors" and len(checkpoint.files) > 2
        assert sorted(checkpoint.names()) == sorted(reference)
        for name, tensor in checkpoint:
            assert checkpoint.file_of(name) in checkpoint.files
            torch.testing.assert_close(tensor, reference[name], rtol=0, atol=0)
        assert checkpoint.config() is not None and checkpoint.config()["model_type"] == "llama"  # type: ignore[index]
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    missing = sharded / sorted(set(index["weight_map"].values()))[1]
    missing.unlink()
    with pytest.raises(WeightFileError) as error:
        open_checkpoint(sharded)
    assert str(missing) in str(error.value) and "\n" not in str(error.value)


def test_truncated_safetensors_fails_at_open(tiny_dir: Callable[[str], Path], tmp_path: Path) -> None:
    folder = _tiny_folder(tiny_dir, tmp_path)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 1000])
    with pytest.raises(WeightFileError, match="truncated") as error:
        open_checkpoint(folder)
    assert str(weights) in str(error.value) and "\n" not in str(error.value)
    weights.write_bytes(data[:100])  # cut inside the JSON header
    with pytest.raises(WeightFileError) as error:
        open_checkpoint(weights)
    assert str(weights) in str(error.value)


def test_bfloat16_is_upcast_and_dtype_reported(tmp_path: Path) -> None:
    values = torch.randn(8, 5).to(torch.bfloat16)
    save_file({"w": values, "b": torch.arange(3, dtype=torch.int64)}, tmp_path / "model.safetensors")
    with open_checkpoint(tmp_path) as checkpoint:
        assert checkpoint.dtype("w") == "bfloat16" and checkpoint.dtype("b") == "int64"
        assert checkpoint.read("w").dtype == torch.float32
        torch.testing.assert_close(checkpoint.read("w"), values.float(), rtol=0, atol=0)


def test_bin_single_and_sharded(tiny_dir: Callable[[str], Path], tmp_path: Path) -> None:
    reference = load_file(tiny_dir("gpt2") / "model.safetensors")
    single = tmp_path / "single"
    single.mkdir()
    torch.save(reference, single / "pytorch_model.bin")
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    names = list(reference)
    halves = {"pytorch_model-00001-of-00002.bin": names[::2], "pytorch_model-00002-of-00002.bin": names[1::2]}
    for shard, keys in halves.items():
        torch.save({k: reference[k] for k in keys}, sharded / shard)
    weight_map = {k: shard for shard, keys in halves.items() for k in keys}
    (sharded / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    for folder in (single, sharded):
        with open_checkpoint(folder) as checkpoint:
            assert checkpoint.format == "bin" and sorted(checkpoint.names()) == sorted(reference)
            for name, tensor in checkpoint:
                torch.testing.assert_close(tensor, reference[name], rtol=0, atol=0)
    # Safetensors wins when both are present.
    shutil.copy(tiny_dir("gpt2") / "model.safetensors", single)
    with open_checkpoint(single) as checkpoint:
        assert checkpoint.format == "safetensors"


def test_npz(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {"layers.0.w": rng.standard_normal((6, 4)).astype(np.float16), "norm.weight": np.ones(4, np.float32)}
    np.savez(tmp_path / "weights.npz", **arrays)  # type: ignore[arg-type]
    with open_checkpoint(tmp_path / "weights.npz") as checkpoint:
        assert checkpoint.format == "npz" and checkpoint.names() == list(arrays)
        assert checkpoint.shape("layers.0.w") == (6, 4) and checkpoint.dtype("layers.0.w") == "float16"
        np.testing.assert_array_equal(checkpoint.read("layers.0.w").numpy(), arrays["layers.0.w"].astype(np.float32))


def test_gguf_f32_and_q8_0_dequantized(tmp_path: Path) -> None:
    gguf = pytest.importorskip("gguf")
    rng = np.random.default_rng(0)
    embed = rng.standard_normal((16, 64)).astype(np.float32)  # torch order [vocab, d]
    query = rng.standard_normal((32, 64)).astype(np.float32)
    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_tensor("token_embd.weight", embed)
    quantized = gguf.quants.quantize(query, gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("blk.0.attn_q.weight", quantized, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with open_checkpoint(tmp_path) as checkpoint:
        assert checkpoint.format == "gguf"
        assert checkpoint.shape("token_embd.weight") == (16, 64) and checkpoint.shape("blk.0.attn_q.weight") == (32, 64)
        assert checkpoint.dtype("token_embd.weight") == "float32" and checkpoint.dtype("blk.0.attn_q.weight") == "q8_0"
        np.testing.assert_array_equal(checkpoint.read("token_embd.weight").numpy(), embed)
        dequantized = checkpoint.read("blk.0.attn_q.weight").numpy()
        assert dequantized.shape == (32, 64)
        # Exactly what gguf's own dequantizer gives for the bytes written, and close to the source: Q8_0
        # keeps 8 bits per value with one (float16) scale per block of 32, so within one step of the block.
        np.testing.assert_array_equal(dequantized, gguf.quants.dequantize(quantized, gguf.GGMLQuantizationType.Q8_0))
        step = np.abs(query).reshape(32, 2, 32).max(-1, keepdims=True) / 127
        assert np.all(np.abs(dequantized - query).reshape(32, 2, 32) <= step)
        assert classify("blk.0.attn_q.weight", checkpoint.shape("blk.0.attn_q.weight")) == (0, "q_proj")


def test_hf_cache_layout_resolves_refs(tiny_dir: Callable[[str], Path], tmp_path: Path) -> None:
    repo = tmp_path / "hub" / "models--org--tiny"
    snapshot = repo / "snapshots" / "abc123"
    shutil.copytree(tiny_dir("qwen2"), snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    for source in (repo, snapshot):
        with open_checkpoint(source) as checkpoint:
            assert checkpoint.model_id == "org/tiny" and checkpoint.revision == "abc123"
            assert checkpoint.root == snapshot
    # A hub id found in the local cache needs no network.
    with open_checkpoint("org/tiny", cache_dir=tmp_path / "hub") as checkpoint:
        assert checkpoint.model_id == "org/tiny" and len(checkpoint) == 27


def test_missing_and_empty_sources_are_one_line(tmp_path: Path) -> None:
    for source in (tmp_path / "absent", tmp_path):
        with pytest.raises(WeightFileError) as error:
            open_checkpoint(source)
        assert "\n" not in str(error.value)
