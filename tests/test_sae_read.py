"""Reading SAE features (`mechscope.sae.read`), their HTML pages, and ``mechscope sae evaluate|features|top-examples``.

Expected values are computed here independently: the site's value read with a plain `register_forward_hook`
on the model's own decoder layer, one unpadded prompt at a time; features from the SAE's weights in numpy;
max-activating contexts by brute force over every token; logit effects as a numpy product with the LM head.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import mechscope as ms
from mechscope.cli.main import app
from mechscope.errors import InputError
from mechscope.sae import SAE, save
from mechscope.sae.evaluate import evaluate
from mechscope.sae.read import encode, logit_effect, top_examples, top_features
from mechscope.sae.results import (
    Example,
    FeatureActivation,
    FeatureExamples,
    FeatureTrace,
    PromptFeatures,
    TokenFeatures,
    TopExamples,
)
from mechscope.viz.sae_report import render_examples_html, render_features_html
from mechscope.zoo.corpus import text_documents

pytestmark = pytest.mark.usefixtures("one_thread")

SITE, LAYER = "resid_post.2", 2
CORPUS = [d.text for d in text_documents(5, 14)]


@pytest.fixture(scope="module")
def lm() -> Any:
    return ms.load("toy")


@pytest.fixture(scope="module")
def sae(lm: Any) -> SAE:
    sae = SAE.random(lm.arch.d_model, 192, SITE, k=6, seed=7, model=lm.source)
    with torch.no_grad():
        sae.b_dec.copy_(0.2 * torch.randn(sae.config.d_in, generator=torch.Generator().manual_seed(2)))
    return sae


def _hidden(lm: Any, prompt: str) -> tuple[list[int], np.ndarray]:
    """One prompt alone through the plain model: its ids and the decoder layer's output ``[pos, d]``."""
    ids = lm.tokenizer(prompt, return_tensors="pt")["input_ids"]
    seen: list[torch.Tensor] = []
    handle = lm.model.model.layers[LAYER].register_forward_hook(lambda m, a, out: seen.append(out.detach().clone()))
    try:
        with torch.no_grad():
            lm.model(input_ids=ids)
    finally:
        handle.remove()
    return ids[0].tolist(), seen[0][0].double().numpy()


def _features(sae: SAE, x: np.ndarray) -> np.ndarray:
    """TopK features from the weights, in numpy."""
    pre = (x - sae.b_dec.detach().double().numpy()) @ sae.W_enc.detach().double().numpy()
    pre = pre + sae.b_enc.detach().double().numpy()
    k = sae.config.k
    assert k is not None
    cut = np.sort(pre, axis=-1)[:, -k][:, None]
    return np.maximum(np.where(pre >= cut, pre, 0.0), 0.0)


# --- encode and top_features -------------------------------------------------------------------------------


def test_encode_matches_the_plain_model_and_zeroes_padding(lm: Any, sae: SAE) -> None:
    prompts = ["The capital of France is", "a"]
    got = encode(lm, sae, prompts)
    mask = lm.encode(prompts)["attention_mask"].bool()
    assert got.shape == (2, mask.shape[1], sae.d_sae)
    for row, prompt in enumerate(prompts):
        _, x = _hidden(lm, prompt)
        np.testing.assert_allclose(got[row][mask[row]].numpy(), _features(sae, x), atol=1e-4)
    assert bool((got[~mask] == 0).all()) and bool((~mask).any())


def test_top_features_lists_each_tokens_largest_features(lm: Any, sae: SAE) -> None:
    prompt = "Two plus two is four, and the cat"
    ids, x = _hidden(lm, prompt)
    expected = _features(sae, x)
    result = top_features(lm, sae, prompt, top=4, features=[11, 3])
    assert [t.token_id for t in result.tokens] == ids
    assert "".join(t.token for t in result.tokens[1:]) == prompt
    for position, token in enumerate(result.tokens):
        order = sorted(range(sae.d_sae), key=lambda f: (-expected[position, f], f))[:4]
        assert [f.feature for f in token.top] == [f for f in order if expected[position, f] > 0]
        np.testing.assert_allclose([f.activation for f in token.top], expected[position, order], atol=1e-4)
    assert [trace.feature for trace in result.traces] == [11, 3]
    np.testing.assert_allclose(result.trace(3).activations, expected[:, 3], atol=1e-4)


def test_top_features_refuses_bad_input(lm: Any, sae: SAE) -> None:
    with pytest.raises(InputError, match="feature 192 is out of range"):
        top_features(lm, sae, "The cat", features=[192])
    with pytest.raises(InputError, match="empty"):
        top_features(lm, sae, "")
    with pytest.raises(InputError, match="top must be"):
        top_features(lm, sae, "The cat", top=0)


# --- top_examples --------------------------------------------------------------------------------------------


def _brute_force(lm: Any, sae: SAE, corpus: list[str], feature: int) -> list[tuple[float, int, int]]:
    """Every (activation, prompt, position) with the feature active, BOS left out, best first."""
    found = []
    for index, prompt in enumerate(corpus):
        _, x = _hidden(lm, prompt)
        acts = _features(sae, x)[:, feature]
        found += [(float(a), index, p) for p, a in enumerate(acts) if p > 0 and a > 0]
    return sorted(found, key=lambda e: (-e[0], e[1], e[2]))


def test_top_examples_match_a_brute_force_search(lm: Any, sae: SAE) -> None:
    features = [int(f) for f in encode(lm, sae, CORPUS[:4])[:, 1:].flatten(0, 1).sum(0).argsort(descending=True)[:3]]
    result = top_examples(lm, sae, CORPUS, [*features, 5], k=6, context=2, batch_size=3)
    assert result.tokens == sum(len(lm.tokenizer(p)["input_ids"]) - 1 for p in CORPUS)
    assert [entry.feature for entry in result.features] == [*features, 5]
    for entry in result.features:
        expected = _brute_force(lm, sae, CORPUS, entry.feature)
        assert entry.active_tokens == len(expected)
        best = expected[:6]
        assert len(entry.examples) == len(best)
        np.testing.assert_allclose([e.activation for e in entry.examples], [b[0] for b in best], atol=1e-4)
        for rank, (example, (value, prompt, position)) in enumerate(zip(entry.examples, best, strict=True)):
            near = [
                abs(value - other[0]) < 1e-4 for other in expected[max(rank - 1, 0) : rank + 2] if other != best[rank]
            ]
            if not any(near):  # a near tie may swap under padding's float32 rounding; anything else may not
                assert (example.prompt, example.position) == (prompt, position)
            ids, x = _hidden(lm, CORPUS[example.prompt])
            lo = max(example.position - 2, 0)
            window = list(range(lo, min(example.position + 3, len(ids))))
            assert example.tokens == lm.token_texts([ids[p] for p in window])
            assert example.center == example.position - lo
            np.testing.assert_allclose(example.activations, _features(sae, x)[window, entry.feature], atol=1e-4)


def test_ties_are_broken_by_prompt_then_position(lm: Any, sae: SAE) -> None:
    """Identical prompts, one per batch (so bit for bit equal): the earliest prompts win, in order."""
    prompt = "The capital of France is Paris."
    feature = int(encode(lm, sae, [prompt])[0, 1:].sum(0).argmax())
    result = top_examples(lm, sae, [prompt] * 5, [feature], k=3, batch_size=1)
    examples = result.feature(feature).examples
    assert [e.prompt for e in examples] == [0, 1, 2]
    assert len({(e.position, e.activation) for e in examples}) == 1


def test_top_examples_refuses_bad_input(lm: Any, sae: SAE) -> None:
    with pytest.raises(InputError, match="feature -1 is out of range"):
        top_examples(lm, sae, CORPUS, [-1])
    with pytest.raises(InputError, match="no features"):
        top_examples(lm, sae, CORPUS, [])
    with pytest.raises(InputError, match="k must be"):
        top_examples(lm, sae, CORPUS, [1], k=0)
    with pytest.raises(InputError, match="prompt 1 is empty"):
        top_examples(lm, sae, ["The cat", " "], [1])


# --- logit_effect ------------------------------------------------------------------------------------------


def test_logit_effect_is_the_decoder_row_through_the_raw_unembedding(lm: Any, sae: SAE) -> None:
    unembed = lm.model.get_output_embeddings().weight.detach().double().numpy()
    effect = unembed @ sae.W_dec[17].detach().double().numpy()
    result = logit_effect(lm, sae, 17, top=5)
    assert [t.token_id for t in result.positive] == [int(i) for i in np.argsort(-effect, kind="stable")[:5]]
    assert [t.token_id for t in result.negative] == [int(i) for i in np.argsort(effect, kind="stable")[:5]]
    np.testing.assert_allclose([t.effect for t in result.positive], np.sort(effect)[::-1][:5], rtol=1e-5)
    assert result.positive[0].token == lm.token_texts([result.positive[0].token_id])[0]


def test_logit_effect_refuses_what_it_cannot_read(lm: Any, sae: SAE) -> None:
    with pytest.raises(InputError, match="out of range"):
        logit_effect(lm, sae, 192)
    heads = SAE.random(lm.arch.n_heads * lm.arch.head_dim, 16, "head_out.1", k=2)
    with pytest.raises(InputError, match="output projection"):
        logit_effect(lm, heads, 0)


# --- the pages -----------------------------------------------------------------------------------------------

EVIL = "<script>alert(1)</script>"


def test_pages_escape_every_token_and_colour_by_activation() -> None:
    tokens = [
        TokenFeatures(position=0, token="<bos>", token_id=0, top=[]),
        TokenFeatures(position=1, token=EVIL, token_id=5, top=[FeatureActivation(feature=2, activation=3.0)]),
        TokenFeatures(position=2, token=' "x', token_id=6, top=[FeatureActivation(feature=2, activation=0.5)]),
    ]
    trace = FeatureTrace(feature=2, activations=[0.0, 3.0, 0.5])
    read = PromptFeatures(site=SITE, prompt=EVIL, d_sae=4, tokens=tokens, traces=[trace])
    page = render_features_html(read, feature=2)
    example = Example(prompt=0, position=1, activation=3.0, tokens=["<bos>", EVIL], center=1, activations=[0.0, 3.0])
    found = TopExamples(
        site=SITE, prompts=1, tokens=2, k=1, context=1, skip_first=True,
        features=[FeatureExamples(feature=2, active_tokens=1, examples=[example])],
    )  # fmt: skip
    examples_page = render_examples_html(found)
    for html in (page, examples_page):
        assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
        assert html.count("<script>") == 1  # the page's own figure-saving script only
    spans = [s for s in page.split('<span class="tok"')[1:] if "data-activation" in s]
    colours = [s.split("background:")[1].split(";")[0] for s in spans]
    assert colours[0] == "rgb(255,255,255)" and colours[1] != colours[2] != colours[0]  # 0 white, 3 darkest
    outlined = [span.split(">", 1)[0] for span in examples_page.split('<span class="tok"')[1:]]
    assert ["outline:2px" in span for span in outlined] == [False, True]  # the example's own token only


# --- the commands ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def folder(sae: SAE, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save(sae, tmp_path_factory.mktemp("sae") / "resid_post.2")


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(CORPUS[:8]) + "\n", encoding="utf-8")
    return path


def test_evaluate_command_prints_the_librarys_numbers(lm: Any, sae: SAE, folder: Path, corpus_file: Path) -> None:
    out = CliRunner().invoke(
        app, ["sae", "evaluate", "-m", "toy", "--sae", str(folder), "--prompts", str(corpus_file), "--json"]
    )
    assert out.exit_code == 0, out.output
    got = json.loads(out.stdout)
    expected = evaluate(lm, sae, CORPUS[:8])
    for key in ("tokens", "l0", "dead", "dense", "loss_tokens"):
        assert got[key] == getattr(expected, key)
    for key in ("mse", "explained_variance", "ce_clean", "ce_sae", "ce_zero", "loss_recovered"):
        assert got[key] == pytest.approx(getattr(expected, key), rel=1e-5)
    table = CliRunner().invoke(app, ["sae", "evaluate", "--sae", str(folder), "--documents", "6"])
    assert table.exit_code == 0 and "explained variance" in table.stdout and "loss recovered" in table.stdout


def test_features_command_writes_json_and_html(lm: Any, sae: SAE, folder: Path, tmp_path: Path) -> None:
    page = tmp_path / "f.html"
    args = ["sae", "features", "-m", "toy", "--sae", str(folder), "-p", "The capital of France is", "--top", "3"]
    out = CliRunner().invoke(app, [*args, "--feature", "17", "--html", str(page), "--json"])
    assert out.exit_code == 0, out.output
    got = json.loads(out.stdout)
    expected = top_features(lm, sae, "The capital of France is", top=3, features=[17])
    assert got["features"]["tokens"] == json.loads(expected.model_dump_json())["tokens"]
    assert [t["token_id"] for t in got["logit_effect"]["positive"]] == [
        t.token_id for t in logit_effect(lm, sae, 17, top=3).positive
    ]
    assert "Feature 17 on the prompt" in page.read_text(encoding="utf-8")
    table = CliRunner().invoke(app, args)
    assert table.exit_code == 0 and "␣is" in table.stdout


def test_top_examples_command_writes_json_and_html(
    lm: Any, sae: SAE, folder: Path, corpus_file: Path, tmp_path: Path
) -> None:
    page = tmp_path / "t.html"
    args = ["sae", "top-examples", "--sae", str(folder), "--prompts", str(corpus_file), "--feature", "4", "-f", "9"]
    out = CliRunner().invoke(app, [*args, "--k", "3", "--html", str(page), "--json"])
    assert out.exit_code == 0, out.output
    got = TopExamples.model_validate_json(out.stdout)
    expected = top_examples(lm, sae, CORPUS[:8], [4, 9], k=3)
    assert [[(e.prompt, e.position) for e in f.examples] for f in got.features] == [
        [(e.prompt, e.position) for e in f.examples] for f in expected.features
    ]
    html = page.read_text(encoding="utf-8")
    assert "Feature 4" in html and "Feature 9" in html and "promoted" in html
    assert CliRunner().invoke(app, args).exit_code == 0


@pytest.fixture(scope="module")
def far_folder(lm: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save(SAE.random(lm.arch.d_model, 16, "resid_post.9", k=2), tmp_path_factory.mktemp("far") / "sae")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["features", "-p", "The cat", "--sae", "{missing}"], "no SAE at"),
        (["features", "-p", "The cat", "--sae", "{far}"], "resid_post.9"),
        (["features", "-p", "The cat", "--sae", "{sae}", "--feature", "192"], "out of range"),
        (["features", "-p", "", "--sae", "{sae}"], "empty"),
        (["top-examples", "--sae", "{sae}", "--prompts", "{corpus}", "--feature", "999"], "out of range"),
        (["top-examples", "--sae", "{sae}", "--prompts", "{missing}", "--feature", "1"], "no corpus file"),
        (["evaluate", "--sae", "{far}", "--documents", "2"], "resid_post.9"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    args: list[str], words: str, folder: Path, far_folder: Path, corpus_file: Path, tmp_path: Path
) -> None:
    places = {"sae": folder, "far": far_folder, "corpus": corpus_file, "missing": tmp_path / "nowhere"}
    filled = [a.format(**{k: str(v) for k, v in places.items()}) for a in args]
    out = CliRunner().invoke(app, ["sae", *filled])
    lines = out.stderr.strip().splitlines()
    assert out.exit_code == 2 and len(lines) == 1 and lines[0].startswith("mechscope: error: "), out.output
    assert words in lines[0]
