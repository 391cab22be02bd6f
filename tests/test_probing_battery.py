"""The probe battery and its stratigraphy (issue 19, requirements 4 and 6), checked against the toy card."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import mechscope as ms
from mechscope.cli.main import app
from mechscope.errors import InputError
from mechscope.probing.battery import (
    DEFAULT_BATTERY,
    ProbeBattery,
    bootstrap_emergence,
    load_battery,
    parse_battery,
    readable_layers,
    run_battery,
)
from mechscope.probing.battery_results import BatteryResult
from mechscope.probing.probe import probe, probe_predictions
from mechscope.viz.probe_battery_report import render_battery_html
from mechscope.zoo.card import read_card, readable_from

pytest.importorskip("sklearn")

#: The card's probe names for the default battery's properties.
CARD_NAMES = {
    "tool_mode": "tool",
    "tool_type": "tool_type",
    "style": "style",
    "fact_relation": "relation",
    "subject_is_country": "country",
    "position_parity": "parity",
}


@pytest.fixture(scope="module")
def toy() -> ms.LanguageModel:
    return ms.load("toy")


@pytest.fixture(scope="module")
def default_run(toy: ms.LanguageModel) -> BatteryResult:
    # Fewer shuffles and resamples than the CLI's defaults (20, 200) keep this at about 20 s on 2 cores.
    return run_battery(toy, "default", permutations=5, bootstrap=100, progress=False)


def test_tool_mode_reads_on_held_out_templates_far_above_the_baseline(default_run: BatteryResult) -> None:
    tool = default_run.property("tool_mode")
    card = read_card("toy")["measurements"]["probes"]["tool"]
    best = tool.peak
    assert tool.peak_accuracy >= 0.95 and max(card) >= 0.95, (tool.accuracies(), card)
    assert abs(best - int(np.argmax(card))) <= 1  # the card's best layer (its own classifier and split)
    score = tool.at(best)
    assert score.majority == pytest.approx(0.5) and score.selectivity > 0.3 and score.p_value <= 1 / 6
    assert tool.n_groups == 50 and tool.n == 384  # 32 tool templates x 6 + as many chit-chat prompts (18 templates)


def test_style_and_the_parity_control_behave_as_the_card_says(default_run: BatteryResult) -> None:
    card = read_card("toy")["measurements"]
    style = default_run.property("style")
    card_style = readable_from(card["probes"]["style"], card["probe_majority"]["style"])
    assert style.emergence is not None and card_style is not None and abs(style.emergence - card_style) <= 1
    parity = default_run.property("position_parity")
    assert parity.emergence is None
    for score in parity.scores:
        assert score.accuracy < score.majority + 0.1 and abs(score.selectivity) < 0.15, score


def test_the_stratigraphy_orders_the_properties_as_the_card_says(default_run: BatteryResult) -> None:
    card = read_card("toy")["measurements"]
    never = len(default_run.layers)

    def card_layer(name: str) -> int:
        key = CARD_NAMES[name]
        layer = readable_from(card["probes"][key], card["probe_majority"][key])
        return never if layer is None else layer

    ours = {p.name: never if p.emergence is None else p.emergence for p in default_run.properties}
    theirs = {name: card_layer(name) for name in ours}
    for a in ours:
        for b in ours:
            if theirs[a] + 1 < theirs[b]:  # a clear gap on the card: the battery must not reverse it
                assert ours[a] < ours[b], (a, b, ours, theirs)
    # and the mechanisms behind the order: the tool is known later than that a tool is called
    assert ours["tool_mode"] < ours["tool_type"] and ours["position_parity"] == never
    rows = default_run.stratigraphy()
    assert [r["category"] for r in rows] == ["task", "task", "register", "knowledge", "knowledge", "control"]


def test_random_features_and_labels_read_at_chance() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 64))
    labels = rng.integers(0, 2, 400)
    groups = np.arange(400) // 10
    score = probe(x, labels, groups, permutations=10)
    assert abs(score.accuracy - 0.5) < 0.08 and score.p_value > 0.05, score
    # scaling inside the folds: a feature that is large only in one group cannot leak into its test fold
    x[groups == 3] *= 50
    assert abs(probe(x, labels, groups, permutations=0).accuracy - 0.5) < 0.08


def test_readable_layers_and_the_bootstrap_by_hand() -> None:
    assert readable_layers([0.5, 0.8, 0.9, 0.4], [0.5] * 4, 0.75, 0.1, 0.5) == (1, 3)
    assert readable_layers([0.5, 0.8, 0.9], [0.75] * 3, 0.75, 0.1, 0.5) == (2, None)
    assert readable_layers([0.5, 0.6], [0.5, 0.5], 0.75, 0.1, 0.5) == (None, None)
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 100)
    x = rng.normal(size=(200, 4))
    clean = x + 4.0 * y[:, None]
    groups = np.arange(200) // 10
    spec = parse_battery(DEFAULT_BATTERY)
    evidence = [probe_predictions(f, y, groups, permutations=0)[1] for f in (x, x, clean)]
    low, high, never = bootstrap_emergence(evidence, spec, 200, seed=0)
    assert (low, high, never) == (2, 2, 0.0)
    low, high, never = bootstrap_emergence(evidence[:2], spec, 200, seed=0)
    assert (low, high) == (None, None) and never == 1.0


def test_battery_files_custom_probes_and_errors(toy: ms.LanguageModel, tmp_path: Path) -> None:
    rows = [
        {
            "prompt": f"<{'pirate' if i % 2 else 'formal'}> Tell me about thing {i}.",
            "label": i % 2,
            "template": f"t{i % 6}",
            "mood": "odd" if i % 2 else "even",
        }
        for i in range(48)
    ]
    (tmp_path / "mine.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    battery = tmp_path / "b.yaml"
    battery.write_text(
        "name: mine\nprobes:\n  - name: mood\n    category: mine\n    file: mine.jsonl\n    label: metadata.mood\n"
        "  - name: pirate_only\n    generator: tool_calls\n    options: {per_template: 2}\n    label: sub_label\n"
        "    where: {label: 1}\n",
        encoding="utf-8",
    )
    result = ProbeBattery(battery).run(toy, layers=[3], permutations=2, bootstrap=0, progress=False)
    mood = result.property("mood")
    assert mood.source == "mine.jsonl" and mood.layers == [3] and mood.at(3).accuracy > 0.9
    assert result.property("pirate_only").n_classes == 8
    assert load_battery("default").probes[0].name == "tool_mode"
    with pytest.raises(InputError, match="exactly one of 'generator' or 'file'"):
        parse_battery("probes:\n  - name: x\n")
    with pytest.raises(InputError, match=r"b\.yaml:2: not valid YAML"):
        parse_battery("probes:\n  - [", "b.yaml")
    with pytest.raises(InputError, match="two probes are called 'x'"):
        parse_battery("probes:\n  - {name: x, generator: styles}\n  - {name: x, generator: styles}\n")
    with pytest.raises(InputError, match="unknown generator 'nope'"):
        run_battery(toy, parse_battery("probes:\n  - {name: x, generator: nope}\n"), progress=False)
    with pytest.raises(InputError, match="fewer than two classes"):
        run_battery(toy, parse_battery("probes:\n  - {name: x, generator: styles, where: {label: 1}}\n"))
    with pytest.raises(InputError, match="no battery file"):
        load_battery(tmp_path / "missing.yaml")


def test_the_html_page_escapes_and_marks_the_baseline(default_run: BatteryResult) -> None:
    page = render_battery_html(default_run.model_copy(update={"model": "<script>alert(1)</script>"}))
    assert "&lt;script&gt;alert(1)" in page and "<script>alert(1)" not in page
    assert page.count('class="emergence"') == sum(p.emergence is not None for p in default_run.properties)
    assert "majority" in page and "position_parity" in page


def test_the_cli_runs_a_battery_and_writes_a_template(tmp_path: Path) -> None:
    runner = CliRunner()
    out = runner.invoke(app, ["circuit", "probes", "init", "-o", str(tmp_path / "b.yaml")])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "b.yaml").read_text(encoding="utf-8") == DEFAULT_BATTERY
    small = tmp_path / "small.yaml"
    small.write_text(
        "name: small\nprobes:\n  - {name: style, category: register, generator: styles}\n", encoding="utf-8"
    )
    args = ["circuit", "probes", "run", "-m", "toy", "-b", str(small), "--permutations", "2", "--bootstrap", "20"]
    out = runner.invoke(app, [*args, "--json", "--html", str(tmp_path / "s.html"), "--layers", "0,3"])
    assert out.exit_code == 0, out.output
    result = BatteryResult.model_validate_json(out.output)
    assert result.layers == [0, 3] and result.property("style").at(3).accuracy > 0.9
    assert (tmp_path / "s.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    bad = runner.invoke(app, ["circuit", "probes", "run", "-m", "toy", "-b", str(tmp_path / "none.yaml")])
    assert bad.exit_code == 2 and "no battery file" in bad.output
