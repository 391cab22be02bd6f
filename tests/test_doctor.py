"""`mechscope doctor`: every check passes on every family, and each new check fails on a map that is wrong."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

import mechscope as ms
from mechscope.checks.doctor import DoctorReport, run_doctor
from mechscope.models import archmap, families
from mechscope.testing.tiny_models import DISCOVERED_FAMILIES, FAMILIES, build_tiny_model

READOUT = "lens read-out of the last layer = logits"
DECOMPOSITION = "resid_pre + attn_out + mlp_out = resid_post"
HEADS = "o_proj(head_out) = attn_out"

# Granite-MoE with multipliers that matter (the tiny defaults are all 1).
GRANITE = {"logits_scaling": 4.0, "residual_multiplier": 0.5, "embedding_multiplier": 2.0}


def _check(report: DoctorReport, name: str) -> tuple[bool, str]:
    check = next(c for c in report.checks if c.name == name)
    return check.passed, check.detail


@pytest.mark.parametrize("family", FAMILIES + DISCOVERED_FAMILIES)
def test_every_check_passes_on_every_family(load_tiny: Callable[..., ms.LanguageModel], family: str) -> None:
    report = run_doctor(load_tiny(family))
    failed = [f"{c.name}: {c.detail}" for c in report.checks if not c.passed]
    assert not failed, failed
    assert len(report.checks) == 9
    assert {READOUT, DECOMPOSITION, HEADS} <= {c.name for c in report.checks}


def test_encoder_skips_what_does_not_apply(load_tiny: Callable[..., ms.LanguageModel]) -> None:
    report = run_doctor(load_tiny("bert"))
    assert _check(report, READOUT)[1].startswith("skipped")
    assert "post-LayerNorm" in _check(report, DECOMPOSITION)[1]
    assert not _check(report, HEADS)[1].startswith("skipped")


def test_multipliers_are_applied_and_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = build_tiny_model("granitemoe", tmp_path / "granitemoe", **GRANITE)
    report = run_doctor(ms.load(folder))
    assert report.passed, [c for c in report.checks if not c.passed]
    assert "residual_multiplier = 0.5" in _check(report, DECOMPOSITION)[1]

    row = archmap.FAMILIES["granitemoe"]
    monkeypatch.setitem(archmap.FAMILIES, "granitemoe", replace(row, output_transform=(), residual_scale=None))
    broken = run_doctor(ms.load(folder))
    assert not _check(broken, READOUT)[0]
    assert not _check(broken, DECOMPOSITION)[0]
    assert _check(broken, HEADS)[0]  # the multiplier is applied after the projection: head_out still adds up


def test_soft_capping_is_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = build_tiny_model("gemma2", tmp_path / "gemma2", final_logit_softcapping=0.05)
    assert _check(run_doctor(ms.load(folder)), READOUT)[0]
    monkeypatch.setitem(archmap.FAMILIES, "gemma2", replace(archmap.FAMILIES["gemma2"], output_transform=()))
    assert not _check(run_doctor(ms.load(folder)), READOUT)[0]


def test_wrong_module_paths_fail_the_sums(tiny_dir: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch) -> None:
    row = archmap.FAMILIES["llama"]
    monkeypatch.setitem(archmap.FAMILIES, "llama", replace(row, o_proj="self_attn.q_proj"))
    assert not _check(run_doctor(ms.load(tiny_dir("llama"))), HEADS)[0]
    monkeypatch.setitem(archmap.FAMILIES, "llama", replace(row, attn_out="input_layernorm"))
    report = run_doctor(ms.load(tiny_dir("llama")))
    assert not _check(report, DECOMPOSITION)[0] and not _check(report, HEADS)[0]
    assert not report.passed


def test_a_row_without_the_output_transform_fails_the_readout(
    tiny_dir: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(archmap.FAMILIES, "cohere", archmap.FAMILIES["llama"])  # a row that forgets logit_scale
    report = run_doctor(ms.load(tiny_dir("cohere")))
    passed, detail = _check(report, READOUT)
    assert not passed and "no output transform" in detail
    assert not report.passed


def test_a_discovered_family_with_an_unknown_output_transform_fails_the_readout(
    tiny_dir: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(families.OUTPUT_TRANSFORMS, "logit_scale")  # discovery no longer knows Cohere's
    report = run_doctor(ms.load(tiny_dir("cohere")))
    passed, detail = _check(report, READOUT)
    assert not passed and "logit_scale" in detail and "FAMILIES" in detail
    assert report.family == "generic:cohere" and not report.passed
