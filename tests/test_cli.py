"""The command line: models listing, doctor, one-line errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from typer.testing import CliRunner

from mechscope.cli.main import app

runner = CliRunner()


def test_help_and_models_listing() -> None:
    assert runner.invoke(app, ["--help"]).exit_code == 0
    result = runner.invoke(app, ["models", "--json"])
    assert result.exit_code == 0
    families = {row["model_type"] for row in json.loads(result.stdout)["families"]}
    assert {"gpt2", "llama", "mixtral", "gpt_oss", "bert"} <= families
    assert "Supported families" in runner.invoke(app, ["models"]).stdout


def test_doctor_passes_on_a_tiny_moe(tiny_dir: Callable[[str], Path]) -> None:
    result = runner.invoke(app, ["doctor", "-m", str(tiny_dir("olmoe")), "--json"])
    assert result.exit_code == 0, result.stdout
    report = json.loads(result.stdout)
    assert report["family"] == "olmoe" and all(check["passed"] for check in report["checks"])
    assert len(report["checks"]) == 6


def test_doctor_bad_model_is_one_line_exit_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["doctor", "-m", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0 and "no model folder" in result.stderr
