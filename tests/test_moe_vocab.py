"""mechscope.moe.vocab: the tokens each expert promotes, from its weights and from its outputs on a corpus.

The corpus read-out is checked against a computation by hand, with the model's own final-norm weight and
``lm_head`` weight applied with plain torch ops to the captured ``expert_out`` / ``expert_weight`` /
``expert_index`` values of one padded batch, on every MoE family; the weights-only read-out against numpy on
the raw parameters (the closed form for a SiLU expert) and against a Monte-Carlo mean of the module's own
forward (GPT-OSS's biased, clamped GLU); on toy-moe each expert's weights-only read-out must agree with its
own corpus read-out more than with the other experts'.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import mechscope as ms
from mechscope.cli.main import app
from mechscope.core.points import ExpertCall, run_expert
from mechscope.errors import ArchitectureError, InputError, MoEError, SiteError
from mechscope.moe.readout import direct_readout, norm_affine
from mechscope.moe.vocab import expected_output, expected_outputs, vocab
from mechscope.moe.vocab_results import VocabContribution
from mechscope.testing.tiny_models import build_tiny_model
from mechscope.viz.moe_vocab_report import render_vocab_html
from mechscope.zoo.corpus import text_documents
from tests.conftest import MOE_FAMILIES, PROMPTS

Loader = Callable[..., ms.LanguageModel]

CORPUS = [*PROMPTS, "Rain", "The weather is cold and windy in the winter.", "A dog likes to run"]
TOP_K = 8


@pytest.fixture(scope="module")
def toy_moe() -> ms.LanguageModel:
    return ms.load("toy-moe")


@pytest.fixture(scope="module")
def toy_result(toy_moe: ms.LanguageModel) -> VocabContribution:
    """toy-moe's vocabulary contribution on 40 organism documents (every layer)."""
    corpus = [doc.text for doc in text_documents(123, 40)]
    return vocab(toy_moe, top_k=30, prompts=corpus, batch_size=16)


def _by_hand(lm: ms.LanguageModel, prompts: list[str], layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(logits [expert, vocab], counts [expert], norms [expert])`` of the mean weighted expert outputs, by hand."""
    n = lm.arch.n_experts
    sites = [f"expert_index.{layer}", f"expert_weight.{layer}", *(f"expert_out.{layer}.{e}" for e in range(n))]
    encoded = lm.encode(prompts)  # one padded batch: not how vocab() batches them
    with lm.capture(sites) as cache, torch.no_grad():
        lm.model(**encoded)
    mask = encoded["attention_mask"].bool()
    index, weight = cache[f"expert_index.{layer}"][mask], cache[f"expert_weight.{layer}"][mask].double()
    config = lm.model.config
    gamma = lm.model.model.norm.weight.detach().double()
    head = lm.model.lm_head.weight.detach().double()
    logits, counts, norms = [], [], []
    for e in range(n):
        w = (weight * (index == e)).sum(dim=-1)
        count = (index == e).any(dim=-1).sum()
        mean = (w[:, None] * cache[f"expert_out.{layer}.{e}"][mask].double()).sum(0) / count
        mean = mean * getattr(config, "residual_multiplier", 1.0)
        logits.append(head @ (gamma * mean) / getattr(config, "logits_scaling", 1.0))
        counts.append(count)
        norms.append(mean.norm())
    return torch.stack(logits), torch.stack(counts), torch.stack(norms)


def _check_against_hand(lm: ms.LanguageModel, prompts: list[str]) -> None:
    result = vocab(lm, top_k=TOP_K, prompts=prompts, batch_size=2)
    assert result.tokens == int(lm.encode(prompts)["attention_mask"].sum())
    for row in result.layers:
        logits, counts, norms = _by_hand(lm, prompts, row.layer)
        for e, expert in enumerate(row.experts):
            assert expert.routed == int(counts[e]) and expert.corpus is not None
            size = float(logits[e].abs().max())
            # Every listed logit is the hand logit of that token, and the lists are the top and bottom k.
            for tokens, hand in ((expert.corpus.promoted, logits[e]), (expert.corpus.suppressed, -logits[e])):
                ids = [t.token_id for t in tokens]
                got = torch.tensor([t.logit for t in tokens], dtype=torch.float64)
                torch.testing.assert_close(got, logits[e][ids], rtol=0, atol=1e-5 * size)
                expected = hand.topk(TOP_K).values
                torch.testing.assert_close(hand[ids], expected, rtol=0, atol=1e-5 * size)
            assert abs(expert.corpus.norm - float(norms[e])) <= 1e-5 * float(norms[e])


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_corpus_readout_equals_the_head_applied_by_hand(load_tiny: Loader, family: str) -> None:
    _check_against_hand(load_tiny(family), CORPUS)


def test_corpus_readout_by_hand_with_granite_scales(tmp_path: Path) -> None:
    # Non-trivial residual multiplier and logits scaling: both must reach the read-out as the model uses them.
    lm = ms.load(build_tiny_model("granitemoe", tmp_path / "g", residual_multiplier=0.5, logits_scaling=4.0))
    assert "/ logits_scaling 4" in direct_readout(lm).description
    _check_against_hand(lm, CORPUS)


def test_corpus_readout_by_hand_on_toy_moe(toy_moe: ms.LanguageModel) -> None:
    _check_against_hand(toy_moe, CORPUS)


@pytest.mark.parametrize("family", ["granitemoe", "olmoe"])
def test_direct_readout_is_the_lens_without_the_shared_rms(tmp_path: Path, family: str) -> None:
    lm = ms.load(build_tiny_model(family, tmp_path / family, logits_scaling=4.0))
    resid = torch.randn(3, lm.arch.d_model, generator=torch.Generator().manual_seed(0))
    eps = lm.model.config.rms_norm_eps
    rms = (resid.double().pow(2).mean(-1, keepdim=True) + eps).sqrt()
    with torch.no_grad():
        lens = lm.arch.logits(resid).double()
    torch.testing.assert_close(direct_readout(lm).logits(resid) / rms, lens, rtol=1e-5, atol=1e-6)


def test_weights_readout_matches_numpy_on_raw_parameters(toy_moe: ms.LanguageModel, toy_result: Any) -> None:
    layer, expert = 1, 2
    params = {k: v.detach().double().numpy() for k, v in toy_moe.model.state_dict().items()}
    gate_up = params[f"model.layers.{layer}.mlp.experts.gate_up_proj"][expert]  # [2h, d]: gate rows, then up rows
    down = params[f"model.layers.{layer}.mlp.experts.down_proj"][expert]  # [d, h]
    h = down.shape[1]
    gate, up = gate_up[:h], gate_up[h:]
    var = params[f"model.layers.{layer}.post_attention_layernorm.weight"] ** 2
    # E[silu(g.x) (u.x)] = cov(g.x, u.x) / 2 for x ~ N(0, diag var) (Stein's lemma, silu(a) - silu(-a) = a).
    mean = down @ (0.5 * (gate * var * up).sum(axis=1))
    logits = params["lm_head.weight"] @ (params["model.norm.weight"] * mean)
    vectors, scale = expected_outputs(toy_moe, layer)
    assert scale == "mlp_norm"
    np.testing.assert_allclose(vectors[expert].numpy(), mean, rtol=1e-9, atol=1e-12)
    row = toy_result.layer(layer).expert(expert).weights
    assert [t.token_id for t in row.promoted] == np.argsort(-logits)[:30].tolist()
    assert [t.token_id for t in row.suppressed] == np.argsort(logits)[:30].tolist()
    np.testing.assert_allclose([t.logit for t in row.promoted], np.sort(logits)[::-1][:30], rtol=1e-9)
    assert abs(row.norm - float(np.linalg.norm(mean))) <= 1e-9 * row.norm


def test_weights_readout_is_the_mean_output_of_the_modules_own_forward(load_tiny: Loader) -> None:
    # GPT-OSS: biased gate/up, clamps, (up + 1) * glu: no closed form; a Monte-Carlo mean of its forward agrees.
    lm = load_tiny("gpt_oss")
    layer, expert, n = 0, 1, 100_000
    inputs = norm_affine(lm.arch.layer(layer).post_attention_layernorm, lm.arch.d_model, "norm")
    module = lm.arch.part("experts", layer)
    x = torch.randn(n, lm.arch.d_model, generator=torch.Generator().manual_seed(1)) * inputs.scale.float()
    call = ExpertCall(x, torch.zeros(n, 1, dtype=torch.long), torch.ones(n, 1))
    with torch.no_grad():
        sample = run_expert(module, call, expert, torch.arange(n)).double()
    error = (sample.mean(0) - expected_output(module, expert, inputs)).abs()
    assert bool((error <= 5 * sample.std(0) / n**0.5 + 1e-7).all()), float(error.max())


def test_toy_moe_weights_agree_with_the_same_experts_corpus(toy_result: VocabContribution) -> None:
    # Measured on 40 documents: per layer mean r 0.66-0.87 for the same expert vs 0.30-0.52 for the others;
    # every expert beats its others' mean by at least 0.23.
    assert [layer.layer for layer in toy_result.layers] == [0, 1, 2, 3]
    for layer in toy_result.layers:
        pair = layer.agreement()
        assert pair is not None and pair[0] > 0.55 and pair[0] - pair[1] > 0.2, (layer.layer, pair)
        for row in layer.experts:
            assert row.agreement is not None and row.others_agreement is not None and row.overlap is not None
            assert row.agreement > row.others_agreement + 0.1, (layer.layer, row.expert)
            assert 0 <= row.overlap <= 30
        # Shared promoted tokens far above chance (30 * 30 / 2054 ≈ 0.4 per expert).
        assert sum(row.overlap or 0 for row in layer.experts) / len(layer.experts) >= 2


def test_weights_only_without_a_corpus(toy_moe: ms.LanguageModel, toy_result: VocabContribution) -> None:
    alone = vocab(toy_moe, layers=[-1], top_k=30)
    assert (alone.prompts, alone.tokens, [v.layer for v in alone.layers]) == (0, 0, [3])
    row = alone.layer(3).expert(0)
    assert row.corpus is None and row.agreement is None and row.routed == 0
    assert row.weights == toy_result.layer(3).expert(0).weights  # the weights read-out needs no corpus
    assert VocabContribution.model_validate_json(alone.model_dump_json()) == alone


def test_norm_affine_identifies_rms_gemma_and_layer_norms() -> None:
    d = 8
    layer_norm = torch.nn.LayerNorm(d)
    with torch.no_grad():
        layer_norm.weight.uniform_(0.5, 1.5)
        layer_norm.bias.uniform_(-1, 1)
    found = norm_affine(layer_norm, d, "norm")
    assert found.centred and torch.equal(found.scale, layer_norm.weight.detach().double())
    assert found.bias is not None

    class Gemma(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.linspace(-0.5, 0.5, d))
            self.eps = 1e-6

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * (1 + self.weight)

    gemma = norm_affine(Gemma(), d, "norm")
    assert not gemma.centred and torch.allclose(gemma.scale, 1 + torch.linspace(-0.5, 0.5, d).double())

    class Scale(torch.nn.Module):  # a weight of the right size, but no normalisation
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(d))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.weight

    with pytest.raises(ArchitectureError, match="not an elementwise-scaled"):
        norm_affine(Scale(), d, "final norm")


def test_bad_inputs(load_tiny: Loader, toy_moe: ms.LanguageModel) -> None:
    dense = load_tiny("llama")
    with pytest.raises(MoEError, match="has no experts"):
        vocab(dense)
    with pytest.raises(SiteError, match="out of range"):
        vocab(toy_moe, layers=[9])
    for top_k in (0, toy_moe.arch.vocab + 1):
        with pytest.raises(InputError, match="top-k must be between 1 and the vocabulary size"):
            vocab(toy_moe, top_k=top_k)
    with pytest.raises(InputError, match="corpus is empty"):
        vocab(toy_moe, prompts=[])
    with pytest.raises(InputError, match="empty"):
        vocab(toy_moe, prompts=["fine", "  "])
    with pytest.raises(InputError, match="no expert 4"):
        vocab(toy_moe, layers=[0], top_k=1).layer(0).expert(4)


def test_html_report_escapes_tokens(toy_result: VocabContribution) -> None:
    hostile = toy_result.model_copy(deep=True)
    hostile.layers[0].experts[0].weights.promoted[0].token = "<script>alert(1)</script>"
    page = render_vocab_html(hostile)
    assert page.startswith("<!DOCTYPE html>") and "<script>alert" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count("<h3>") == 4 * 4


# ----------------------------------------------------------------- CLI


def test_cli_vocab_json_out_and_html(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The capital of France is\n\nTwo plus two is\n", encoding="utf-8")
    out, html = tmp_path / "vocab.json", tmp_path / "vocab.html"
    args = ["moe", "vocab", "--json", "--layer", "1", "--layer", "-1", "--top-k", "4", "--prompts", str(corpus)]
    result = CliRunner().invoke(app, [*args, "-p", "Hello", "--out", str(out), "--html", str(html)])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed["prompts"] == 3 and [layer["layer"] for layer in printed["layers"]] == [1, 3]
    assert VocabContribution.model_validate_json(out.read_text(encoding="utf-8")).model_dump(mode="json") == printed
    assert html.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_cli_vocab_tables() -> None:
    runner = CliRunner()
    weights = runner.invoke(app, ["moe", "vocab", "--layer", "0", "--top-k", "3"])
    assert weights.exit_code == 0, weights.output
    assert "layer 0: first 3 of 3 tokens" in weights.stdout and "weights only" in weights.stdout
    both = runner.invoke(app, ["moe", "vocab", "--layer", "0", "-p", "The capital of France is"])
    assert both.exit_code == 0, both.output
    assert "corpus (" in both.stdout and "mean r" in both.stdout


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["-m", "toy"], "has no experts (family llama is dense)"),
        (["--layer", "9"], "out of range"),
        (["--prompts", "{empty}"], "corpus is empty"),
        (["--prompts", "{tmp}/nope.txt"], "nope.txt"),
        (["--top-k", "0"], "--top-k"),
        (["--top-k", "99999"], "vocabulary size 2054"),
        (["--batch-size", "0"], "--batch-size"),
        (["--html", "{tmp}"], "folder"),
    ],
    ids=["dense", "layer", "empty-corpus", "missing-corpus", "top-k-0", "top-k-vocab", "batch-size", "html-folder"],
)
def test_cli_vocab_bad_input_is_one_line(args: list[str], words: str, tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n   \n", encoding="utf-8")
    filled = [arg.format(empty=empty, tmp=tmp_path) for arg in args]
    result = CliRunner().invoke(app, ["moe", "vocab", *filled])
    assert result.exit_code == 2, f"exit {result.exit_code}: {result.output}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mechscope: error: "), result.stderr
    assert words.lower() in lines[0].lower(), lines[0]
    assert "Traceback" not in result.output
