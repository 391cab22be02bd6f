"""Routing interventions (zero, force, forbid), the batched expert sweep, and routing comparison.

Every check is against a computation that does not go through the code under test: a deep copy of the model
with the expert's down-projection zeroed (plain transformers), the router rule recomputed here from the
clean logits, a copy of GPT-OSS with the forbidden expert's router bias at -inf, single-expert runs next to
the batched sweep, and per-prompt traces with Python sets for the comparison.
"""

from __future__ import annotations

import copy
import json
import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

import mechscope as ms
from mechscope.causal import KLToClean, TargetProb, sweep
from mechscope.cli.main import app
from mechscope.errors import InputError, MoEError, SiteError
from mechscope.testing.tiny_models import build_tiny_model
from tests.conftest import MOE_FAMILIES, PROMPTS

Loader = Callable[..., ms.LanguageModel]
CORPUS = [*PROMPTS, "A dog likes to run", "The train to London leaves at 9:30 from platform 4."]
FAMILIES_AND_TOY = (*MOE_FAMILIES, "toy-moe")


@pytest.fixture(scope="module")
def toy_moe() -> ms.LanguageModel:
    return ms.load("toy-moe")


@pytest.fixture
def moe(request: pytest.FixtureRequest, load_tiny: Loader, toy_moe: ms.LanguageModel) -> ms.LanguageModel:
    """The model of the test's ``family`` parameter: a tiny random checkpoint, or the toy-moe organism."""
    family = request.node.callspec.params["family"]
    return toy_moe if family == "toy-moe" else load_tiny(family)


def _routing(lm: ms.LanguageModel, layer: int, prompt: str = PROMPTS[1]) -> dict[str, torch.Tensor]:
    """The router outputs at ``layer`` for ``prompt`` (under whatever override is open), ``[pos, ...]``."""
    sites = [f"{kind}.{layer}" for kind in ("router_logits", "expert_weight", "expert_index")]
    with lm.capture(sites) as cache, torch.no_grad():
        lm.forward(prompt)
    return {site.split(".")[0]: cache[site][0] for site in sites}


def _busiest(lm: ms.LanguageModel, layer: int) -> int:
    """The expert the prompt's tokens are most often routed to at ``layer`` (so zeroing it matters)."""
    return int(torch.bincount(_routing(lm, layer)["expert_index"].flatten(), minlength=lm.arch.n_experts).argmax())


# ----------------------------------------------------------------- zero


@pytest.mark.parametrize("family", FAMILIES_AND_TOY)
def test_zeroing_an_expert_equals_zeroing_its_down_projection(moe: ms.LanguageModel, family: str) -> None:
    layer = moe.arch.moe_layers[-1]
    expert = _busiest(moe, layer)
    reference = copy.deepcopy(moe.model)
    name = {id(m): n for n, m in moe.model.named_modules()}[id(moe.arch.part("experts", layer))]
    experts = reference.get_submodule(name)
    with torch.no_grad():
        experts.down_proj[expert] = 0
        if hasattr(experts, "down_proj_bias"):  # GPT-OSS: the expert's output is down_proj x + bias
            experts.down_proj_bias[expert] = 0
        encoded = moe.encode(PROMPTS)
        expected = reference(**encoded).logits
        clean = moe.forward(PROMPTS)
        with ms.moe.override(moe, zero={layer: expert}):
            zeroed = moe.forward(PROMPTS)
    torch.testing.assert_close(zeroed, expected, rtol=0, atol=1e-5)
    assert (zeroed - clean).abs().max() > 1e-4  # the expert mattered: the check is not vacuous


@pytest.mark.parametrize("family", FAMILIES_AND_TOY)
def test_renormalised_zero_keeps_the_weight_sums_and_ratios(moe: ms.LanguageModel, family: str) -> None:
    layer = moe.arch.moe_layers[0]
    expert = _busiest(moe, layer)
    clean = _routing(moe, layer)
    with ms.moe.override(moe, zero={layer: [expert]}):
        plain = _routing(moe, layer)
    with ms.moe.override(moe, zero={layer: [expert]}, renormalise=True):
        renormalised = _routing(moe, layer)
    hit = clean["expert_index"] == expert
    weights = clean["expert_weight"].double()
    assert bool(hit.any())
    for edited in (plain, renormalised):
        assert torch.equal(edited["expert_index"], clean["expert_index"])  # the router's choice is kept
        assert torch.equal(edited["router_logits"], clean["router_logits"])
        assert bool((edited["expert_weight"][hit] == 0).all())
    assert torch.equal(plain["expert_weight"][~hit], clean["expert_weight"][~hit])  # the others as they were
    total, removed = weights.sum(-1, keepdim=True), (weights * hit).sum(-1, keepdim=True)
    expected = weights.masked_fill(hit, 0) * total / (total - removed)  # back to the sum they had
    torch.testing.assert_close(renormalised["expert_weight"].double(), expected, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(renormalised["expert_weight"].double().sum(-1), weights.sum(-1), rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------- force and forbid


def _rule(info: Any, logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The family's weights for the chosen ``index`` from ``logits``, as `RoutingSpec` describes its rule."""
    if info.rule == "softmax_topk":
        chosen = logits.float().softmax(-1).gather(-1, index)
        return chosen / chosen.sum(-1, keepdim=True) if info.renormalised else chosen
    return logits.float().gather(-1, index).softmax(-1)


@pytest.mark.parametrize("family", FAMILIES_AND_TOY)
def test_force_routes_every_token_to_the_expert_by_the_family_rule(moe: ms.LanguageModel, family: str) -> None:
    info, layer, expert = ms.moe.info(moe), moe.arch.moe_layers[-1], 1
    clean = _routing(moe, layer)
    clean_usage = ms.moe.utilization(moe, CORPUS)
    with ms.moe.override(moe, force={layer: expert}):
        usage = ms.moe.utilization(moe, CORPUS)
        forced = _routing(moe, layer)
        with moe.capture([f"expert_out.{layer}.{expert}"]) as cache, torch.no_grad():
            moe.forward(PROMPTS[1])
    assert usage.layer(layer).share[expert] == 1.0
    for before in moe.arch.moe_layers[:-1]:  # layers before the edit route as they did
        assert usage.layer(before).counts == clean_usage.layer(before).counts
    # The experts module received the edit: expert E ran on every token.
    assert bool((cache[f"expert_out.{layer}.{expert}"][0].norm(dim=-1) > 0).all())
    # Slot 0 is E, the other slots the best of the rest; E's logit is raised to the token's top logit.
    logits = clean["router_logits"].float()
    edited = logits.clone()
    edited[:, expert] = logits.max(-1).values
    rest = logits.clone()
    rest[:, expert] = float("-inf")
    index = torch.cat([torch.full_like(clean["expert_index"][:, :1], expert), rest.topk(info.top_k - 1).indices], -1)
    assert torch.equal(forced["expert_index"], index)
    torch.testing.assert_close(forced["expert_weight"].float(), _rule(info, edited, index), rtol=1e-6, atol=1e-7)
    kept = clean["expert_index"][:, 0] == expert  # tokens the router already sent first to E keep their routing
    torch.testing.assert_close(forced["expert_weight"][kept], clean["expert_weight"][kept], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("family", FAMILIES_AND_TOY)
def test_forbid_takes_the_top_k_over_the_rest(moe: ms.LanguageModel, family: str) -> None:
    info, layer = ms.moe.info(moe), moe.arch.moe_layers[0]
    expert = _busiest(moe, layer)
    clean = _routing(moe, layer)
    with ms.moe.override(moe, forbid={layer: expert}):
        usage = ms.moe.utilization(moe, CORPUS)
        forbidden = _routing(moe, layer)
        with moe.capture([f"expert_out.{layer}.{expert}"]) as cache, torch.no_grad():
            moe.forward(PROMPTS[1])
    assert usage.layer(layer).share[expert] == 0.0
    assert bool((cache[f"expert_out.{layer}.{expert}"] == 0).all())  # never computed for any token
    masked = clean["router_logits"].float().clone()
    masked[:, expert] = float("-inf")
    scores = masked.softmax(-1) if info.rule == "softmax_topk" else masked
    index = scores.topk(info.top_k).indices
    assert torch.equal(forbidden["expert_index"], index)
    torch.testing.assert_close(forbidden["expert_weight"].float(), _rule(info, masked, index), rtol=1e-6, atol=1e-7)


def test_forbid_equals_a_router_bias_of_minus_infinity_on_gpt_oss(load_tiny: Loader) -> None:
    lm = load_tiny("gpt_oss")
    layer, expert = 1, _busiest(lm, 1)
    reference = copy.deepcopy(lm.model)
    with torch.no_grad():
        reference.model.layers[layer].mlp.router.bias[expert] = float("-inf")
        expected = reference(**lm.encode(PROMPTS)).logits
        with ms.moe.override(lm, forbid={layer: [expert]}):
            forbidden = lm.forward(PROMPTS)
    torch.testing.assert_close(forbidden, expected, rtol=0, atol=1e-5)


def test_force_holds_for_every_generated_token(toy_moe: ms.LanguageModel) -> None:
    with ms.moe.override(toy_moe, force={2: 3}), toy_moe.capture(["expert_index.2"]) as cache:
        toy_moe.generate("The capital of France is", max_new_tokens=4)
    steps = cache.passes("expert_index.2")
    assert len(steps) == 4 and all(bool((step[..., 0] == 3).all()) for step in steps)


def test_hooks_are_removed_even_when_the_forward_raises(toy_moe: ms.LanguageModel) -> None:
    clean = toy_moe.forward(PROMPTS[0])
    routers = [toy_moe.arch.part("router", layer) for layer in toy_moe.arch.moe_layers]
    before = [dict(r._forward_hooks) for r in routers]

    def explode(module: Any, args: Any, output: Any) -> None:
        raise RuntimeError("boom")

    handle = toy_moe.arch.layer(3).register_forward_hook(explode)
    try:
        with pytest.raises(RuntimeError, match="boom"), ms.moe.override(toy_moe, force={0: 1}, zero={1: [0, 2]}):
            toy_moe.forward(PROMPTS[0])
    finally:
        handle.remove()
    assert [dict(r._forward_hooks) for r in routers] == before
    assert torch.equal(toy_moe.forward(PROMPTS[0]), clean)


def test_bad_edits_are_one_line_errors(toy_moe: ms.LanguageModel, load_tiny: Loader) -> None:
    with pytest.raises(SiteError, match=r"out of range.*0\.\.3"):
        ms.moe.override(toy_moe, force={9: 0})
    with pytest.raises(SiteError, match=r"expert 4 is out of range at layer 1: the model has 4 experts \(0\.\.3\)"):
        ms.moe.override(toy_moe, zero={1: 4})
    with pytest.raises(InputError, match="both forced and forbidden"):
        ms.moe.override(toy_moe, force={1: 0}, forbid={1: 0})
    with pytest.raises(InputError, match="fewer than top-k = 2"):
        ms.moe.override(toy_moe, forbid={1: [0, 1, 2]})
    with pytest.raises(InputError, match="force one expert"):
        ms.moe.override(toy_moe, force={3: 0, -1: 1})
    with pytest.raises(MoEError, match="has no experts"):
        ms.moe.override(load_tiny("llama"), force={0: 0})


# ----------------------------------------------------------------- the batched sweep


@pytest.mark.parametrize("renormalise", [False, True])
@pytest.mark.parametrize("family", FAMILIES_AND_TOY)
def test_an_expert_sweep_is_one_pass_and_each_row_is_the_expert_alone(
    moe: ms.LanguageModel, family: str, renormalise: bool
) -> None:
    layer = moe.arch.moe_layers[-1]
    passes: list[int] = []  # the batch size of every forward pass of the model

    def count(module: Any, args: Any, kwargs: Any, output: Any) -> None:
        passes.append(int(kwargs["input_ids"].shape[0]))

    handle = moe.model.register_forward_hook(count, with_kwargs=True)
    metric = KLToClean()
    try:
        result = sweep(
            moe,
            PROMPTS[1],
            component="expert",
            layers=[layer],
            metric=metric,
            ablator=ms.moe.expert_ablation(renormalise=renormalise),
        )
    finally:
        handle.remove()
    assert passes == [moe.arch.n_experts + 1]  # every expert of the layer and the clean row, in one batch
    assert result.method == ("zero (renormalised)" if renormalise else "zero")
    assert [(e.layer, e.index) for e in result.effects] == [(layer, e) for e in range(moe.arch.n_experts)]
    for effect in result.effects:
        with torch.no_grad(), ms.moe.override(moe, zero={layer: effect.index or 0}, renormalise=renormalise):
            alone = float(metric(moe.forward(PROMPTS[1]))[0])
        assert effect.metric is not None and math.isclose(effect.metric, alone, rel_tol=1e-4, abs_tol=1e-5)
    if not renormalise:  # the sweep's own expert_out path removes the same contribution
        reference = sweep(moe, PROMPTS[1], component="expert", layers=[layer], metric=KLToClean())
        for ours, theirs in zip(result.effects, reference.effects, strict=True):
            assert ours.metric is not None and theirs.metric is not None
            assert math.isclose(ours.metric, theirs.metric, rel_tol=1e-4, abs_tol=1e-5)


def test_sweep_picks_experts_and_criteria_work(toy_moe: ms.LanguageModel) -> None:
    metric = TargetProb(toy_moe, " Paris")
    result = sweep(
        toy_moe,
        PROMPTS[0],
        component="expert",
        layers=[1],
        indices=[2, 0],
        metric=metric,
        ablator=ms.moe.expert_ablation(),
    )
    assert [e.index for e in result.effects] == [2, 0]
    texts = sweep(
        toy_moe,
        PROMPTS[0],
        component="expert",
        layers=[1],
        criterion=lambda t: "Paris" in t,
        max_new_tokens=3,
        ablator=ms.moe.expert_ablation(renormalise=True),
    )
    assert len(texts.effects) == 4 and all(e.text is not None for e in texts.effects)
    with pytest.raises(SiteError, match="out of range"):
        sweep(toy_moe, PROMPTS[0], component="expert", layers=[1], indices=[7], metric=metric)
    with pytest.raises(InputError, match="replaces the method"):
        sweep(
            toy_moe,
            PROMPTS[0],
            component="expert",
            method="mean",
            reference=PROMPTS,
            metric=metric,
            ablator=ms.moe.expert_ablation(),
        )


# ----------------------------------------------------------------- the planted expert


def test_ablating_the_planted_expert_hurts_tool_calls_more_than_the_least_used(toy_moe: ms.LanguageModel) -> None:
    from mechscope.zoo import corpus
    from mechscope.zoo.card import read_card
    from mechscope.zoo.measure import in_call_mask

    card = read_card("toy-moe")
    planted = card["measurements"].get("planted_expert") or card["training"].get("planted_expert", {}).get("config")
    if not planted:
        pytest.skip("toy-moe's card.json has no planted_expert yet (the organism has not been retrained)")
    layer, expert = int(planted["layer"]), int(planted["expert"])
    rng = random.Random(11)
    calls = [corpus.tool_call_document(rng).text for _ in range(48)]
    texts = [d.text for d in corpus.text_documents(5, 48)]
    least = int(torch.tensor(ms.moe.utilization(toy_moe, calls + texts).layer(layer).share).argmin())
    assert least != expert
    losses = {
        name: _in_call_loss(toy_moe, calls, in_call_mask, layer, zero)
        for name, zero in (("clean", None), ("planted", expert), ("least", least))
    }
    planted_rise, least_rise = losses["planted"] - losses["clean"], losses["least"] - losses["clean"]
    print(f"planted L{layer}E{expert}: in-call loss {losses}; rise {planted_rise:.4f} vs E{least} {least_rise:.4f}")
    assert planted_rise > 0.05 and planted_rise > 10 * max(least_rise, 1e-3)


def _in_call_loss(lm: ms.LanguageModel, texts: list[str], in_call: Any, layer: int, zero: int | None) -> float:
    """Mean next-token loss (nats) at tokens inside ``<call>..</call>``, with expert ``zero`` at ``layer`` ablated."""
    from mechscope.zoo import corpus

    open_id, close_id = lm.tokenizer.convert_tokens_to_ids([corpus.CALL_OPEN, corpus.CALL_CLOSE])
    encoded = lm.tokenize(texts)
    ids, mask = encoded["input_ids"], encoded["attention_mask"].bool()
    with torch.no_grad(), ms.moe.override(lm, zero={} if zero is None else {layer: zero}):
        logits = lm.forward(encoded)
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2).float(), ids[:, 1:], reduction="none")
    where = in_call(ids, open_id, close_id)[:, 1:] & mask[:, 1:] & mask[:, :-1]
    return float(loss[where].mean())


# ----------------------------------------------------------------- compare


def _reference(lm_a: ms.LanguageModel, lm_b: ms.LanguageModel, layer: int) -> tuple[float, float, float]:
    """Top-1 agreement, mean Jaccard (Python sets) and mean KL (float64) from per-prompt traces."""
    top1, jaccard, kl, tokens = 0.0, 0.0, 0.0, 0
    for prompt in CORPUS:
        a = ms.moe.trace(lm_a, prompt, with_logits=True).layer(layer)
        b = ms.moe.trace(lm_b, prompt, with_logits=True).layer(layer)
        for ea, eb, la, lb in zip(a.experts, b.experts, a.logits or [], b.logits or [], strict=True):
            top1 += ea[0] == eb[0]
            jaccard += len(set(ea) & set(eb)) / len(set(ea) | set(eb))
            p = torch.tensor(la, dtype=torch.float64).log_softmax(-1)
            q = torch.tensor(lb, dtype=torch.float64).log_softmax(-1)
            kl += float((p.exp() * (p - q)).sum())
            tokens += 1
    return top1 / tokens, jaccard / tokens, kl / tokens


def test_compare_against_itself_and_another_seed(load_tiny: Loader, tmp_path: Path) -> None:
    lm = load_tiny("mixtral")
    same = ms.moe.compare(lm, lm, CORPUS, batch_size=2)
    assert [(c.top1_agreement, c.jaccard, c.kl) for c in same.layers] == [(1.0, 1.0, 0.0)] * 2
    other = ms.load(build_tiny_model("mixtral", tmp_path / "seed1", seed=1))
    result = ms.moe.compare(lm, other, CORPUS, batch_size=2)
    assert result.tokens == sum(len(lm.tokenizer(p)["input_ids"]) for p in CORPUS)
    for row in result.layers:
        assert row.top1_agreement < 1 and row.jaccard < 1 and row.kl > 0
        expected = _reference(lm, other, row.layer)
        # Counts match exactly; the KL to float32 rounding (batched vs one prompt at a time).
        assert (row.top1_agreement, row.jaccard) == pytest.approx(expected[:2], rel=1e-12)
        assert row.kl == pytest.approx(expected[2], rel=1e-5)


def test_compare_refuses_other_architectures_and_empty_corpora(load_tiny: Loader, tmp_path: Path) -> None:
    lm = load_tiny("mixtral")
    top1 = ms.load(build_tiny_model("mixtral", tmp_path / "top1", num_experts_per_tok=1))
    with pytest.raises(InputError, match=r"route differently.*top-2.*top-1"):
        ms.moe.compare(lm, top1, CORPUS)
    with pytest.raises(InputError, match="corpus is empty"):
        ms.moe.compare(lm, lm, [])
    with pytest.raises(MoEError, match="has no experts"):
        ms.moe.compare(lm, load_tiny("llama"), CORPUS)


# ----------------------------------------------------------------- command line


def test_cli_ablate_route_compare(tmp_path: Path) -> None:
    runner = CliRunner()
    html = tmp_path / "ablate.html"
    args = ["moe", "ablate", "-p", PROMPTS[0], "--layer", "1", "--target", " Paris", "--html", str(html), "--json"]
    done = runner.invoke(app, args)
    assert done.exit_code == 0, done.output
    ablation = json.loads(done.stdout)
    assert [e["index"] for e in ablation["effects"]] == [0, 1, 2, 3] and html.read_text().startswith("<!DOCTYPE html>")
    done = runner.invoke(
        app, ["moe", "route", "-p", PROMPTS[0], "--force", "1:2", "--forbid", "3:0", "--json", "--max-new-tokens", "3"]
    )
    assert done.exit_code == 0, done.output
    routed = json.loads(done.stdout)
    assert routed["routed_share"]["1"][2] == 1.0 and routed["routed_share"]["3"][0] == 0.0 and routed["text"]
    corpus_file = tmp_path / "corpus.txt"
    corpus_file.write_text("\n".join(CORPUS), encoding="utf-8")
    done = runner.invoke(
        app, ["moe", "compare", "--model1", "toy-moe", "--model2", "toy-moe", "--prompts", str(corpus_file), "--json"]
    )
    assert done.exit_code == 0, done.output
    assert {row["kl"] for row in json.loads(done.stdout)["layers"]} == {0.0}
    for args in (
        [
            "moe",
            "ablate",
            "-p",
            PROMPTS[0],
            "--layer",
            "0",
            "--experts",
            "1,3",
            "--criterion",
            "contains:Paris",
            "--max-new-tokens",
            "2",
            "--renormalise",
        ],
        ["moe", "route", "-p", PROMPTS[0], "--force", "-1:0", "--target", " Paris"],
    ):
        done = runner.invoke(app, args)
        assert done.exit_code == 0, done.output
