"""Shared fixtures: tiny random-init models of every supported family, saved and loaded back.

Models are built once per test session into a temporary folder and loaded through `mechscope.load`,
i.e. through transformers' real ``from_pretrained``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import mechscope as ms
from mechscope.testing.tiny_models import FAMILIES, build_tiny_model

DECODERS = tuple(f for f in FAMILIES if f != "bert")
MOE_FAMILIES = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "gpt_oss", "granitemoe")
PROMPTS = ["The capital of France is", "Two plus two is four, and the cat"]


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``tiny_dir(family)`` → the folder of that family's tiny model (built on first use)."""
    root = tmp_path_factory.mktemp("tiny")
    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = build_tiny_model(family, root / family)
        return built[family]

    return get


@pytest.fixture(scope="session")
def load_tiny(tiny_dir: Callable[[str], Path]) -> Callable[..., ms.LanguageModel]:
    """``load_tiny(family, attn_implementation=None)`` → a cached `LanguageModel`."""
    loaded: dict[tuple[str, str | None], ms.LanguageModel] = {}

    def get(family: str, attn_implementation: str | None = None) -> ms.LanguageModel:
        key = (family, attn_implementation)
        if key not in loaded:
            loaded[key] = ms.load(tiny_dir(family), attn_implementation=attn_implementation)
        return loaded[key]

    return get
