"""The architecture map: rows resolve on every family, discovery works."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import mechscope as ms
from mechscope.checks.doctor import run_doctor
from mechscope.models import archmap
from mechscope.testing.tiny_models import FAMILIES


def test_every_supported_family_has_a_tiny_model() -> None:
    assert set(archmap.FAMILIES) == set(FAMILIES)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox", "mixtral", "granitemoe"])
def test_discovery_agrees_with_the_table(load_tiny: Callable[..., ms.LanguageModel], family: str) -> None:
    lm = load_tiny(family)
    found, row = archmap.discover_spec(lm.model), archmap.FAMILIES[family]
    assert (found.layers, found.embed, found.o_proj, found.final_norm) == (
        row.layers,
        row.embed,
        row.o_proj,
        row.final_norm,
    )
    assert (found.router, found.experts) == (row.router, row.experts)


def test_unknown_family_falls_back_to_checked_discovery(
    tiny_dir: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(archmap.FAMILIES, "qwen3")
    lm = ms.load(tiny_dir("qwen3"))
    assert lm.arch.family == "generic:qwen3"
    assert run_doctor(lm).passed


def test_bare_base_model_maps_without_the_head(tiny_dir: Callable[[str], Path]) -> None:
    from transformers import AutoModel

    base = AutoModel.from_pretrained(tiny_dir("llama"))
    arch = archmap.build_map(base)
    assert arch.spec.layers == "layers" and arch.unembed() is None
