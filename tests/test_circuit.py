"""Circuit graphs from ablation and patching results: JSON, DOT (rendered by Graphviz), Mermaid, HTML."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

import mechscope as ms
from mechscope.causal import AblationEffect, AblationResult, LogitDiff, TargetProb, activation_patching, sweep
from mechscope.causal.circuit import CircuitGraph, build, from_ablation, from_patching, to_dot, to_mermaid
from mechscope.cli.main import app
from mechscope.viz.circuit_report import render_circuit_html
from mechscope.zoo.card import read_card
from tests.pages import assert_self_contained

EVIL = '<script>alert("x")</script>'
# The bundled toy's planted previous-token head, which carries the subject into the last position.
PLANTED_LAYER, PLANTED_HEAD = read_card("toy")["training"]["config"]["previous_token_head"]


@pytest.fixture(scope="module")
def toy() -> ms.LanguageModel:
    return ms.load("toy")


@pytest.fixture(scope="module")
def ablation(toy: ms.LanguageModel) -> AblationResult:
    return sweep(toy, "The capital of France is", component="head", metric=TargetProb(toy, " Paris"))


def test_ablation_graph_keeps_the_strong_components(ablation: AblationResult) -> None:
    graph = from_ablation(ablation, threshold=0.5)
    inner = [n for n in graph.nodes if n.id not in ("input", "output")]
    assert inner and all(abs(n.effect) >= 0.5 for n in inner)
    assert f"head_{PLANTED_LAYER}_{PLANTED_HEAD}" in {n.id for n in inner}  # see test_ablation
    assert CircuitGraph.model_validate_json(graph.model_dump_json()) == graph
    assert len([n for n in from_ablation(ablation, threshold=0.0, top=3).nodes if n.layer is not None]) == 3


def test_patching_graph_flows_forward_in_position(toy: ms.LanguageModel) -> None:
    clean, corrupted = "The capital of France is", "The capital of Japan is"
    result = activation_patching(toy, clean, corrupted, LogitDiff(toy, correct=" Paris", wrong=" Tokyo"))
    graph = from_patching(result, threshold=0.5)
    nodes = {n.id: n for n in graph.nodes}
    for edge in graph.edges:
        a, b = nodes[edge.source], nodes[edge.target]
        if a.position is not None and b.position is not None:
            assert b.position >= a.position and (b.layer or 0) > (a.layer or 0)
    last, layers = len(result.tokens) - 1, len(result.effects)
    # The planted head moves the subject into the last position within the first layer; it stays there.
    assert {f"L{layer}_P{last}" for layer in range(PLANTED_LAYER, layers)} <= set(nodes)
    assert all(n.position in (None, last) for n in graph.nodes)


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz is not installed (scripts/setup.sh installs it)")
def test_dot_renders_with_graphviz(ablation: AblationResult, tmp_path: Path) -> None:
    graph = from_ablation(ablation, threshold=0.1)
    graph.title = EVIL  # labels with quotes and angle brackets must stay valid DOT
    path = tmp_path / "circuit.dot"
    path.write_text(to_dot(graph))
    svg = subprocess.run(["dot", "-Tsvg", str(path)], capture_output=True, text=True, timeout=60, check=True).stdout
    assert "<svg" in svg and f"head L{PLANTED_LAYER}.{PLANTED_HEAD}" in svg


MERMAID_LINE = re.compile(r'^    (n\d+\["[^"]*"\]|n\d+ --> n\d+)$')


def test_mermaid_is_a_well_formed_flowchart(ablation: AblationResult) -> None:
    graph = from_ablation(ablation, threshold=0.1)
    graph.nodes[1].label = EVIL
    lines = to_mermaid(graph).splitlines()
    assert lines[0] == "flowchart LR"
    assert all(MERMAID_LINE.match(line) for line in lines[1:]), lines
    declared = {m.group(1) for line in lines if (m := re.match(r"^    (n\d+)\[", line))}
    used = set(re.findall(r"n\d+", " ".join(line for line in lines if "-->" in line)))
    assert used <= declared


def test_html_view_is_self_contained_and_escaped(ablation: AblationResult) -> None:
    graph = from_ablation(ablation, threshold=0.1)
    graph.nodes[1].label = EVIL
    html = render_circuit_html(graph)
    assert EVIL not in html
    assert_self_contained(html)  # only the kit's figure-saving script; nothing fetched
    assert html.count('class="node"') == len(graph.nodes) and html.count('class="edge"') == len(graph.edges)


def test_circuit_export_command(ablation: AblationResult, tmp_path: Path) -> None:
    source = tmp_path / "ablation.json"
    source.write_text(ablation.model_dump_json())
    for fmt in ("json", "dot", "mermaid", "html"):
        out = tmp_path / f"circuit.{fmt}"
        result = CliRunner().invoke(app, ["circuit", "export", "-i", str(source), "-o", str(out), "-f", fmt])
        assert result.exit_code == 0, result.output
        assert out.read_text()
    graph = CircuitGraph.model_validate_json((tmp_path / "circuit.json").read_text())
    assert graph == build(ablation)
    bad = tmp_path / "bad.json"
    bad.write_text('{"hello": 1}')
    failed = CliRunner().invoke(app, ["circuit", "export", "-i", str(bad), "-o", str(tmp_path / "x"), "-f", "dot"])
    assert failed.exit_code == 2 and "not an ablation or patching result" in failed.stderr


def test_text_criterion_results_have_no_graph() -> None:
    result = AblationResult(
        prompt="p",
        component="attn",
        method="zero",
        clean_criterion=True,
        effects=[AblationEffect(component="attn", layer=0, text="x", criterion=False)],
    )
    graph = from_ablation(result)
    assert [n.id for n in graph.nodes] == ["input", "output"]
