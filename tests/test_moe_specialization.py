"""mechscope.moe specialization and the context test: OLMoE's definitions, recounted independently; the planted expert.

Counts are checked against a pure-python recount from `ms.moe.trace` (itself bit for bit the routers' own
output, tests/test_moe_core.py) on a tiny checkpoint of every MoE family. On toy-moe, the tool-call expert
planted at layer 1 (E2, `mechscope.zoo.plant_expert`) must come out first for the tool-call domain by a wide
margin and not elsewhere; the context test must see a token route differently inside and outside calls.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable
from itertools import combinations
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import mechscope as ms
from mechscope.cli.main import app
from mechscope.errors import InputError, MoEError, SiteError
from mechscope.moe.context import context, mean_jaccard
from mechscope.moe.domain_sets import Domain, default_domains, load_domains
from mechscope.moe.specialization import _Sparse, expert_labels, span_mask, specialization
from mechscope.moe.specialization_results import ContextRouting, Specialization
from mechscope.moe.token_types import TOKEN_TYPES, TokenTypes, special_ids, token_type
from mechscope.viz.moe_specialization_report import render_specialization_html
from tests.conftest import MOE_FAMILIES

Loader = Callable[..., ms.LanguageModel]

#: Domains for the tiny checkpoints; "calls" counts only the tokens from "(" to ")".
TINY_DOMAINS = [
    Domain("weather", ("The weather is cold and windy.", "Rain fell on the hills all night.", "Snow")),
    Domain("facts", ("The capital of France is Paris.", "Two plus two is four, and the cat sat.")),
    Domain("calls", ("call f(x, 2) now", "then g(y) and h(1, 2, 3) + 4", "no call here (really)"), span=("(", ")")),
]

INSIDE = [
    "<user> Find flights to Paris. <assistant> <call>search(query=flights Paris)</call>",
    "<user> Look up hotels in Paris. <assistant> <call>search(query=hotels Paris)</call>",
]
OUTSIDE = [
    "The capital of France is Paris.",
    "France's capital city is Paris.",
    "<user> I visited Paris last year. <assistant> That sounds lovely. Paris is a beautiful city.",
    "<user> My friend lives in Paris. <assistant> How nice. I hope you visit your friend in Paris soon.",
]


@pytest.fixture(scope="module")
def toy_moe() -> ms.LanguageModel:
    return ms.load("toy-moe")


@pytest.fixture(scope="module")
def planted(toy_moe: ms.LanguageModel) -> Specialization:
    return specialization(toy_moe)  # the default domains, every layer


# ----------------------------------------------------------------- token types and the label rule


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (" Paris", "word"),
        ("'s", "word"),
        (" naïve", "word"),
        ("x2", "word"),
        (" 42", "number"),
        ("3.14", "number"),
        ("1,000", "number"),
        ("?", "punctuation"),
        (" (", "punctuation"),
        ("...", "punctuation"),
        ("\u201d", "punctuation"),
        (" ", "whitespace"),
        ("\n\n", "whitespace"),
        ("\t", "whitespace"),
        ("==", "code symbol"),
        ("{", "code symbol"),
        ("->", "code symbol"),
        ("__init__", "code symbol"),
        ("max_len", "code symbol"),
        ("_", "code symbol"),
        ("\ufffd", "other"),
        ("P.", "other"),
        ("", "other"),
    ],
)
def test_token_type_rules(text: str, expected: str) -> None:
    assert token_type(text) == expected
    assert token_type(text, special=True) == "special"


def test_special_tokens_of_toy_moe_include_its_markers(toy_moe: ms.LanguageModel) -> None:
    tokenizer = toy_moe.tokenizer
    markers = tokenizer.convert_tokens_to_ids(["<bos>", "<pad>", "<call>", "</call>", "<user>", "<pirate>"])
    assert set(markers) <= special_ids(tokenizer)
    types = TokenTypes(toy_moe)
    assert [types.of(i) for i in markers] == ["special"] * len(markers)
    assert types.of(tokenizer(" Paris", add_special_tokens=False)["input_ids"][0]) == "word"


def test_expert_labels_follow_the_documented_rule() -> None:
    # 3 domains x 4 experts (top-k shares; top_k = 2 so each row sums to 2).
    table = [
        [0.9, 0.6, 0.3, 0.2],
        [0.1, 0.6, 0.7, 0.6],
        [0.2, 0.6, 0.5, 0.7],
    ]
    rows = expert_labels(table, ["code", "math", "prose"], specialist_ratio=2.0)
    assert [row["label"] for row in rows] == ["specialist", "generalist", "generalist", "generalist"]
    assert [row["top_domain"] for row in rows] == ["code", "code", "math", "prose"]  # a tie goes to the first
    assert rows[0]["ratio"] == pytest.approx(0.9 / (1.2 / 3))
    assert rows[1]["ratio"] == pytest.approx(1.0) and rows[1]["domain_entropy_normalised"] == pytest.approx(1.0)
    assert expert_labels(table, ["code", "math", "prose"], 1.5)[2]["label"] == "generalist"  # 0.7 / 0.5 = 1.4
    assert expert_labels(table, ["code", "math", "prose"], 1.4)[2]["label"] == "specialist"
    assert expert_labels([[0.0, 2.0]], ["only"])[0]["ratio"] == 1.0  # one domain, or an unused expert: ratio 1
    with pytest.raises(InputError, match="one row of shares per domain"):
        expert_labels(table, ["code"])


def test_mean_jaccard_equals_the_pairwise_mean() -> None:
    occurrences = [(0, 1), (0, 1), (1, 2), (2, 3), (0, 3), (0, 1)]
    pairs = [len(set(a) & set(b)) / len(set(a) | set(b)) for a, b in combinations(occurrences, 2)]
    assert mean_jaccard(Counter(occurrences), 2) == pytest.approx(sum(pairs) / len(pairs), abs=1e-12)
    assert mean_jaccard({(0, 1): 1}, 2) is None
    assert mean_jaccard({(0, 1): 3}, 2) == pytest.approx(1.0)


# ----------------------------------------------------------------- domains


def test_domain_folders_spans_and_their_errors(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("# span: <call> </call>\n<call>x</call>\n\n", encoding="utf-8")
    (tmp_path / "a.txt").write_text("# a comment is a prompt\nsecond\n", encoding="utf-8")
    (tmp_path / "notes.md").write_text("ignored\n", encoding="utf-8")
    assert load_domains(tmp_path) == [
        Domain("a", ("# a comment is a prompt", "second")),
        Domain("b", ("<call>x</call>",), ("<call>", "</call>")),
    ]
    (tmp_path / "c.txt").write_text("# span: ( )\n  \n", encoding="utf-8")
    with pytest.raises(InputError, match=r"c\.txt' holds no prompt"):
        load_domains(tmp_path)
    (tmp_path / "c.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(InputError, match="not UTF-8"):
        load_domains(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match=r"has no \.txt file"):
        load_domains(empty)
    with pytest.raises(InputError, match="is nothing"):
        load_domains(tmp_path / "missing")
    with pytest.raises(InputError, match="is a file"):
        load_domains(tmp_path / "a.txt")


def test_the_default_domains_are_made_for_the_organisms() -> None:
    domains = {d.name: d for d in default_domains()}
    relations = ("capital", "color", "opposite", "sound", "symbol")
    assert set(domains) == {*(f"facts_{r}" for r in relations), "tool_calls", "pirate", "formal", "repeated_names"}
    assert all(40 <= len(d.prompts) <= 100 for d in domains.values())
    assert domains["tool_calls"].span == ("<call>", "</call>")
    assert all("<call>" in p and p.endswith("</call>") for p in domains["tool_calls"].prompts)
    assert all(p.startswith("<pirate> ") for p in domains["pirate"].prompts)
    assert all(p.startswith("<formal> ") for p in domains["formal"].prompts)


# ----------------------------------------------------------------- the definitions, recounted


def _recount(lm: ms.LanguageModel, domains: list[Domain], layers: list[int]) -> dict[str, Any]:
    """Every count of `specialization`, by hand from one trace per prompt."""
    n = lm.arch.n_experts
    types = TokenTypes(lm)
    domain_k = {(layer, d.name): [0] * n for layer in layers for d in domains}
    domain_1 = {(layer, d.name): [0] * n for layer in layers for d in domains}
    type_k = {(layer, t): [0] * n for layer in layers for t in TOKEN_TYPES}
    type_1 = {(layer, t): [0] * n for layer in layers for t in TOKEN_TYPES}
    vocab: dict[int, Counter[tuple[int, int]]] = {layer: Counter() for layer in layers}
    tokens = dict.fromkeys((d.name for d in domains), 0)
    for domain in domains:
        for prompt in domain.prompts:
            ids = lm.tokenizer(prompt)["input_ids"]
            if domain.span is None:
                counted = [True] * len(ids)
            else:
                opening, closing = (lm.tokenizer(m, add_special_tokens=False)["input_ids"][0] for m in domain.span)
                depth, counted = 0, []
                for token in ids:
                    depth += token == opening
                    counted.append(depth > 0)
                    depth -= token == closing
            trace = ms.moe.trace(lm, prompt, layers=layers)
            for routing in trace.layers:
                for token, keep, experts in zip(ids, counted, routing.experts, strict=True):
                    if not keep:
                        continue
                    kind = types.of(token)
                    for e in experts:
                        domain_k[routing.layer, domain.name][e] += 1
                        type_k[routing.layer, kind][e] += 1
                    domain_1[routing.layer, domain.name][experts[0]] += 1
                    type_1[routing.layer, kind][experts[0]] += 1
                    vocab[routing.layer][token, experts[0]] += 1
            tokens[domain.name] += sum(counted)
    return {
        "domain_k": domain_k,
        "domain_1": domain_1,
        "type_k": type_k,
        "type_1": type_1,
        "vocab": vocab,
        "tokens": tokens,
    }


def _vocabulary(pairs: Counter[tuple[int, int]], n: int) -> tuple[float, dict[int, tuple[int, int, int]]]:
    """(weighted vocabulary specialization, id -> (occurrences, modal expert, its count))."""
    per_id: dict[int, list[int]] = {}
    for (token, expert), count in pairs.items():
        per_id.setdefault(token, [0] * n)[expert] += count
    table = {}
    for token, row in per_id.items():
        modal = row.index(max(row))  # the first maximum: the lower expert on a tie
        table[token] = (sum(row), modal, row[modal])
    total = sum(v[0] for v in table.values())
    return sum(v[2] for v in table.values()) / total, table


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_specialization_equals_a_recount_from_the_trace(
    load_tiny: Loader, family: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    lm = load_tiny(family)
    monkeypatch.setattr(_Sparse, "BUFFER", 8)  # merge the token-id counts mid-stream, not only at the end
    for marker in ("(", ")"):
        assert len(lm.tokenizer(marker, add_special_tokens=False)["input_ids"]) == 1
    layers = list(lm.arch.moe_layers)
    result = specialization(lm, TINY_DOMAINS, batch_size=2, top_tokens=1000)  # small batches: padding, buckets
    expected = _recount(lm, TINY_DOMAINS, layers)
    assert [(d.name, d.tokens) for d in result.domains] == list(expected["tokens"].items())
    assert result.uniform == lm.arch.top_k / lm.arch.n_experts
    for layer in result.layers:
        for shares in layer.domains:
            assert shares.topk_counts == expected["domain_k"][layer.layer, shares.name]
            assert shares.top1_counts == expected["domain_1"][layer.layer, shares.name]
            assert shares.topk_share == [c / shares.tokens for c in shares.topk_counts]
        assert [t.name for t in layer.token_types] == list(TOKEN_TYPES)
        for shares in layer.token_types:
            assert shares.topk_counts == expected["type_k"][layer.layer, shares.name]
            assert shares.top1_counts == expected["type_1"][layer.layer, shares.name]
        weighted, table = _vocabulary(expected["vocab"][layer.layer], lm.arch.n_experts)
        assert layer.vocabulary_specialization == pytest.approx(weighted, abs=1e-12)
        assert layer.token_ids == len(table)
        listed = {t.token_id: (t.occurrences, t.expert, t.share) for t in layer.frequent_tokens}
        assert listed == {k: (v[0], v[1], pytest.approx(v[2] / v[0])) for k, v in table.items()}
        assert [t.occurrences for t in layer.frequent_tokens] == sorted((v[0] for v in table.values()), reverse=True)
        for profile in layer.experts:
            assert profile.token_ids == sum(1 for v in table.values() if v[1] == profile.expert)
            assert all(t.expert == profile.expert for t in profile.tokens)


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_context_equals_a_recount_from_the_trace(load_tiny: Loader, family: str) -> None:
    lm = load_tiny(family)
    prompts = ["The dog sat on the mat by the door.", "A dog and the cat", "No such word here", "the dog"]
    result = context(lm, " the", prompts, batch_size=2)
    cat = lm.tokenizer(" the", add_special_tokens=False)["input_ids"][0]
    seen = []  # (prompt, position, [layer][k])
    for index, prompt in enumerate(prompts):
        trace = ms.moe.trace(lm, prompt)
        for pos, token in enumerate(lm.tokenizer(prompt)["input_ids"]):
            if token == cat:
                seen.append((index, pos, [r.experts[pos] for r in trace.layers]))
    assert len(seen) >= 3 and len({p for p, _, _ in seen}) >= 2
    assert (result.occurrences, result.contexts, result.token_id) == (len(seen), len({p for p, _, _ in seen}), cat)
    assert [(o.prompt, o.position, o.experts) for o in result.listed] == seen
    for row, agreement in enumerate(result.layers):
        firsts = [experts[row][0] for _, _, experts in seen]
        counts = [firsts.count(e) for e in range(lm.arch.n_experts)]
        assert agreement.top1_counts == counts
        assert agreement.top1_agreement == max(counts) / len(firsts)
        assert agreement.modal_expert == counts.index(max(counts))
        sets = [set(experts[row]) for _, _, experts in seen]
        pairs = [len(a & b) / len(a | b) for a, b in combinations(sets, 2)]
        assert agreement.jaccard == pytest.approx(sum(pairs) / len(pairs), abs=1e-12)
        same = [a == b for a, b in combinations(firsts, 2)]
        assert agreement.top1_pairwise == pytest.approx(sum(same) / len(same), abs=1e-12)


def test_span_mask_counts_from_open_to_close_included() -> None:
    import torch

    ids = torch.tensor([5, 1, 7, 7, 2, 7, 1, 2, 2, 7])
    assert span_mask(ids, 1, 2).tolist() == [False, True, True, True, True, False, True, True, False, False]
    # Markers of several tokens (a model without them in its vocabulary): from the opening run's first token
    # to the closing run's last; a lone 3 or 4 opens and closes nothing.
    runs = torch.tensor([3, 5, 3, 4, 7, 8, 9, 4, 8, 9, 7, 3])
    expected = [False, False, True, True, True, True, True, False, False, False, False, False]
    assert span_mask(runs, [3, 4], [8, 9]).tolist() == expected


# ----------------------------------------------------------------- the planted expert on toy-moe


def test_the_planted_tool_call_expert_comes_out_first_at_layer_1(planted: Specialization) -> None:
    layer = planted.layer(1)
    calls = layer.domain("tool_calls")
    # Measured: top-k share E2 1.000, next E3 0.747; top-1 share E2 1.000, every other expert 0.000.
    assert calls.ranking()[0] == 2 and calls.ranking(top1=True)[0] == 2
    topk = sorted(calls.topk_share, reverse=True)
    top1 = sorted(calls.top1_share, reverse=True)
    assert calls.topk_share[2] == 1.0 and topk[0] - topk[1] >= 0.15
    assert calls.top1_share[2] == 1.0 and top1[0] - top1[1] >= 0.9
    for shares in layer.domains:
        if shares.name != "tool_calls":
            # Measured: E2's top-1 share elsewhere is 0.21-0.32 (first only on facts_sound, 0.321 vs 0.257).
            assert shares.top1_share[2] <= 0.4
            second = sorted(shares.top1_share, reverse=True)[1]
            assert shares.top1_share[2] - second <= 0.1
    # The same expert is not special for tool calls at the other layers (E2's top-1 share there <= 0.64).
    for other in (0, 2, 3):
        assert planted.layer(other).domain("tool_calls").top1_share[2] <= 0.7
    # E2 at L1 is the only specialist (ratio 2.08; the next, E0 at L0 on repeated names, has 1.90).
    specialists = [
        (s.layer, p.expert, p.top_domain) for s in planted.layers for p in s.experts if p.label == "specialist"
    ]
    assert specialists == [(1, 2, "tool_calls")]
    assert layer.experts[2].ratio == pytest.approx(2.08, abs=0.03)


def test_vocabulary_specialization_on_toy_moe(planted: Specialization, toy_moe: ms.LanguageModel) -> None:
    # Measured (occurrence-weighted, 632 token ids): L0 0.914, L1 0.887, L2 0.739, L3 0.801.
    values = [layer.vocabulary_specialization for layer in planted.layers]
    assert values == pytest.approx([0.914, 0.887, 0.739, 0.801], abs=0.01)
    layer = planted.layer(1)
    assert layer.token_ids == 632 and planted.tokens == sum(d.tokens for d in planted.domains)
    markers = toy_moe.tokenizer.convert_tokens_to_ids(["<call>", "</call>", "="])
    owned = {t.token_id: t for t in layer.experts[2].tokens}
    for marker in markers:  # tokens seen only inside calls all go to E2 first at L1
        assert owned[marker].share == 1.0
    assert layer.token_types[TOKEN_TYPES.index("code symbol")].top1_share[2] == 1.0


def test_the_context_of_a_token_decides_its_expert_at_layer_1(toy_moe: ms.LanguageModel) -> None:
    result = context(toy_moe, " Paris", INSIDE + OUTSIDE)
    inside = [o for o in result.listed if "query=" in o.before]
    outside = [o for o in result.listed if "query=" not in o.before]
    assert (result.occurrences, result.contexts, len(inside)) == (10, 6, 2)
    row = [a.layer for a in result.layers].index(1)
    assert all(o.experts[row][0] == 2 for o in inside)  # in a call: the planted expert
    assert all(o.experts[row][0] != 2 for o in outside)  # measured: E3 or E1 outside
    assert result.layer(1).top1_agreement < 1.0 and result.layer(1).modal_expert != 2
    calls_only = [p.replace("in Paris.", "there.").replace("to Paris.", "there.") for p in INSIDE]
    alone = context(toy_moe, " Paris", calls_only, layers=[1]).layer(1)
    assert (alone.top1_agreement, alone.modal_expert, alone.top1_pairwise) == (1.0, 2, 1.0)


def test_bad_inputs_are_one_line_errors(toy_moe: ms.LanguageModel, load_tiny: Loader) -> None:
    with pytest.raises(InputError, match="2 tokens"):
        context(toy_moe, " Paris Paris", OUTSIDE)
    with pytest.raises(InputError, match="does not occur in the 1 prompts"):
        context(toy_moe, " Tokyo", OUTSIDE[:1])
    with pytest.raises(InputError, match="corpus is empty"):
        context(toy_moe, " Paris", [])
    with pytest.raises(InputError, match="token is empty"):
        context(toy_moe, "", OUTSIDE)
    with pytest.raises(SiteError, match="out of range"):
        specialization(toy_moe, {"a": ["x"]}, layers=[9])
    with pytest.raises(SiteError, match="out of range"):
        context(toy_moe, " Paris", OUTSIDE, layers=[9])
    with pytest.raises(InputError, match="span marker"):
        specialization(toy_moe, [Domain("a", ("The sea",), ("<call>", ""))])
    with pytest.raises(InputError, match="no token lies between"):
        specialization(toy_moe, [Domain("a", ("The sea",), ("<call>", "</call>"))])
    with pytest.raises(InputError, match="has no prompt"):
        specialization(toy_moe, {"a": []})
    with pytest.raises(InputError, match="no domain"):
        specialization(toy_moe, {})
    with pytest.raises(InputError, match="ratio"):
        specialization(toy_moe, {"a": ["x"]}, specialist_ratio=0.5)
    dense = load_tiny("llama")
    for call in (lambda: specialization(dense, {"a": ["x"]}), lambda: context(dense, " the", ["the cat"])):
        with pytest.raises(MoEError, match="has no experts"):
            call()


def test_the_html_page_escapes_what_it_shows(toy_moe: ms.LanguageModel) -> None:
    result = specialization(toy_moe, {"<b>bold</b>": ["<b> & <i>", "The sea"], "sea": ["Arr, the sea."]}, layers=[1])
    html = render_specialization_html(result)
    assert html.startswith("<!DOCTYPE html>") and "<b>bold" not in html and "&lt;b&gt;bold" in html
    assert 'data-group="&lt;b&gt;bold&lt;/b&gt;"' in html and "Layer 1" in html


# ----------------------------------------------------------------- CLI


def _invoke(args: list[str]) -> Any:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return result


def test_cli_specialization_json_out_and_html(tmp_path: Path) -> None:
    folder = tmp_path / "domains"
    folder.mkdir()
    (folder / "calls.txt").write_text("# span: <call> </call>\n" + "\n".join(INSIDE) + "\n", encoding="utf-8")
    (folder / "facts.txt").write_text("\n".join(OUTSIDE) + "\n", encoding="utf-8")
    out, html = tmp_path / "spec.json", tmp_path / "spec.html"
    args = ["moe", "specialization", "--domains", str(folder), "--layer", "1", "--out", str(out), "--html", str(html)]
    printed = json.loads(_invoke([*args, "--json"]).stdout)
    result = Specialization.model_validate(printed)
    assert result.model_dump(mode="json") == Specialization.model_validate_json(out.read_text()).model_dump(mode="json")
    assert [d.name for d in result.domains] == ["calls", "facts"] and result.domains[0].span == ["<call>", "</call>"]
    assert result.layer(1).domain("calls").ranking(top1=True)[0] == 2
    assert html.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    table = _invoke(["moe", "specialization", "--layer", "1", "--batch-size", "64"]).stdout
    assert "domain specialization" in table and "tool_calls" in table and "E2 tool_calls" in table


def test_cli_context_json_and_table(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(INSIDE + OUTSIDE) + "\n", encoding="utf-8")
    printed = json.loads(_invoke(["moe", "context", "--token", " Paris", "--prompts", str(corpus), "--json"]).stdout)
    result = ContextRouting.model_validate(printed)
    assert (result.occurrences, result.contexts) == (10, 6)
    table = _invoke(["moe", "context", "--token", " Paris", "-p", OUTSIDE[0], "-p", INSIDE[0], "--layer", "1"]).stdout
    assert "3 occurrences in 2 of 2 prompts" in table and "top-1 agreement" in table


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["moe", "specialization", "-m", "toy"], "has no experts"),
        (["moe", "specialization", "--layer", "9"], "out of range"),
        (["moe", "specialization", "--domains", "{empty_dir}"], "has no .txt file"),
        (["moe", "specialization", "--domains", "{empty_file_dir}"], "holds no prompt"),
        (["moe", "specialization", "--domains", "{tmp}/nope"], "nope"),
        (["moe", "specialization", "--batch-size", "0"], "batch-size"),
        (["moe", "context", "--token", " Paris"], "--prompts"),
        (["moe", "context", "--token", " Paris", "--prompts", "{empty_corpus}"], "corpus is empty"),
        (["moe", "context", "--token", " Paris Rome", "-p", "The capital"], "2 tokens"),
        (["moe", "context", "--token", " Tokyo", "-p", "The capital of France is Paris."], "does not occur"),
        (["moe", "context", "-m", "toy", "--token", " Paris", "-p", "Paris"], "has no experts"),
    ],
    ids=[
        "dense",
        "layer",
        "empty-folder",
        "empty-domain-file",
        "missing-folder",
        "batch-size",
        "no-corpus",
        "empty-corpus",
        "multi-token",
        "absent-token",
        "context-dense",
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(args: list[str], words: str, tmp_path: Path) -> None:
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "empty_file_dir").mkdir()
    (tmp_path / "empty_file_dir" / "blank.txt").write_text("\n  \n", encoding="utf-8")
    (tmp_path / "empty.txt").write_text("\n", encoding="utf-8")
    names = {
        "empty_dir": str(tmp_path / "empty_dir"),
        "empty_file_dir": str(tmp_path / "empty_file_dir"),
        "empty_corpus": str(tmp_path / "empty.txt"),
        "tmp": str(tmp_path),
    }
    result = CliRunner().invoke(app, [arg.format(**names) for arg in args])
    assert result.exit_code == 2, f"exit {result.exit_code}: {result.output}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mechscope: error: "), result.stderr
    assert words.lower() in lines[0].lower(), lines[0]
    assert "Traceback" not in result.output


def test_results_hold_plain_values(planted: Specialization) -> None:
    again = Specialization.model_validate_json(planted.model_dump_json())
    assert again == planted
    assert all(math.isfinite(layer.vocabulary_specialization) for layer in again.layers)
