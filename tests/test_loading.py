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
from huggingface_hub import constants
from safetensors.torch import save_file
from transformers import AutoTokenizer
from transformers.utils import logging as hf_logging
from typer.testing import CliRunner

import mechscope as ms
from mechscope.cli.main import app
from mechscope.models import loading, registry

Loader = Callable[..., ms.LanguageModel]
runner = CliRunner()


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
    with pytest.raises(ms.ModelLoadError, match="unknown device 'bogus'"):
        ms.load("toy", device="bogus")


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


def _without_tokenizer(folder: Path, out: Path) -> Path:
    out.mkdir()
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        if (folder / name).is_file():
            shutil.copy(folder / name, out / name)
    return out


def test_folder_without_tokenizer_takes_token_ids(tiny_dir: Callable[[str], Path], tmp_path: Path) -> None:
    lm = ms.load(_without_tokenizer(tiny_dir("llama"), tmp_path / "no-tokenizer"))
    assert not lm.has_tokenizer and "no tokenizer" in repr(lm)
    assert lm.forward(torch.tensor([[1, 2, 3]])).shape == (1, 3, lm.arch.vocab)
    with lm.capture(["resid_post.0"]) as cache:
        lm.forward({"input_ids": torch.tensor([[1, 2, 3]]), "attention_mask": torch.ones(1, 3, dtype=torch.long)})
    assert cache["resid_post.0"].shape == (1, 3, lm.arch.d_model)
    text_paths: list[Callable[[], object]] = [
        lambda: lm.forward("The capital of France is"),
        lambda: lm.tokenize(["a", "b"]),
        lambda: lm.token_id(" Paris"),
        lambda: lm.token_texts([1, 2]),
        lambda: lm.generate("The capital of France is"),
    ]
    for path in text_paths:
        with pytest.raises(ms.InputError) as info:
            path()
        message = str(info.value)
        assert "\n" not in message and "has no tokenizer" in message
        assert "ms.wrap(lm.model, tokenizer)" in message and "tokenizer files in the model folder" in message

    lm.tokenizer = AutoTokenizer.from_pretrained(tiny_dir("llama"))  # given later: text works, texts decode
    assert lm.token_texts([1, 2, 1]) == [lm.tokenizer.decode([i]) for i in (1, 2, 1)]


def test_token_texts_are_remembered_per_tokenizer(tiny_dir: Callable[[str], Path]) -> None:
    lm = ms.load("toy")
    ids = lm.tokenize("The capital of France is")["input_ids"][0].tolist()
    toy_texts = [lm.tokenizer.decode([i]) for i in ids]
    assert lm.token_texts(ids) == lm.token_texts(ids) == toy_texts
    other = AutoTokenizer.from_pretrained(tiny_dir("llama"))  # another vocabulary: nothing remembered carries over
    lm.tokenizer = other
    assert lm.token_texts(ids) == [other.decode([i]) for i in ids] != toy_texts


def test_folder_with_only_a_config_says_the_weights_are_missing(
    tiny_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    (tmp_path / "config-only").mkdir()
    shutil.copy(tiny_dir("llama") / "config.json", tmp_path / "config-only" / "config.json")
    with pytest.raises(ms.ModelLoadError, match="no weight files") as info:
        ms.load(tmp_path / "config-only")
    assert "truncated" not in str(info.value) and "\n" not in str(info.value)


def test_small_local_loads_show_no_progress_bar(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    before = hf_logging.is_progress_bar_enabled()
    capfd.readouterr()
    ms.load("toy")
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled() == before  # the previous state is restored
    if before:  # a large checkpoint keeps the bar (unless the environment turned bars off)
        monkeypatch.setattr(loading, "QUIET_LOAD_BYTES", 0)
        ms.load("toy")
        assert "Loading weights" in capfd.readouterr().err


def test_weights_commands_accept_organisms_and_say_when_the_hub_is_unreachable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toy = ms.load("toy")
    save_file({"directions": torch.randn(2, toy.arch.d_model)}, tmp_path / "dirs.safetensors")
    out = runner.invoke(app, ["weights", "directions", "-m", "toy", "-d", str(tmp_path / "dirs.safetensors")])
    assert out.exit_code == 0, out.output
    assert "Strongest interactions" in out.stdout
    assert Path(toy.source) == registry.organism_path("toy")  # the folder both commands read

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(loading, "_hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.chdir(tmp_path)
    for model_id in ("gpt2", "someone/not-downloaded-model"):
        out = runner.invoke(app, ["weights", "analyze", model_id, "-o", str(tmp_path / "t.csv")])
        assert out.exit_code == 2, out.output
        message = out.stderr.strip()
        assert "\n" not in message and "hub cannot be reached" in message and "does not exist" not in message
        assert f"mechscope weights download --model-id {model_id}" in message
    out = runner.invoke(app, ["weights", "analyze", "missing.safetensors", "-o", str(tmp_path / "t.csv")])
    assert out.exit_code == 2 and "does not exist" in out.stderr


def test_a_tokenizer_larger_than_the_embedding_is_refused_at_load(tiny_dir: Callable[[str], Path]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tiny_dir("llama")
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    rows = model.get_input_embeddings().num_embeddings
    tokenizer.add_tokens([f"<extra{i}>" for i in range(rows - len(tokenizer) + 5)])
    with pytest.raises(
        ms.ModelLoadError, match=rf"the tokenizer has {len(tokenizer)} tokens but the model's embedding has {rows} rows"
    ):
        ms.wrap(model, tokenizer)


def test_granite_embed_is_taken_before_the_embedding_multiplier(tmp_path: Path) -> None:
    from mechscope.testing.tiny_models import build_tiny_model

    lm = ms.load(build_tiny_model("granitemoe", tmp_path / "granite", embedding_multiplier=2.0))
    with lm.capture(["embed", "resid_pre.0"]) as cache:
        lm.forward("The capital of France is")
    torch.testing.assert_close(cache["resid_pre.0"], 2.0 * cache["embed"])


def test_dtype_names_are_case_blind() -> None:
    assert loading.resolve_dtype("Auto") == "auto"
    assert loading.resolve_dtype("BF16") == torch.bfloat16
