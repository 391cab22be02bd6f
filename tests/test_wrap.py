"""``ms.wrap``: a model already in memory gets the same map, hooks and doctor as one ``ms.load`` reads."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

import mechscope as ms
from mechscope.checks.doctor import run_doctor

PROMPTS = ["The capital of France is", "Two plus two is four, and the cat"]
SITES = ["resid_post.*", "attn_out.*", "mlp_out.*"]


def _capture(lm: ms.LanguageModel) -> dict[str, torch.Tensor]:
    with lm.capture(SITES) as cache:
        lm.forward(PROMPTS)
    return {site: cache[site] for site in cache}


def _assert_same_capture(a: ms.LanguageModel, b: ms.LanguageModel) -> None:
    got, want = _capture(a), _capture(b)
    assert list(got) == list(want) and len(got) == 3 * a.arch.n_layers
    for site, value in want.items():
        assert torch.equal(got[site], value), site


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_wrapped_model_captures_exactly_like_a_loaded_one(tiny_dir: Callable[[str], Path], dtype: torch.dtype) -> None:
    folder = tiny_dir("llama")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    lm = ms.wrap(model, AutoTokenizer.from_pretrained(folder))
    assert isinstance(lm, ms.LanguageModel) and lm.model is model and not model.training
    assert lm.source == str(folder) and lm.arch.family == "llama"
    assert lm.tokenizer.pad_token is not None and lm.tokenizer.padding_side == "left"
    assert next(lm.model.parameters()).dtype == dtype
    loaded = ms.load(folder, dtype=dtype)
    _assert_same_capture(lm, loaded)
    report = run_doctor(lm)
    assert report.model == str(folder)
    assert report.checks == run_doctor(loaded).checks  # the same doctor, down to every measured detail
    if dtype == torch.float32:
        assert report.passed, [check for check in report.checks if not check.passed]


def test_wrapped_encoder_pads_right(tiny_dir: Callable[[str], Path]) -> None:
    folder = tiny_dir("bert")
    lm = ms.wrap(AutoModel.from_pretrained(folder), AutoTokenizer.from_pretrained(folder))
    assert lm.arch.kind == "encoder" and lm.tokenizer.padding_side == "right"
    _assert_same_capture(lm, ms.load(folder))


def test_wrapper_holding_the_model_is_unwrapped(tiny_dir: Callable[[str], Path]) -> None:
    """PEFT keeps the transformers model at ``.base_model.model``; peft is not installed, so mimic its layout."""

    class Tuner(nn.Module):
        def __init__(self, model: nn.Module) -> None:
            super().__init__()
            self.model = model

    class Adapted(nn.Module):
        def __init__(self, model: nn.Module) -> None:
            super().__init__()
            self.base_model = Tuner(model)

    folder = tiny_dir("gpt2")
    inner = AutoModelForCausalLM.from_pretrained(folder)
    lm = ms.wrap(Adapted(inner), AutoTokenizer.from_pretrained(folder))
    assert lm.model is inner and lm.arch.family == "gpt2"
    _assert_same_capture(lm, ms.load(folder))


def test_device_map_model_wraps(tiny_dir: Callable[[str], Path]) -> None:
    folder = tiny_dir("qwen2")
    lm = ms.wrap(AutoModelForCausalLM.from_pretrained(folder, device_map="auto"), AutoTokenizer.from_pretrained(folder))
    assert lm.device == torch.device("cpu")
    _assert_same_capture(lm, ms.load(folder))


def test_model_built_in_memory_without_tokenizer(tiny_dir: Callable[[str], Path]) -> None:
    config = AutoConfig.from_pretrained(tiny_dir("llama"))
    config._name_or_path = ""
    model = AutoModelForCausalLM.from_config(config)
    lm = ms.wrap(model)
    assert lm.source == "LlamaForCausalLM" and not lm.has_tokenizer and "no tokenizer" in repr(lm)
    logits = lm.forward(torch.tensor([[1, 2, 3]]))
    assert logits.shape == (1, 3, lm.arch.vocab)
    with pytest.raises(ms.InputError, match=r"ms\.wrap\(lm\.model, tokenizer\)") as info:
        lm.forward("The capital of France is")
    assert "\n" not in str(info.value)
    lm.tokenizer = AutoTokenizer.from_pretrained(tiny_dir("llama"))  # given later: prepared the same way
    assert lm.has_tokenizer and lm.tokenizer.padding_side == "left"
    assert lm.forward(PROMPTS).shape[0] == 2


def test_wrap_errors_are_one_line(tiny_dir: Callable[[str], Path]) -> None:
    with pytest.raises(ms.ModelLoadError, match="takes a torch model"):
        ms.wrap("gpt2")  # type: ignore[arg-type]
    with pytest.raises(ms.ModelLoadError, match="has no Hugging Face config"):
        ms.wrap(nn.Linear(2, 2))
    model = AutoModelForCausalLM.from_pretrained(tiny_dir("llama"))
    with pytest.raises(ms.ModelLoadError, match="not a transformers tokenizer"):
        ms.wrap(model, str(tiny_dir("llama")))
    assert "wrap" in ms.__all__ and ms.wrap is ms.__getattr__("wrap")
