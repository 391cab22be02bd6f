"""The command line: models listing, doctor, one-line errors, the model option group, output files."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

import mechscope as ms
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
    assert len(report["checks"]) == 9


def test_doctor_bad_model_is_one_line_exit_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["doctor", "-m", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0 and "no model folder" in result.stderr


# Every command that loads a model takes the whole model option group (see mechscope.cli.options).
MODEL_COMMANDS = [
    ["doctor"],
    ["analyze"],
    ["attention"],
    ["heads"],
    ["patch"],
    ["ablate"],
    ["steer"],
    ["steer", "sweep"],
    ["directions", "compute"],
    ["tuned-lens"],
    ["moe", "info"],
    ["moe", "trace"],
    ["moe", "utilization"],
]
GROUP = ("--dtype", "--device", "--device-map", "--attn", "--revision", "--trust-remote-code")


@pytest.mark.parametrize("command", MODEL_COMMANDS, ids=" ".join)
def test_every_model_command_takes_the_model_option_group(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    options = set(re.findall(r"--[a-z][a-z0-9-]*", result.stdout))
    assert {"--model", *GROUP} <= options


def test_compare_takes_one_model_option_group_per_model() -> None:
    result = runner.invoke(app, ["compare", "--help"])
    assert result.exit_code == 0, result.output
    options = set(re.findall(r"--[a-z][a-z0-9-]*", result.stdout))
    for prefix in ("--model1", "--model2"):
        assert {prefix, *(prefix + option[1:] for option in GROUP)} <= options
    assert "--model" not in options and "--dtype" not in options


def test_top_level_commands_keep_their_names() -> None:
    names = set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
    assert names == {
        *("models", "doctor", "analyze", "compare", "tuned-lens", "attention", "heads", "patch", "ablate"),
        *("weights", "circuit", "steer", "directions", "moe", "concepts", "sae", "ui"),
    }


def test_patch_loads_the_model_in_the_dtype_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    import mechscope.core.lm

    loaded: list[ms.LanguageModel] = []
    real_load = mechscope.core.lm.load

    def spy(*args: Any, **kwargs: Any) -> ms.LanguageModel:
        loaded.append(real_load(*args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(mechscope.core.lm, "load", spy)
    args = ["patch", "--clean", "The capital of France is", "--corrupted", "The capital of Japan is"]
    result = runner.invoke(app, [*args, "--correct", " Paris", "--wrong", " Tokyo", "--dtype", "bfloat16", "--json"])
    assert result.exit_code == 0, result.output
    assert len(loaded) == 1 and next(loaded[0].model.parameters()).dtype == torch.bfloat16
    data = json.loads(result.stdout)
    assert len(data["effects"]) == 4 and data["clean_metric"] > data["corrupted_metric"]


def test_an_output_path_that_is_a_folder_is_one_line_exit_2(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("untouched")
    result = runner.invoke(app, ["analyze", "-p", "hi", "--html", str(tmp_path)])
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0 and "is a folder" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]  # no temporary file left (hidden or not)


def test_analyze_html_log_prob_plots_log_probabilities(tmp_path: Path) -> None:
    pages = {}
    for flag in ([], ["--log-prob"]):
        html = tmp_path / f"lens{len(flag)}.html"
        result = runner.invoke(
            app, ["analyze", "-p", "The capital of France is", "--track", " Paris", "--html", str(html), *flag]
        )
        assert result.exit_code == 0, result.output
        pages[bool(flag)] = html.read_text(encoding="utf-8")
    assert "log probability (ln p)" in pages[True] and "log probability" not in pages[False]
    assert 'data-file="tracked-tokens-log"' in pages[True] and 'data-file="tracked-tokens"' in pages[False]


def test_atomic_write_gives_files_the_usual_mode(tmp_path: Path) -> None:
    import os

    from mechscope.storage.atomic import atomic_write_text

    previous = os.umask(0o022)
    try:
        written = atomic_write_text(tmp_path / "out.txt", "x")
    finally:
        os.umask(previous)
    assert written.stat().st_mode & 0o777 == 0o644  # as open() would make it, not mkstemp's 0600


def test_write_text_output_is_atomic_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    from mechscope.cli.output import write_text_output

    target = tmp_path / "report.html"
    assert write_text_output(target, "<p>hi</p>") == target and target.read_text() == "<p>hi</p>"
    with pytest.raises(ms.InputError, match="does not exist"):
        write_text_output(tmp_path / "missing" / "report.html", "x")
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_visible_shows_whitespace_and_escapes_markup() -> None:
    from mechscope.cli.output import visible

    assert visible(" a\tb\n") == "␣a⇥b⏎"
    assert visible("[red]x[/red]") == "\\[red]x\\[/red]"


NO_MODEL_COMMANDS = [
    ["--help"],
    *([name, "--help"] for name in ("weights", "circuit", "steer", "directions", "analyze", "patch")),
    ["models", "--json"],
    ["circuit", "export", "-i", "{result}", "-o", "{out}/circuit.html"],
    ["weights", "verify", "{out}"],  # a folder without a manifest: the one-line error path
]


@pytest.mark.parametrize("args", NO_MODEL_COMMANDS, ids=[" ".join(a[:2]) for a in NO_MODEL_COMMANDS])
def test_commands_that_need_no_model_import_neither_torch_nor_transformers(args: list[str], tmp_path: Path) -> None:
    result = tmp_path / "ablation.json"
    effect = {"component": "mlp", "layer": 0, "metric": 0.1, "delta": -0.4}
    ablation = {"prompt": "p", "component": "mlp", "method": "zero", "clean_metric": 0.5, "effects": [effect]}
    result.write_text(json.dumps(ablation))
    filled = [a.format(result=result, out=tmp_path) for a in args]
    code = (
        "import sys\n"
        "from mechscope.cli.main import app\n"
        "try:\n"
        f"    app({filled!r}, standalone_mode=False)\n"
        "except SystemExit:\n"
        "    pass\n"
        "except Exception as error:  # a one-line MechscopeError has already been printed; others fail the test\n"
        "    if type(error).__module__.split('.')[0] != 'mechscope': raise\n"
        "print('HEAVY', sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "HEAVY []", done.stdout


def test_weights_command_modules_do_not_import_the_weights_app() -> None:
    """The package registers its commands explicitly; no command module imports it back (no cycle)."""
    import mechscope.cli.weights as package

    folder = Path(package.__file__).parent
    for path in sorted(folder.glob("*.py")):
        if path.name == "__init__.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert "mechscope.cli.weights" not in imported, path.name
    names = {command.name for command in package.app.registered_commands}
    assert names == {"analyze", "diff", "download", "verify", "directions"}
