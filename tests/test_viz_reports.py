"""The circuit, compare and weight-diff pages on the shared shell and chart kit (issue 16); no browser, no torch."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET

from mechscope.causal.results import CircuitGraph, Edge, Node
from mechscope.viz.circuit_report import EMPTY, render_circuit_html
from mechscope.viz.compare_report import render_compare_html
from mechscope.viz.weights_diff_report import render_weights_diff_html
from mechscope.weights.diff_results import ParamDiff, WeightDiff
from tests.pages import assert_self_contained, figure_svgs
from tests.samples import comparison

EVIL = "<script>alert(1)</script>"
SVG = "{http://www.w3.org/2000/svg}"


def _svg_downloads(page: str) -> list[ET.Element]:
    """What each figure's "download SVG" button saves: its drawing, parsed (raises if it is not well-formed XML)."""
    return figure_svgs(page)


def _graph(label: str = "head L1.0") -> CircuitGraph:
    return CircuitGraph(
        title="demo",
        origin="ablation",
        nodes=[
            Node(id="input", label="input"),
            Node(id="a", label=label, layer=0, effect=0.35),
            Node(id="b", label="mlp L1", layer=1, effect=-0.125),
            Node(id="output", label="output"),
        ],
        edges=[
            Edge(source="input", target="a", weight=0.35),
            Edge(source="a", target="b", weight=0.125),
            Edge(source="b", target="output", weight=0.125),
        ],
    )


def test_circuit_shows_effects_and_weights_as_text() -> None:
    page = render_circuit_html(_graph())
    root = _svg_downloads(page)[0]
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert "+0.350" in texts and "-0.125" in texts  # node effects, not only in tooltips
    edges = list(root.iter(f"{SVG}g"))
    weights = [t.text for g in edges if g.get("class") == "edge" for t in g.iter(f"{SVG}text")]
    assert weights == ["+0.350", "+0.125", "+0.125"]
    assert root.find(f"{SVG}defs/{SVG}marker") is not None
    arrows = [[line.get("marker-end") for line in g.iter(f"{SVG}line")] for g in edges if g.get("class") == "edge"]
    assert len(arrows) == 3 and all("url(#arrow)" in ends for ends in arrows)  # every edge ends in an arrowhead
    assert 'data-kind="diverging"' in page and "0 is white" in page  # the signed scale has a legend
    assert page.count('class="node"') == 4 and page.count('class="edge"') == 3
    assert_self_contained(page)


def test_empty_circuit_says_so_and_draws_no_edge() -> None:
    graph = CircuitGraph(
        title="empty",
        origin="patching",
        nodes=[Node(id="input", label="input"), Node(id="output", label="output")],
        edges=[],
    )
    page = render_circuit_html(graph)
    assert EMPTY in page and 'class="edge"' not in page
    root = _svg_downloads(page)[0]
    assert root.find(f".//{SVG}line") is None
    assert EMPTY in [t.text for t in root.iter(f"{SVG}text")]


def test_circuit_escapes_labels() -> None:
    graph = _graph(EVIL)
    graph.title = EVIL
    page = render_circuit_html(graph)
    assert EVIL not in page and "&lt;script&gt;" in page
    assert_self_contained(page)
    _svg_downloads(page)


def test_compare_has_kl_plot_with_axis_titles() -> None:
    page = render_compare_html(comparison(EVIL, EVIL))
    assert EVIL not in page
    assert_self_contained(page)
    assert page.count('class="layer"') == 3 and 'data-same="false"' in page
    assert "One row per aligned pair of layers" in page  # the table is explained
    (root,) = _svg_downloads(page)
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert "layer of model A" in texts and "KL(A‖B) (nats)" in texts
    line = root.find(f"{SVG}polyline")
    assert line is not None and len(line.attrib["points"].split()) == 2  # the layer without a KL is skipped


def test_compare_without_token_level_says_why() -> None:
    page = render_compare_html(comparison(EVIL, EVIL, token_level=False))
    assert "not compared token by token" in page and "different tokenizers" in page
    assert _svg_downloads(page) == []


def _param(name: str, layer: int | None, block: str, base: float, diff: float) -> ParamDiff:
    relative = diff / base if base else (math.inf if diff else 0.0)
    return ParamDiff(
        param_name=name,
        layer_index=layer,
        block_type=block,
        shape=(4, 4),
        base_dtype="float32",
        finetuned_dtype="float32",
        base_norm=base,
        finetuned_norm=base + diff,
        diff_norm=diff,
        relative_change=relative,
        cosine=1.0,
        rank=1 if diff else 0,
        effective_rank=1.0 if diff else 0.0,
        top_singular_values=[diff] if diff else [],
    )


def _diff() -> WeightDiff:
    params = [
        _param(f"model.layers.0.{EVIL}.weight", 0, "attn_q", 2.0, 1.0),
        _param("model.layers.0.mlp.up_proj.weight", 0, "mlp_up", 2.0, 0.0),
        _param("model.layers.1.input_layernorm.bias", 1, "norm", 0.0, 0.5),  # zero in the base: ∞
        _param("model.layers.1.mlp.up_proj.weight", 1, "mlp_up", 4.0, 0.4),
        _param("model.embed_tokens.weight", None, "embed", 3.0, 0.0),
    ]
    return WeightDiff.build(params, base="base", finetuned="tuned", top_k=4, rank_rtol=None, created_at="now")


def test_weights_diff_lists_only_changed_tensors() -> None:
    page = render_weights_diff_html(_diff(), top=10)
    listed = re.findall(r'<tr class="param" data-name="([^"]*)"', page)
    assert len(listed) == 3
    assert "model.layers.0.mlp.up_proj.weight" not in listed and "model.embed_tokens.weight" not in listed
    assert "The 3 most-changed tensors" in page and "∞" in page


def test_weights_diff_is_on_the_kit_and_escaped() -> None:
    page = render_weights_diff_html(_diff())
    assert EVIL not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert_self_contained(page)
    assert 'data-kind="sequential"' in page and 'data-max="0.5"' in page  # ∞ is kept out of the scale
    roots = _svg_downloads(page)
    assert len(roots) == 2  # the per-layer chart and the heatmap
    texts = [t.text for t in roots[0].iter(f"{SVG}text")]
    assert "layer" in texts and "relative change ‖B−A‖/‖A‖" in texts
    assert "download result JSON" in page


def test_identical_checkpoints_list_no_tensor() -> None:
    params = [_param("model.layers.0.mlp.up_proj.weight", 0, "mlp_up", 2.0, 0.0)]
    diff = WeightDiff.build(params, base="a", finetuned="b", top_k=4, rank_rtol=None, created_at="now")
    page = render_weights_diff_html(diff)
    assert "No tensor changed." in page and 'class="param"' not in page
    _svg_downloads(page)
