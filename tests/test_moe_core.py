"""mechscope.moe: routing info, bit-exact traces, streamed routing and utilization, on every MoE family.

Traces are compared with transformers' own router outputs (``output_router_logits=True`` and plain torch
hooks on the router modules) with ``torch.equal``; the load-balancing loss with transformers' own
``load_balancing_loss_func`` from the family's modeling module.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

import mechscope as ms
from mechscope.cli.main import app
from mechscope.errors import InputError, MoEError, SiteError
from mechscope.moe.results import Utilization
from mechscope.testing.tiny_models import build_tiny_model
from tests.conftest import MOE_CORPUS, MOE_FAMILIES, PROMPTS

Loader = Callable[..., ms.LanguageModel]

CORPUS = MOE_CORPUS


def _router_outputs(lm: ms.LanguageModel) -> tuple[dict[int, Any], list[Any]]:
    """Plain torch hooks (not mechscope's) keeping each router module's returned (logits, weights, index)."""
    seen: dict[int, Any] = {}
    handles = []
    for layer in lm.arch.moe_layers:

        def keep(module: Any, args: Any, output: Any, layer: int = layer) -> None:
            seen[layer] = output

        handles.append(lm.arch.part("router", layer).register_forward_hook(keep))
    return seen, handles


def _as_tensor(values: list[Any], dtype: str) -> torch.Tensor:
    return torch.tensor(values, dtype=getattr(torch, dtype))


# ----------------------------------------------------------------- trace


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_trace_equals_the_family_router_bit_for_bit(load_tiny: Loader, family: str) -> None:
    lm = load_tiny(family)
    prompt = PROMPTS[1]
    seen, handles = _router_outputs(lm)
    try:
        result = ms.moe.trace(lm, prompt, with_logits=True)
    finally:
        for handle in handles:
            handle.remove()
    with torch.no_grad():
        reference = lm.model(**lm.encode(prompt), output_router_logits=True)
    assert [r.layer for r in result.layers] == list(lm.arch.moe_layers)
    assert len(reference.router_logits) == len(result.layers)
    for routing, from_model in zip(result.layers, reference.router_logits, strict=True):
        logits, weights, index = seen[routing.layer]
        assert torch.equal(_as_tensor(routing.logits or [], result.logit_dtype), logits)
        assert torch.equal(_as_tensor(routing.logits or [], result.logit_dtype), from_model)
        assert torch.equal(_as_tensor(routing.weights, result.weight_dtype), weights)
        assert torch.equal(torch.tensor(routing.experts), index)  # the router's own order, not sorted
        probs = torch.softmax(logits.double(), dim=-1)
        entropy = -(probs * probs.log()).sum(-1)
        torch.testing.assert_close(torch.tensor(routing.entropy, dtype=torch.float64), entropy, rtol=1e-5, atol=1e-6)
    assert len(result.tokens) == lm.encode(prompt)["input_ids"].shape[1]


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_the_rows_router_rule_reproduces_the_routers_weights(load_tiny: Loader, family: str) -> None:
    lm = load_tiny(family)
    info = ms.moe.info(lm)
    result = ms.moe.trace(lm, PROMPTS[0], with_logits=True)
    for routing in result.layers:
        _check_rule(info, routing.logits or [], routing.weights, routing.experts)


def _check_rule(info: Any, logits: list[Any], weights: list[Any], experts: list[Any]) -> None:
    scores = torch.tensor(logits, dtype=torch.float32)
    if info.rule == "softmax_topk":
        top, index = torch.softmax(scores, dim=-1).topk(info.top_k, dim=-1)
        expected = top / top.sum(-1, keepdim=True) if info.renormalised else top
    else:
        top, index = scores.topk(info.top_k, dim=-1)
        expected = torch.softmax(top, dim=-1)
    assert torch.equal(index, torch.tensor(experts))
    torch.testing.assert_close(torch.tensor(weights, dtype=torch.float32), expected, rtol=1e-5, atol=1e-6)


def test_norm_topk_prob_renormalises_qwen3_moe(tmp_path: Path) -> None:
    lm = ms.load(build_tiny_model("qwen3_moe", tmp_path / "qwen3_moe", norm_topk_prob=True))
    info = ms.moe.info(lm)
    assert info.renormalised is True and "renormalised to sum to 1" in info.router_rule
    routing = ms.moe.trace(lm, PROMPTS[0], with_logits=True).layer(0)
    _check_rule(info, routing.logits or [], routing.weights, routing.experts)
    torch.testing.assert_close(torch.tensor(routing.weights).sum(-1), torch.ones(len(routing.weights)))


def test_trace_layers_are_checked(load_tiny: Loader) -> None:
    lm = load_tiny("mixtral")
    assert [r.layer for r in ms.moe.trace(lm, PROMPTS[0], layers=[-1]).layers] == [1]
    with pytest.raises(SiteError, match="out of range"):
        ms.moe.trace(lm, PROMPTS[0], layers=[9])
    with pytest.raises(InputError, match="no layer 0"):
        ms.moe.trace(lm, PROMPTS[0], layers=[1]).layer(0)


# ----------------------------------------------------------------- info


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_info_describes_each_family(load_tiny: Loader, family: str) -> None:
    info = ms.moe.info(load_tiny(family))
    assert (info.family, info.n_experts, info.top_k, info.moe_layers, info.dense_layers) == (family, 4, 2, [0, 1], [])
    assert info.packed_experts is True
    assert (info.shared_experts, info.shared_expert_gated) == ((1, True) if family == "qwen2_moe" else (0, False))
    rules = {"mixtral": "softmax_topk", "gpt_oss": "topk_softmax", "granitemoe": "topk_softmax"}
    assert info.rule == rules.get(family, "softmax_topk")
    assert info.renormalised is (family == "mixtral" if info.rule == "softmax_topk" else False)


def test_info_and_trace_on_a_model_with_dense_layers(tmp_path: Path) -> None:
    lm = ms.load(build_tiny_model("qwen2_moe", tmp_path / "mixed", num_hidden_layers=3, mlp_only_layers=[0, 2]))
    info = ms.moe.info(lm)
    assert (info.moe_layers, info.dense_layers) == ([1], [0, 2])
    assert [r.layer for r in ms.moe.trace(lm, PROMPTS[0]).layers] == [1]
    with pytest.raises(SiteError, match="no router"):
        ms.moe.trace(lm, PROMPTS[0], layers=[0])
    assert [u.layer for u in ms.moe.utilization(lm, PROMPTS).layers] == [1]


def test_a_dense_model_is_a_one_line_moe_error(load_tiny: Loader) -> None:
    lm = load_tiny("llama")
    message = f"{lm.source} has no experts (family llama is dense); moe commands need a mixture-of-experts model"
    for call in (
        lambda: ms.moe.info(lm),
        lambda: ms.moe.trace(lm, PROMPTS[0]),
        lambda: ms.moe.utilization(lm, PROMPTS),
        lambda: ms.moe.routing(lm, PROMPTS),
    ):
        with pytest.raises(MoEError) as raised:
            call()
        assert str(raised.value) == message


# ----------------------------------------------------------------- routing


def test_routing_streams_the_real_tokens_of_each_batch(load_tiny: Loader) -> None:
    lm = load_tiny("olmoe")
    batches = list(ms.moe.routing(lm, CORPUS, batch_size=3, with_logits=True))
    assert len(batches) == math.ceil(len(CORPUS) / 3)
    assert sorted(row for batch in batches for row in batch.rows.tolist()) == list(range(len(CORPUS)))
    for batch in batches:
        ids = [lm.tokenizer(CORPUS[row])["input_ids"] for row in batch.rows.tolist()]
        assert batch.lengths.tolist() == [len(row) for row in ids]
        assert batch.input_ids.tolist() == [token for row in ids for token in row]
        for layer in lm.arch.moe_layers:
            assert batch.expert_index[layer].shape == batch.expert_weight[layer].shape == (batch.tokens, 2)
            assert batch.router_logits is not None and batch.router_logits[layer].shape == (batch.tokens, 4)
            # Each prompt's slice is that prompt's routing on its own.
            first = batch.expert_index[layer].split(batch.lengths.tolist())[0].tolist()
            assert first == ms.moe.trace(lm, CORPUS[int(batch.rows[0])]).layer(layer).experts
    assert next(iter(ms.moe.routing(lm, PROMPTS))).router_logits is None


def test_routing_leaves_no_hook_between_batches(load_tiny: Loader) -> None:
    lm = load_tiny("mixtral")
    modules = [lm.model, *(lm.arch.part("router", layer) for layer in lm.arch.moe_layers)]

    def hooks() -> list[Any]:  # transformers keeps hooks of its own once output_router_logits was asked for
        return [(list(m._forward_hooks), list(m._forward_pre_hooks)) for m in modules]

    before = hooks()
    stream = ms.moe.routing(lm, CORPUS, batch_size=2)
    next(stream)  # the caller stops here: nothing of mechscope stays on the model
    assert hooks() == before
    with pytest.raises(InputError, match="no prompts"):
        ms.moe.routing(lm, [])  # checked when called, not at the first next()


# ----------------------------------------------------------------- utilization


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_shares_sum_to_top_k_and_padding_does_not_change_counts(load_tiny: Loader, family: str) -> None:
    lm = load_tiny(family)
    batched = ms.moe.utilization(lm, CORPUS, batch_size=len(CORPUS))
    alone = ms.moe.utilization(lm, CORPUS, batch_size=1)
    tokens = sum(len(lm.tokenizer(p)["input_ids"]) for p in CORPUS)
    assert batched.tokens == alone.tokens == tokens and batched.prompts == len(CORPUS)
    for layer, single in zip(batched.layers, alone.layers, strict=True):
        assert layer.counts == single.counts  # padded with others or run alone: the same routing
        assert sum(layer.counts) == tokens * lm.arch.top_k
        assert math.isclose(sum(layer.share), lm.arch.top_k, rel_tol=1e-9)
        load = [c / sum(layer.counts) for c in layer.counts]
        entropy = -sum(p * math.log(p) for p in load if p)
        assert math.isclose(layer.load_entropy, entropy) and 0 < layer.load_entropy_normalised <= 1
        assert math.isclose(layer.load_entropy_normalised, entropy / math.log(lm.arch.n_experts))


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_load_balancing_loss_equals_transformers(load_tiny: Loader, family: str) -> None:
    lm = load_tiny(family)
    encoded = lm.encode(CORPUS)
    assert not bool(encoded["attention_mask"].all())  # the batch is padded: the mask matters
    with torch.no_grad():
        output = lm.model(**encoded, output_router_logits=True)
    loss_func = sys.modules[type(lm.model).__module__].load_balancing_loss_func
    n, k, mask = lm.arch.n_experts, lm.arch.top_k, encoded["attention_mask"]
    result = ms.moe.utilization(lm, CORPUS, batch_size=len(CORPUS))
    assert abs(result.load_balancing_loss - float(loss_func(output.router_logits, n, k, mask))) <= 1e-6
    assert abs(result.load_balancing_loss - float(output.aux_loss)) <= 1e-6
    for layer, logits in zip(result.layers, output.router_logits, strict=True):
        assert abs(layer.load_balancing_loss - float(loss_func((logits,), n, k, mask))) <= 1e-6
    # Streamed over several batches, the sums add up to the same value.
    streamed = ms.moe.utilization(lm, CORPUS, batch_size=2)
    assert abs(streamed.load_balancing_loss - result.load_balancing_loss) <= 1e-6


def test_utilization_cold_experts_errors_and_json(load_tiny: Loader) -> None:
    lm = load_tiny("granitemoe")
    result = ms.moe.utilization(lm, PROMPTS, cold_threshold=0.5)
    for layer in result.layers:
        assert layer.cold == [e for e, share in enumerate(layer.share) if share < 0.5]
    assert Utilization.model_validate_json(result.model_dump_json()) == result
    assert ms.moe.utilization(lm, PROMPTS, cold_threshold=0.0).layer(0).cold == []
    with pytest.raises(InputError, match="corpus is empty"):
        ms.moe.utilization(lm, [])
    with pytest.raises(InputError, match="cold threshold"):
        ms.moe.utilization(lm, PROMPTS, cold_threshold=1.5)
    with pytest.raises(InputError, match="empty"):
        ms.moe.utilization(lm, ["fine", "  "])


# ----------------------------------------------------------------- CLI


def _json(args: list[str]) -> Any:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_cli_moe_commands_print_json_on_toy_moe(tmp_path: Path) -> None:
    info = _json(["moe", "info", "--json"])
    assert (info["family"], info["n_experts"], info["top_k"]) == ("mixtral", 4, 2)
    trace = _json(["moe", "trace", "-p", "The capital of France is", "--layer", "1", "--json"])
    assert [layer["layer"] for layer in trace["layers"]] == [1] and trace["layers"][0]["logits"] is None
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The capital of France is\n\nTwo plus two is\n", encoding="utf-8")
    out = tmp_path / "usage.json"
    usage = _json(["moe", "utilization", "--prompts", str(corpus), "-p", "Hello", "--out", str(out), "--json"])
    assert usage["prompts"] == 3 and len(usage["layers"]) == 4
    assert Utilization.model_validate_json(out.read_text(encoding="utf-8")).model_dump(mode="json") == usage


def test_cli_moe_commands_print_tables() -> None:
    runner = CliRunner()
    for args in (["moe", "info"], ["moe", "trace", "-p", "The capital"], ["moe", "utilization", "-p", "The sea"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    assert "share of tokens per expert" in result.stdout
