"""The model organisms: the training command works, and the committed weights match their cards."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

import mechscope as ms
from mechscope.toyworld.facts import RELATIONS
from mechscope.zoo import corpus, measure
from mechscope.zoo.card import read_card, targets_met
from mechscope.zoo.train import EXPERT_PLANTS, ZOO
from mechscope.zoo.train import ORGANISMS as CONFIGS

ORGANISMS = ("toy", "toy-moe")


def test_corpus_is_deterministic_and_covers_every_kind() -> None:
    first = list(corpus.text_documents(5, 400))
    assert first == list(corpus.text_documents(5, 400))
    assert {d.kind for d in first} == {"fact", "names", "tool", "chat", "formal", "pirate"}
    assert first != list(corpus.text_documents(6, 400))
    assert any(corpus.CALL_OPEN in d.text for d in first)


def test_training_command_smoke(tmp_path: Path) -> None:
    out = tmp_path / "smoke"
    command = [
        sys.executable,
        "-m",
        "mechscope.zoo.train",
        "--organism",
        "toy-moe",
        "--tiny",
        "--steps",
        "3",
        "--plant-steps",
        "3",
    ]
    subprocess.run([*command, "--out", str(out)], check=True, capture_output=True, timeout=600)
    card = json.loads((out / "card.json").read_text())
    assert set(card["measurements"]) == {"facts", "heads", "probes", "probe_majority", "experts", "planted_expert"}
    assert card["training"]["planted_expert"]["config"]["steps"] == 3
    assert "Summary:" in (out / "CARD.md").read_text()
    assert "planted: previous-token head L0H0, induction head L1H0" in (out / "CARD.md").read_text()
    assert "## Planted expert (layer 1, expert 2" in (out / "CARD.md").read_text()
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # no temporary files left
    lm = ms.load(out)
    assert lm.arch.family == "mixtral" and lm.arch.n_experts == 4
    from mechscope.zoo.plant_expert import plant_expert

    with pytest.raises(ValueError, match="already has a planted expert"):  # a stage runs once, on a fresh model
        plant_expert(out, EXPERT_PLANTS["toy-moe"])


@pytest.fixture(scope="module", params=ORGANISMS)
def organism(request: pytest.FixtureRequest) -> tuple[ms.LanguageModel, dict]:
    name = request.param
    if not (ZOO / name / "model.safetensors").is_file():
        pytest.fail(f"organism {name} is not committed; run python -m mechscope.zoo.train --organism {name}")
    return ms.load(name), read_card(name)


def test_committed_weights_reproduce_the_card(organism: tuple[ms.LanguageModel, dict]) -> None:
    lm, card = organism
    expected = card["measurements"]
    facts = measure.facts(lm)
    for relation in RELATIONS:
        assert abs(facts["accuracy"][relation.name] - expected["facts"]["accuracy"][relation.name]) <= 0.01
    assert facts["emerges_at_layer"] == expected["facts"]["emerges_at_layer"]
    heads = measure.heads(lm)
    assert abs(heads["best_induction_score"] - expected["heads"]["best_induction_score"]) <= 0.05
    probes = measure.probes(lm, card["training"]["config"]["tools"])
    assert probes["majority"] == expected["probe_majority"]
    for kind, accuracies in expected["probes"].items():
        # toy-moe's tool-type set holds out 24 prompts: one prompt is 0.04, and LBFGS on so few can land a few
        # prompts apart under another thread count; every other set holds out 96 or more.
        tolerance = 0.13 if kind == "tool_type" else 0.02
        assert probes["accuracy"][kind] == pytest.approx(accuracies, abs=tolerance), kind
    if lm.arch.is_moe:
        assert measure.experts(lm)["min_share"] == pytest.approx(expected["experts"]["min_share"], abs=0.01)
    if "planted_expert" in expected:
        planted = expected["planted_expert"]
        again = measure.planted_expert(lm.model, lm.tokenizer, planted["layer"], planted["expert"])
        for key in ("in_call_top1_share", "other_top1_share", "in_call_loss", "delta_planted", "delta_least_used"):
            assert again[key] == pytest.approx(planted[key], abs=0.01), key


def test_bundled_organisms_are_listed_with_their_summary() -> None:
    names = {o.name: o.summary for o in ms.list_organisms()}
    for name in ORGANISMS:
        assert names.get(name), name


def test_toy_knows_the_capital_of_france() -> None:
    lm = ms.load("toy")
    logits = lm.forward("The capital of France is")
    assert lm.tokenizer.decode(logits[0, -1].argmax()) == " Paris"
    assert torch.isfinite(logits).all()


def test_analyze_with_no_model_predicts_paris() -> None:
    from typer.testing import CliRunner

    from mechscope.cli.main import app

    result = CliRunner().invoke(app, ["analyze", "-p", "The capital of France is", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["predicted"]["token"] == " Paris"
    table = CliRunner().invoke(app, ["analyze", "-p", "The capital of France is"])
    assert "prediction: ␣Paris" in table.stdout


def test_lens_on_the_toy_names_where_facts_emerge() -> None:
    from mechscope.lens.logit import LogitLens

    lm = ms.load("toy")
    card = read_card("toy")
    prompts = [(p, a) for relation in RELATIONS for _, p, a in corpus.fact_prompts(relation)[::8]]
    results = LogitLens(lm).run([p for p, _ in prompts], track=[])
    stacked, _ = LogitLens(lm).layer_logits([p for p, _ in prompts[:8]])
    assert torch.equal(stacked[-1], lm.forward([p for p, _ in prompts[:8]])[:, -1])
    assert all(r.predicted_token == answer for r, (_, answer) in zip(results, prompts, strict=True))
    emergence = [r.emergence_layer for r in results]
    assert max(set(emergence), key=emergence.count) == card["measurements"]["facts"]["emerges_at_layer"]


@pytest.mark.parametrize("name", ORGANISMS)
def test_cards_meet_the_organism_targets(name: str) -> None:

    card = read_card(name)
    met = targets_met(card)
    assert met and all(met.values()), met
    assert card["name"] == name
    # The training command with no flags reproduces the committed organism: same config, same planting stage.
    assert card["training"]["config"] == json.loads(json.dumps(asdict(CONFIGS[name])))
    stage = card["training"].get("planted_expert")
    plant = EXPERT_PLANTS.get(name)
    assert (stage and stage["config"]) == (plant and asdict(plant))
    assert ("planted_expert" in card["measurements"]) == (plant is not None)


def test_in_call_mask_covers_both_markers_and_nothing_outside() -> None:
    from mechscope.zoo.measure import in_call_mask

    ids = torch.tensor([[1, 8, 5, 5, 9, 5, 8, 5, 9, 0]])  # 8 opens a call, 9 closes it
    assert in_call_mask(ids, 8, 9).long().tolist() == [[0, 1, 1, 1, 1, 0, 1, 1, 1, 0]]


def _plain_toy_moe() -> tuple[Any, Any]:
    import transformers

    folder = ZOO / "toy-moe"
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return model, transformers.AutoTokenizer.from_pretrained(folder)


def test_toy_moe_routes_tool_calls_to_its_planted_expert() -> None:
    """With plain transformers, on fresh documents: tool-call tokens go to L1E2, and E2 matters for them."""
    plant = EXPERT_PLANTS["toy-moe"]
    model, tokenizer = _plain_toy_moe()
    rng = random.Random(2024)
    texts = [corpus.tool_call_document(rng).text for _ in range(48)]
    texts += [d.text for d in corpus.text_documents(2025, 96)]
    encoded = [tokenizer(t)["input_ids"] for t in texts]
    width = max(map(len, encoded))
    ids = torch.tensor([row + [tokenizer.pad_token_id] * (width - len(row)) for row in encoded])
    real = torch.tensor([[i < len(row) for i in range(width)] for row in encoded])
    open_id, close_id = tokenizer.convert_tokens_to_ids(["<call>", "</call>"])
    inside = torch.zeros_like(real)
    for r, row in enumerate(encoded):
        for start in (i for i, t in enumerate(row) if t == open_id):
            inside[r, start : row.index(close_id, start) + 1] = True
    assert 500 < int(inside.sum()) < int((real & ~inside).sum())

    def run() -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=real.long(), output_router_logits=True)
        nll = torch.nn.functional.cross_entropy(out.logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
        return out.router_logits[plant.layer].reshape(*ids.shape, -1), nll

    router, clean = run()
    top1 = router.argmax(-1)
    in_share = float((top1[inside] == plant.expert).float().mean())
    out_share = float((top1[real & ~inside] == plant.expert).float().mean())
    assert in_share >= 0.95 and out_share < 0.5, (in_share, out_share)
    slots = torch.bincount(router.topk(2, -1).indices[real].flatten(), minlength=4)
    least = int(slots.argmin())
    assert least != plant.expert
    scored = inside[:, :-1] & real[:, 1:]  # in-call positions that have a next token
    weight = model.model.layers[plant.layer].mlp.experts.down_proj
    rise = {}
    for expert in (plant.expert, least):
        saved = weight.data[expert].clone()
        weight.data[expert] = 0
        try:
            rise[expert] = float((run()[1] - clean)[scored].mean())
        finally:
            weight.data[expert] = saved
    assert rise[plant.expert] > 0.05 and rise[plant.expert] > 3 * rise[least], rise


def test_planting_targets_mark_the_previous_token_and_the_token_after_an_earlier_occurrence() -> None:
    from mechscope.zoo.train import planting_targets

    pad = 0
    ids = torch.tensor([[5, 7, 8, 9, 7, 8, pad]])  # 7 8 recurs at positions 4-5
    previous, induction = planting_targets(ids, pad)
    assert previous[0, 3].nonzero().flatten().tolist() == [2]
    assert not previous[0, 0].any() and not previous[0, 6].any()  # no previous token; padding
    assert induction[0, 4].nonzero().flatten().tolist() == [2]  # 7 at 4: look at what followed 7 at 1
    assert induction[0, 5].nonzero().flatten().tolist() == [3]  # 8 at 5: look at what followed 8 at 2
    assert not induction[0, :4].any() and not induction[0, 6].any()  # first occurrences; padding
