"""The architecture map: rows resolve on every family, discovery works, layering holds."""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path

import pytest

import mechscope as ms
from mechscope.checks.doctor import run_doctor
from mechscope.models import archmap
from mechscope.testing.tiny_models import FAMILIES

SRC = Path(__file__).resolve().parent.parent / "src" / "mechscope"


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


LAYERS = {
    "models": 0,
    "core": 1,
    **dict.fromkeys(("checks", "testing", "zoo", "lens", "attention", "causal", "viz"), 2),
    "cli": 3,
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_dependencies_point_one_way() -> None:
    """cli → analyses/checks → core → models: nothing imports a package above it."""
    for package, level in LAYERS.items():
        for path in (SRC / package).rglob("*.py"):
            for name in _imports(path):
                parts = name.split(".")
                if parts[0] == "mechscope" and len(parts) > 1 and parts[1] in LAYERS:
                    assert LAYERS[parts[1]] <= level, f"{path.relative_to(SRC)} imports {name}"
