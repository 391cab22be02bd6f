"""The architecture map: rows resolve on every family, discovery works."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

import mechscope as ms
from mechscope.checks.doctor import run_doctor
from mechscope.errors import ArchitectureError
from mechscope.models import archmap, families
from mechscope.testing.tiny_models import FAMILIES
from tests.conftest import PROMPTS


def test_every_supported_family_has_a_tiny_model() -> None:
    assert set(archmap.FAMILIES) == set(FAMILIES)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox", "gemma2", "mixtral", "granitemoe"])
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
    assert (found.output_transform, found.residual_scale) == (row.output_transform, row.residual_scale)


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


def _inner_kl(lm: ms.LanguageModel) -> list[float]:
    return [r.layer_predictions[0].kl_to_final for r in ms.LogitLens(lm).run(PROMPTS, layers=[0])]


def test_discovered_cohere_reads_out_like_a_row(
    tiny_dir: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    discovered = ms.load(tiny_dir("cohere"))  # Cohere has no row: its logit_scale must be discovered
    assert discovered.arch.family == "generic:cohere" and discovered.arch.readout_error is None
    assert discovered.arch.spec.output_transform == ("logit_scale",)
    assert run_doctor(discovered).passed
    llama = archmap.FAMILIES["llama"]
    monkeypatch.setitem(archmap.FAMILIES, "cohere", replace(llama, output_transform=("logit_scale",)))
    mapped = ms.load(tiny_dir("cohere"))
    assert mapped.arch.family == "cohere"
    assert _inner_kl(discovered) == pytest.approx(_inner_kl(mapped), rel=1e-6, abs=1e-9)
    monkeypatch.setitem(archmap.FAMILIES, "cohere", llama)  # the read-out the issue reported: no logit_scale
    assert _inner_kl(ms.load(tiny_dir("cohere"))) != pytest.approx(_inner_kl(mapped), rel=1e-3)


def test_discovery_refuses_an_output_transform_it_cannot_apply(
    tiny_dir: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(families.OUTPUT_TRANSFORMS, "logit_scale")
    lm = ms.load(tiny_dir("cohere"))
    with pytest.raises(ArchitectureError, match=r"logit_scale=0\.0625.*FAMILIES") as error:
        ms.LogitLens(lm).run(PROMPTS[:1])
    assert "\n" not in str(error.value)


def test_discovery_refuses_a_readout_that_is_not_the_models(tiny_dir: Callable[[str], Path]) -> None:
    lm = ms.load(tiny_dir("cohere"))
    lm.model.logit_scale = 0.5  # the model now scales its logits by something its config does not say
    arch = archmap.build_map(lm.model)
    assert arch.readout_error is not None and "does not reproduce the model's own logits" in arch.readout_error
    with pytest.raises(ArchitectureError, match="add a row for model_type 'cohere'"):
        arch.logits(lm.model.get_input_embeddings().weight[:2])
