"""Loading: local folders, bundled names, hub ids without network, and one-line errors."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import mechscope as ms
from mechscope.models import registry

Loader = Callable[..., ms.LanguageModel]


def test_hub_id_offline_fails_fast_with_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    code = "import mechscope as ms; ms.load('someone/not-downloaded-model')"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert "ModelLoadError" in last and "not in the local Hugging Face cache" in last
    cli = subprocess.run(
        [sys.executable, "-m", "mechscope", "doctor", "-m", "someone/not-downloaded-model"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 2
    lines = cli.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mechscope: error: model 'someone/not-downloaded-model'")


def test_corrupt_weights_give_a_clear_error(tiny_dir: Callable[[str], Path], tmp_path: Path) -> None:
    broken = shutil.copytree(tiny_dir("llama"), tmp_path / "broken")
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ms.ModelLoadError, match="truncated or corrupt"):
        ms.load(broken)


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(ms.ModelLoadError, match=r"has no config\.json"):
        ms.load(tmp_path)
    with pytest.raises(ms.ModelLoadError, match="no model folder"):
        ms.load(str(tmp_path / "missing"))
    with pytest.raises(ms.ModelLoadError, match="unknown dtype"):
        ms.load(tmp_path, dtype="float8")


def test_dtype_and_attention_options(tiny_dir: Callable[[str], Path]) -> None:
    lm = ms.load(tiny_dir("qwen2"), dtype="bfloat16", attn_implementation="eager")
    assert next(lm.model.parameters()).dtype == torch.bfloat16
    assert lm.model.config._attn_implementation == "eager"
    with lm.capture(["resid_post.0"], positions="last", dtype="float32") as cache:
        lm.forward(["The capital of France is"])
    assert cache["resid_post.0"].dtype == torch.float32


def test_registered_organism_loads_by_name(tiny_dir: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_REGISTERED", {})
    ms.register_organism("tiny-test-llama", tiny_dir("llama"), "a tiny random llama")
    assert any(o.name == "tiny-test-llama" for o in ms.list_organisms())
    assert ms.load("tiny-test-llama").arch.family == "llama"
    with pytest.raises(ValueError, match="registered already"):
        ms.register_organism("tiny-test-llama", tiny_dir("llama"))


def test_tokenizer_prepared_for_batching(load_tiny: Loader) -> None:
    lm = load_tiny("gpt2")
    assert lm.tokenizer.pad_token is not None and lm.tokenizer.padding_side == "left"
    assert "gpt2" in repr(lm)


def test_device_map_loads_through_accelerate(tiny_dir: Callable[[str], Path]) -> None:
    lm = ms.load(tiny_dir("gpt2"), device_map="auto")
    assert lm.device == torch.device("cpu")  # no accelerator here: "auto" places everything on the CPU
    with lm.capture(["resid_post.1"], positions="last") as cache:
        lm.forward(["The capital of France is"])
    assert cache["resid_post.1"].shape == (1, lm.arch.d_model)
