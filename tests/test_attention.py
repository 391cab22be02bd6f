"""Attention analysis: exact patterns, aggregation, entropy, focus, sinks, head roles, CLI and report."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import mechscope as ms
from mechscope.attention.patterns import aggregate, entropy, focus, patterns, sink_mass
from mechscope.attention.roles import head_roles
from mechscope.cli.main import app
from mechscope.testing.tiny_models import FAMILIES
from tests.conftest import PROMPTS

Loader = Callable[..., ms.LanguageModel]


@pytest.mark.parametrize("family", FAMILIES)
def test_patterns_equal_output_attentions_per_query_head(load_tiny: Loader, family: str) -> None:
    lm = load_tiny(family, "eager")
    found = patterns(lm, PROMPTS)
    with torch.no_grad():
        expected = lm.model(**lm.encode(PROMPTS), output_attentions=True).attentions
    for layer in range(lm.arch.n_layers):
        assert found[layer].shape[1] == lm.arch.n_heads  # GQA is reported per query head
        assert torch.equal(found[layer], expected[layer])


def test_aggregations_entropy_and_sink(load_tiny: Loader) -> None:
    lm = load_tiny("llama")
    pattern = patterns(lm, PROMPTS, [0])[0]
    b, h, q, k = pattern.shape
    assert aggregate(pattern, "mean").shape == (b, q, k)
    assert torch.equal(aggregate(pattern, "max"), pattern.amax(1))
    assert torch.equal(aggregate(pattern, "last_query"), pattern[:, :, -1])
    assert torch.equal(aggregate(pattern, "per_head"), pattern)
    ent = entropy(pattern)
    assert ent.shape == (b, h, q) and torch.isfinite(ent).all() and (ent >= 0).all()
    uniform = torch.full((1, 1, 1, 8), 1 / 8)
    assert float(entropy(uniform)) == pytest.approx(math.log(8), rel=1e-6)
    mask = lm.tokenize(PROMPTS)["attention_mask"]
    sink = sink_mass(pattern, mask)
    first = mask.int().argmax(dim=1)
    manual = torch.stack([pattern[i, :, mask[i].bool(), first[i]].mean(-1) for i in range(b)])
    torch.testing.assert_close(sink, manual)


def test_focus_lists_weights_above_the_threshold(load_tiny: Loader) -> None:
    lm = load_tiny("gpt2")
    edges = focus(lm, PROMPTS[0], 1, threshold=0.2)
    pattern = patterns(lm, PROMPTS[0], [1])[1][0]
    assert len(edges) == int((pattern > 0.2).sum())
    assert all(e.weight > 0.2 and e.key <= e.query for e in edges)  # causal
    only = focus(lm, PROMPTS[0], -1, threshold=0.2, head=1)
    assert {e.head for e in only} <= {1}
    with pytest.raises(ms.SiteError, match="head 9"):
        focus(lm, PROMPTS[0], 1, head=9)
    with pytest.raises(ms.InputError, match="threshold"):
        focus(lm, PROMPTS[0], 1, threshold=0)


def test_random_init_model_has_no_strong_role_heads(load_tiny: Loader) -> None:
    roles = head_roles(load_tiny("llama"), count=8, length=12)
    for role in ("previous_token", "duplicate_token", "induction"):
        assert max(max(row) for row in getattr(roles, role)) < 0.3, role
    assert roles.copying is not None and len(roles.copying) == 2
    assert type(roles).model_validate_json(roles.model_dump_json()) == roles


@pytest.mark.parametrize("role", ["induction", "previous_token"])
def test_organism_planted_heads_rank_first(role: str) -> None:
    """The heads the training command planted (recorded in the card) are the clear winners of their role."""
    from mechscope.zoo.card import read_card

    card = read_card("toy")
    planted = card["training"]["config"][f"{role}_head"]
    assert planted is not None, "the bundled toy was trained with --no-plant"
    roles = head_roles(ms.load("toy"))
    (layer, head, best), (_, _, second) = roles.top(role, 2)
    assert [layer, head] == list(planted)
    assert best > 0.6 and best - second > 0.2, (best, second)
    heads = card["measurements"]["heads"]
    assert [layer, head] == heads[f"best_{role}_head"]


def test_encoder_roles_have_no_copying(load_tiny: Loader) -> None:
    roles = head_roles(load_tiny("bert"), count=4, length=8)
    assert roles.copying is None and roles.top("copying") == []


def test_attention_and_heads_commands(tiny_dir: Callable[[str], Path], tmp_path: Path) -> None:
    model = str(tiny_dir("qwen2"))
    page = tmp_path / "att.html"
    result = CliRunner().invoke(app, ["attention", "-m", model, "-p", "The cat", "--layer", "1", "--html", str(page)])
    assert result.exit_code == 0, result.output
    html = page.read_text()
    assert html.count('class="w"') > 0 and 'data-score="entropy (nats)"' in html
    assert 'data-score="induction score"' in html and 'data-score="copying score"' in html
    data = json.loads(CliRunner().invoke(app, ["heads", "-m", model, "--json"]).stdout)
    assert len(data["induction"]) == 2 and len(data["induction"][0]) == 4
    bad = CliRunner().invoke(app, ["attention", "-m", model, "-p", "The cat", "--layer", "7"])
    assert bad.exit_code == 2 and "out of range" in bad.stderr
