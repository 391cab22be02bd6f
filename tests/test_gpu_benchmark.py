"""The GPU benchmark suite (benchmarks/gpu/run.py): its no-GPU message, and a CPU dry run of all seven measurements."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu" / "run.py"
UNITS = {
    "capture": "tokens/s",
    "logit_lens": "tokens/s",
    "steered_generation": "tokens/s",
    "steering_training": "tokens/s",
    "encyclopedia": "concepts/s",
    "routing": "tokens/s",
    "weights_census": "GB/s",
}


def run_script(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")  # torch then sees no GPU, even on a machine that has one
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )


def test_no_gpu_prints_one_clear_line_and_exits_0() -> None:
    result = run_script(timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines() == [
        "no CUDA GPU found (torch.cuda.is_available() is False); this suite measures GPU throughput: run it on a "
        "machine with a GPU, or pass --device cpu for a dry run of every measurement"
    ]
    assert "Traceback" not in result.stderr


def test_unknown_model_is_refused_in_one_line() -> None:
    result = run_script("--device", "cpu", "--models", "toy,gpt5", timeout=120)
    assert result.returncode == 2
    assert "unknown model 'gpt5' in --models" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_cpu_dry_run_measures_all_seven_against_their_baselines(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    result = run_script("--device", "cpu", "--quick", "--out", str(out), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["environment"]["gpu"] is None and report["environment"]["device"] == "cpu"
    assert report["environment"]["torch"] == torch.__version__
    rows = report["measurements"]
    assert {row["measurement"] for row in rows} == set(UNITS)
    assert {(row["measurement"], row["model"]) for row in rows} >= {("capture", "toy"), ("routing", "toy-moe")}
    for row in rows:
        assert row["unit"] == UNITS[row["measurement"]], row
        assert row["baseline_s"] > 0 and row["mechscope_s"] > 0 and row["ratio"] > 0, row
        assert row["ratio"] == pytest.approx(row["mechscope_s"] / row["baseline_s"])
        assert row["mechscope_throughput"] == pytest.approx(row["work_per_call"] / row["mechscope_s"])
        assert row["baseline_throughput"] == pytest.approx(row["work_per_call"] / row["baseline_s"])
        assert len(row["samples_s"]["mechscope"]) == len(row["samples_s"]["baseline"]) == report["reps"] == 3
    # the baselines compute what mechscope computes: the lens by hand, the same first training loss
    for row in rows:
        if row["measurement"] == "logit_lens":
            assert row["check"]["max_abs_diff_lens_vs_by_hand"] < 1e-4
        if row["measurement"] == "steering_training":
            assert row["check"]["first_loss_mechscope"] == pytest.approx(row["check"]["first_loss_bare"], rel=1e-5)
    # the Markdown table for RESULTS.md: a header naming where it ran, then one line per measurement
    assert "GPU suite on no GPU: dry run on cpu" in result.stdout
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(rows)
