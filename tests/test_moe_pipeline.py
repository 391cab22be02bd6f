"""mechscope.moe pipelines, co-activation and routing prediction (issue 17, requirements 5 and 7).

Every count is checked against a recount in plain Python from transformers' own router outputs
(``output_router_logits=True``, one prompt at a time, unpadded), never from mechscope's capture: the top-1
expert is the argmax of the router logits and the chosen set their top-k (what every family of the map does).
The probes run on toy-moe, whose layer-1 router was trained to send tool-call tokens to expert 2.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import mechscope as ms
from mechscope.causal.circuit import to_dot, to_mermaid
from mechscope.cli.main import app
from mechscope.core.bulk import token_ids
from mechscope.errors import InputError, MoEError, SiteError
from mechscope.moe.coactivation import coactivation, coactivation_counts
from mechscope.moe.path_results import Coactivation, Pipeline, RoutingPrediction
from mechscope.moe.pipeline import PathCounts, pipeline
from mechscope.moe.predict import _collect, fit_probe, held_out, predict, within_cap
from mechscope.testing.tiny_models import build_tiny_model
from mechscope.viz.moe_paths_report import (
    pipeline_graph,
    render_coactivation_html,
    render_pipeline_html,
    render_prediction_html,
)
from mechscope.zoo.corpus import text_documents, tool_call_document
from tests.conftest import MOE_CORPUS, MOE_FAMILIES

Loader = Callable[..., ms.LanguageModel]

CORPUS = MOE_CORPUS


pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


@pytest.fixture(scope="module")
def toy() -> ms.LanguageModel:
    return ms.load("toy-moe")


@pytest.fixture(scope="module")
def documents() -> list[str]:
    """Organism documents of every kind, plus tool calls (the planted expert's domain)."""
    rng = random.Random(1)
    texts = [d.text for d in text_documents(seed=5, count=48) if d.text]
    return texts + [tool_call_document(rng).text for _ in range(16)]


def _router_logits(lm: ms.LanguageModel, prompt: str) -> list[torch.Tensor]:
    """transformers' own router logits of one unpadded prompt: one ``[tokens, expert]`` per MoE layer."""
    with torch.no_grad():
        out = lm.model(**lm.encode(prompt), output_router_logits=True)
    assert len(out.router_logits) == len(lm.arch.moe_layers)
    return [logits.reshape(-1, lm.arch.n_experts).float() for logits in out.router_logits]


# ----------------------------------------------------------------- pipeline


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_pipeline_counts_equal_a_recount_from_the_family_router(load_tiny: Loader, family: str) -> None:
    lm = load_tiny(family)
    result = pipeline(lm, CORPUS, batch_size=3, top_paths=100)
    top1 = [torch.stack([x.argmax(-1) for x in _router_logits(lm, p)], dim=1).tolist() for p in CORPUS]
    rows = [tuple(row) for prompt in top1 for row in prompt]
    n, layers = lm.arch.n_experts, len(lm.arch.moe_layers)
    assert result.tokens == len(rows) and result.layers == list(lm.arch.moe_layers)
    assert result.top1_counts == [[sum(r[i] == e for r in rows) for e in range(n)] for i in range(layers)]
    for i, t in enumerate(result.transitions):
        pairs = Counter((r[i], r[i + 1]) for r in rows)
        assert t.counts == [[pairs[(a, b)] for b in range(n)] for a in range(n)]
        for a, row in enumerate(t.probability):
            assert math.isclose(sum(row), 1.0) if sum(t.counts[a]) else sum(row) == 0
    paths = Counter(rows)
    assert result.distinct_paths == len(paths)
    assert [(tuple(p.experts), p.count) for p in result.paths] == sorted(paths.items(), key=lambda x: (-x[1], x[0]))
    for p in result.paths:
        independent = math.prod(result.top1_share(layer)[e] for layer, e in zip(result.layers, p.experts, strict=True))
        assert math.isclose(p.independent_share, independent) and math.isclose(p.share, p.count / len(rows))


def test_pipeline_skips_dense_layers_and_chains_the_transitions(tmp_path: Path) -> None:
    folder = build_tiny_model("qwen3_moe", tmp_path / "mixed", num_hidden_layers=3, mlp_only_layers=[1])
    lm = ms.load(folder)
    result = pipeline(lm, CORPUS, top_paths=3)
    assert result.layers == [0, 2] and [(t.source_layer, t.target_layer) for t in result.transitions] == [(0, 2)]
    t = result.transition(0)
    for p in result.paths:
        a, b = p.experts
        assert math.isclose(p.markov_share, result.top1_share(0)[a] * t.probability[a][b])
        assert math.isclose(p.share, p.markov_share)  # two layers: the chain is the joint distribution
    with pytest.raises(InputError, match="no transition from layer 2"):
        result.transition(2)


def test_path_counts_from_hand_built_batches() -> None:
    counts = PathCounts(layers=3, n_experts=3)
    counts.add(np.array([[0, 1, 2], [0, 1, 2]]))
    counts.add(np.array([[0, 1, 0], [2, 2, 2]]))
    counts.add(np.zeros((0, 3), dtype=np.int64))  # an empty batch changes nothing
    assert counts.tokens == 4 and counts.top1.tolist() == [[3, 0, 1], [0, 3, 1], [1, 0, 3]]
    assert counts.transitions[1].tolist() == [[0, 0, 0], [1, 0, 2], [0, 0, 1]]
    top = counts.top(2)
    assert [(p.experts, p.count) for p in top] == [([0, 1, 2], 2), ([0, 1, 0], 1)]
    assert math.isclose(top[0].independent_share, 3 / 4 * 3 / 4 * 3 / 4)
    assert math.isclose(top[0].markov_share, 3 / 4 * 1.0 * 2 / 3)


def test_pipeline_on_toy_moe_beats_independent_layers(toy: ms.LanguageModel, documents: list[str]) -> None:
    result = pipeline(toy, documents, top_paths=5)
    assert result.layers == [0, 1, 2, 3] and result.distinct_paths <= min(result.tokens, 4**4)
    assert all(t.mutual_information > 0.01 for t in result.transitions)
    assert result.paths[0].lift > 2  # the most frequent path is far more frequent than chance
    graph = pipeline_graph(result, threshold=0.4)
    inner = [n for n in graph.nodes if n.id not in ("input", "output")]
    assert inner and all(n.id == f"L{n.layer}E{n.id.split('E')[1]}" for n in inner)
    transitions = [e for e in graph.edges if "input" not in (e.source, e.target) and e.target != "output"]
    assert transitions and all(e.weight >= 0.4 for e in transitions)
    assert '"L0E' in to_dot(graph) and to_mermaid(graph).startswith("flowchart LR")
    empty = pipeline_graph(result, threshold=1.01)
    assert [n.id for n in empty.nodes] == ["input", "output"] and empty.edges == []


# ----------------------------------------------------------------- co-activation


def test_coactivation_counts_every_pair_not_only_adjacent_ranks() -> None:
    index = np.array([[0, 1, 2], [2, 3, 0], [1, 3, 2], [0, 2, 1]])
    single, pairs = coactivation_counts(index, 4)
    brute = Counter(frozenset(p) for row in index.tolist() for p in itertools.combinations(row, 2))
    adjacent = Counter(frozenset(p) for row in index.tolist() for p in itertools.pairwise(row))
    assert single.tolist() == [3, 3, 4, 2]
    for i, j in itertools.permutations(range(4), 2):
        assert pairs[i, j] == brute[frozenset((i, j))]
    assert pairs[0, 2] == 3 != adjacent[frozenset((0, 2))]  # slots 0 and 2 of the first token are a pair too
    assert np.diag(pairs).tolist() == [0, 0, 0, 0] and (pairs == pairs.T).all()


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_coactivation_equals_a_recount_from_the_family_router(load_tiny: Loader, family: str) -> None:
    lm = load_tiny(family)
    layer = lm.arch.moe_layers[-1]
    result = coactivation(lm, CORPUS, layer=-1, batch_size=2)
    sets = [set(row) for p in CORPUS for row in _router_logits(lm, p)[-1].topk(lm.arch.top_k, dim=-1).indices.tolist()]
    _check_coactivation(result, sets, layer, lm.arch.n_experts, lm.arch.top_k)


def test_coactivation_with_top_3_counts_first_and_third_choices(tmp_path: Path) -> None:
    lm = ms.load(build_tiny_model("mixtral", tmp_path / "top3", num_local_experts=5, num_experts_per_tok=3))
    result = coactivation(lm, CORPUS, layer=0)
    logits = [_router_logits(lm, p)[0] for p in CORPUS]
    sets = [set(row) for x in logits for row in x.topk(3, dim=-1).indices.tolist()]
    _check_coactivation(result, sets, 0, 5, 3)
    ranked = [row for x in logits for row in x.topk(3, dim=-1).indices.tolist()]
    adjacent = Counter(frozenset(p) for row in ranked for p in itertools.pairwise(row))
    upper = [(i, j) for i, j in itertools.combinations(range(5), 2)]
    # Three pairs per token, of which rank-adjacent counting sees only two (first and third choice are missed).
    assert sum(result.pair_counts[i][j] for i, j in upper) == 3 * result.tokens
    assert sum(adjacent.values()) == 2 * result.tokens
    assert any(result.pair_counts[i][j] != adjacent[frozenset((i, j))] for i, j in upper)


def _check_coactivation(result: Coactivation, sets: list[set[int]], layer: int, n: int, k: int) -> None:
    assert result.layer == layer and result.tokens == len(sets)
    assert result.counts == [sum(i in s for s in sets) for i in range(n)]
    for i, j in itertools.permutations(range(n), 2):
        both = sum(i in s and j in s for s in sets)
        assert result.pair_counts[i][j] == both
        if result.counts[i]:
            assert math.isclose(result.probability[i][j], both / result.counts[i])
    for i in range(n):
        assert math.isclose(sum(result.expected[i]), k - 1)
        if result.counts[i]:
            assert math.isclose(sum(result.probability[i]), k - 1)
            rest = len(sets) * k - result.counts[i]
            assert all(
                math.isclose(result.expected[i][j], (k - 1) * result.counts[j] / rest) for j in range(n) if j != i
            )


def test_coactivation_layer_is_checked(load_tiny: Loader) -> None:
    lm = load_tiny("mixtral")
    with pytest.raises(SiteError, match="out of range"):
        coactivation(lm, CORPUS, layer=9)
    with pytest.raises(InputError, match="corpus is empty"):
        coactivation(lm, [], layer=0)
    with pytest.raises(MoEError, match="has no experts"):
        coactivation(load_tiny("llama"), CORPUS, layer=0)


# ----------------------------------------------------------------- prediction


def test_probe_reads_the_planted_routing_far_above_the_majority(toy: ms.LanguageModel, documents: list[str]) -> None:
    result = predict(toy, documents, from_layers=[1], to_layers=[1, 3])
    own = result.score(1, 1)
    # Measured 0.92 against a majority of 0.37 on this corpus.
    assert own.accuracy >= own.majority + 0.3 and own.accuracy >= 0.75, own
    assert own.chance == 0.25 and own.classes == 4 and own.converged
    assert [(s.from_layer, s.to_layer) for s in result.scores] == [(1, 1), (1, 3)]
    lengths = [len(row) for row in token_ids(toy, documents)]
    test = held_out(len(documents), 0.25, 0)
    assert result.test_prompts == len(test) == 16 and result.train_prompts == 48
    assert result.test_tokens == sum(lengths[i] for i in test)  # split by prompt: whole prompts on each side
    assert result.train_tokens + result.test_tokens == sum(lengths) and not result.capped


def test_shuffled_labels_give_about_the_majority(toy: ms.LanguageModel, documents: list[str]) -> None:
    ids = token_ids(toy, documents)
    owner, residuals, experts = _collect(toy, ids, [1], [1], 32, None, False)
    assert len(owner) == residuals[1].shape[0] == experts[1].shape[0] == sum(map(len, ids))
    is_test = np.isin(owner, held_out(len(ids), 0.25, 0))
    x = residuals[1]
    y = np.random.default_rng(0).permutation(experts[1])
    score = fit_probe(x[~is_test], y[~is_test], x[is_test], y[is_test], n_experts=4, from_layer=1, to_layer=1)
    assert abs(score.accuracy - score.majority) <= 0.1, score  # measured 0.35 against 0.37
    constant = fit_probe(x[:50], np.full(50, 3), x[50:60], experts[1][50:60], n_experts=4, from_layer=1, to_layer=1)
    assert constant.classes == 1 and constant.accuracy == constant.majority


def test_split_and_cap_rules() -> None:
    assert held_out(10, 0.3, 0) == held_out(10, 0.3, 0) and len(held_out(10, 0.3, 0)) == 3
    assert held_out(10, 0.3, 0) != held_out(10, 0.3, 1)
    assert len(held_out(2, 0.01, 0)) == 1 and len(held_out(2, 0.99, 0)) == 1
    assert within_cap([3, 3, 3], 4) == [0, 1] and within_cap([3, 3, 3], 3) == [0]


def test_predict_checks_its_inputs(toy: ms.LanguageModel, load_tiny: Loader) -> None:
    with pytest.raises(SiteError, match="out of range"):
        predict(toy, CORPUS, from_layers=[9])
    with pytest.raises(SiteError):
        predict(toy, CORPUS, to_layers=[7])
    with pytest.raises(InputError, match="no layer pair"):
        predict(toy, CORPUS, from_layers=[3], to_layers=[1])
    with pytest.raises(InputError, match="at least 2 prompts"):
        predict(toy, CORPUS[:1])
    with pytest.raises(InputError, match="within max_examples"):
        predict(toy, CORPUS, max_examples=2)
    with pytest.raises(InputError, match="test share"):
        predict(toy, CORPUS, test_share=1.0)
    with pytest.raises(MoEError):
        predict(load_tiny("llama"), CORPUS)


# ----------------------------------------------------------------- pages


def test_pages_render_and_escape(toy: ms.LanguageModel) -> None:
    evil = "<script>x</script>"
    pages = [
        render_pipeline_html(pipeline(toy, CORPUS).model_copy(update={"model": evil})),
        render_coactivation_html(coactivation(toy, CORPUS, layer=1).model_copy(update={"model": evil})),
        render_prediction_html(predict(toy, CORPUS, from_layers=[2], to_layers=[3]).model_copy(update={"model": evil})),
    ]
    for page in pages:
        assert page.startswith("<!DOCTYPE html>") and evil not in page and "&lt;script&gt;" in page


# ----------------------------------------------------------------- CLI


def _json(args: list[str]) -> dict[str, object]:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    parsed: dict[str, object] = json.loads(result.stdout)
    return parsed


def test_cli_pipeline_coactivation_predict(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS) + "\n", encoding="utf-8")
    dot, md, page = tmp_path / "g.dot", tmp_path / "g.md", tmp_path / "g.html"
    data = _json(["moe", "pipeline", "--prompts", str(corpus), "--graph", str(dot), "--json", "--top-paths", "3"])
    result = Pipeline.model_validate(data)
    assert len(result.paths) == 3 and result.prompts == len(CORPUS)
    assert dot.read_text(encoding="utf-8").startswith("digraph circuit {")
    for graph in (md, page):
        run = CliRunner().invoke(app, ["moe", "pipeline", "-p", CORPUS[0], "-p", CORPUS[1], "--graph", str(graph)])
        assert run.exit_code == 0, run.output
    assert "```mermaid\nflowchart LR" in md.read_text(encoding="utf-8")
    assert page.read_text(encoding="utf-8").startswith("<!DOCTYPE html>") and "most frequent full paths" in run.stdout
    pairs = Coactivation.model_validate(
        _json(["moe", "coactivation", "--layer", "1", "--prompts", str(corpus), "--json"])
    )
    assert pairs.layer == 1 and sum(pairs.counts) == pairs.tokens * 2
    out, html = tmp_path / "probe.json", tmp_path / "probe.html"
    args = ["moe", "predict", "--prompts", str(corpus), "--from-layer", "1", "--to-layer", "1", "--to-layer", "3"]
    run = CliRunner().invoke(app, [*args, "--out", str(out), "--html", str(html)])
    assert run.exit_code == 0 and "routing prediction" in run.stdout, run.output
    probes = RoutingPrediction.model_validate_json(out.read_text(encoding="utf-8"))
    assert [(s.from_layer, s.to_layer) for s in probes.scores] == [(1, 1), (1, 3)]
    assert html.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


BAD = [
    (["moe", "pipeline", "-m", "toy", "-p", "The sea"], "has no experts"),
    (["moe", "coactivation", "-m", "toy", "--layer", "0", "-p", "The sea"], "has no experts"),
    (["moe", "predict", "-m", "toy", "-p", "The sea", "-p", "The ship"], "has no experts"),
    (["moe", "pipeline", "--prompts", "{empty}"], "corpus is empty"),
    (["moe", "coactivation", "--layer", "1", "--prompts", "{empty}"], "corpus is empty"),
    (["moe", "predict", "--prompts", "{empty}"], "corpus is empty"),
    (["moe", "pipeline"], "--prompts"),
    (["moe", "coactivation", "--layer", "9", "-p", "The sea"], "out of range"),
    (["moe", "predict", "-p", "The sea", "-p", "The ship", "--from-layer", "9"], "out of range"),
    (["moe", "predict", "-p", "The sea", "-p", "The ship", "--from-layer", "3", "--to-layer", "1"], "no layer pair"),
    (["moe", "pipeline", "-p", "The sea", "--graph", "{tmp}/g.png"], "unknown graph format"),
    (["moe", "pipeline", "-p", "The sea", "--threshold", "2"], "--threshold"),
]


@pytest.mark.parametrize(("args", "words"), BAD, ids=[" ".join(a[:2]) + f" {w}" for a, w in BAD])
def test_bad_input_is_one_line_and_exit_2(
    args: list[str], words: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    filled = [arg.format(empty=empty, tmp=work) for arg in args]
    result = CliRunner().invoke(app, filled)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mechscope: error: "), result.stderr
    assert words.lower() in lines[0].lower(), lines[0]
    assert "Traceback" not in result.output and not any(work.iterdir())
