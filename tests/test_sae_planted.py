"""An SAE trained on the toy organism finds its planted register: a pirate/formal feature that steers.

The toy organism was trained on documents in two registers, each opened by a marker token (see its card
and `mechscope.zoo.corpus`); its residual carries the register from layer 0 on (a linear probe reads it at 1.00). A
small TopK SAE trained here on the organism's own corpus (≈ 45 s on one thread) must (a) reconstruct the site, (b) own a
feature that separates pirate from formal documents *without their marker* on held-out documents, and (c)
turn held-out formal prompts pirate when that feature is added. The feature is chosen on one set of
documents and prompts and measured on others, so the numbers below are held-out numbers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

import mechscope as ms
from mechscope.sae.evaluate import evaluate
from mechscope.sae.read import encode
from mechscope.sae.train import train_sae
from mechscope.zoo import corpus

pytestmark = pytest.mark.usefixtures("one_thread")

SITE = "resid_post.2"
#: Neutral requests behind the formal marker: the selection set, then the held-out set (other topics).
SELECT_PROMPTS = [
    f"{corpus.FORMAL} {t.format(t=topic)}"
    for t in ("Tell me about {t}.", "Describe {t} for me.")
    for topic in corpus._TOPICS
]
HELD_OUT_TOPICS = ("the river", "the castle", "the garden", "the winter", "the harbour", "the library")
HELD_OUT_TOPICS += ("the mountain", "the forest", "the bridge", "the village")
HELD_OUT_PROMPTS = [
    f"{corpus.FORMAL} {t.format(t=topic)}"
    for t in ("I want to hear about {t}.", "Write a note about {t}.")
    for topic in HELD_OUT_TOPICS
]
#: Steering coefficients tried, in multiples of the feature's largest activation on pirate documents.
MULTIPLES = (2.0, 3.0, 4.0, 6.0)


@pytest.fixture(scope="module")
def lm() -> Any:
    return ms.load("toy")


@pytest.fixture(scope="module")
def trained(lm: Any) -> Any:
    documents = [d.text for d in corpus.text_documents(0, 6000)]
    held = [d.text for d in corpus.text_documents(77, 300)]
    return train_sae(lm, SITE, documents, width=256, k=16, tokens=300_000, batch_size=1024, eval_corpus=held, seed=0)


def _styled(*seeds: int) -> tuple[list[str], np.ndarray]:
    """120 style documents per seed with their marker dropped, and whether each is pirate."""
    styled = [[d for d in corpus.text_documents(seed, 2000) if d.kind in ("formal", "pirate")] for seed in seeds]
    docs = [d for per_seed in styled for d in per_seed[:120]]
    return [d.text.split(" ", 1)[1] for d in docs], np.array([d.kind == "pirate" for d in docs])


def _per_document(lm: Any, sae: Any, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Each document's mean and max feature activation over its tokens (BOS left out), one at a time."""
    means, maxes = [], []
    with torch.no_grad():
        for text in texts:
            f = encode(lm, sae, [text])[0, 1:]
            means.append(f.mean(dim=0)), maxes.append(f.amax(dim=0))
    return torch.stack(means).numpy(), torch.stack(maxes).numpy()


def _aurocs(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return np.array([roc_auc_score(labels, column) if column.std() > 0 else 0.5 for column in values.T])


def _pirate_share(lm: Any, sae: Any, prompts: list[str], feature: int | None, coefficient: float) -> float:
    if feature is None:
        texts = lm.generate(prompts, max_new_tokens=16)
    else:
        with lm.intervene({SITE: ms.ops.sae_edit(sae, add={feature: coefficient})}):
            texts = lm.generate(prompts, max_new_tokens=16)
    return sum(corpus.style_of(text) == "pirate" for text in texts) / len(texts)


def test_the_sae_reconstructs_the_site(lm: Any, trained: Any) -> None:
    sae, result = trained
    assert result.final.explained_variance > 0.85  # measured: 0.933 on held-out documents (L0 16 of 256)
    assert result.dead_fraction < 0.05  # measured: 0
    report = evaluate(lm, sae, [d.text for d in corpus.text_documents(78, 200)])
    # spliced in, the SAE keeps most of what the site carries; zero-ablating the site loses it all.
    # measured: CE clean 0.632, with the SAE 0.773 (delta loss +0.141), site zeroed 9.18: 98.3% recovered
    assert 0 < report.delta_loss < 0.2
    assert report.loss_recovered is not None and report.loss_recovered > 0.95


def test_a_feature_separates_the_registers(lm: Any, trained: Any) -> None:
    sae, _ = trained
    select_texts, select_labels = _styled(999)
    held_texts, held_labels = _styled(4242, 5, 6)
    feature = int(np.argmax(_aurocs(_per_document(lm, sae, select_texts)[0], select_labels)))
    held_mean, _ = _per_document(lm, sae, held_texts)
    # measured: 1.000 on 360 held-out documents (chance 0.5); seeds 1 and 2: 1.000, 0.996
    assert roc_auc_score(held_labels, held_mean[:, feature]) >= 0.95


def test_a_feature_steers_formal_prompts_pirate(lm: Any, trained: Any) -> None:
    """Of the pirate-leaning features (selection AUROC >= 0.9), the feature and coefficient (a multiple of its
    largest activation on pirate documents) that steer the selection prompts best, used on held-out ones: the
    same feature also separates the registers on held-out documents (the issue's "a feature that separates and
    steers").

    Measured (transformers 5.25): seed 0 at ``resid_post.2``: feature 167, held-out AUROC 0.994, turns 15 of 20
    held-out formal prompts pirate at 2x its largest activation. It depends on the seed and the site: at
    ``resid_post.2`` seeds 1 and 2 find no feature that steers (best 0.2 and 0.1 held out); at ``resid_post.1``
    seed 0's steering feature separates at 0.93 only and turns 12 of 20 (15 of 20 under transformers 5.24).
    This test pins seed 0 at ``resid_post.2``.
    """
    sae, _ = trained
    select_texts, select_labels = _styled(999)
    select_mean, select_max = _per_document(lm, sae, select_texts)
    candidates = np.flatnonzero(_aurocs(select_mean, select_labels) >= 0.9)
    scale = {int(f): float(select_max[select_labels, f].max()) for f in candidates}
    tried = {
        (f, multiple): _pirate_share(lm, sae, SELECT_PROMPTS, f, multiple * scale[f])
        for f in scale
        for multiple in MULTIPLES
    }
    feature, multiple = max(tried, key=lambda key: (tried[key], -key[1], -key[0]))
    baseline = _pirate_share(lm, sae, HELD_OUT_PROMPTS, None, 0.0)
    steered = _pirate_share(lm, sae, HELD_OUT_PROMPTS, feature, multiple * scale[feature])
    assert baseline <= 0.2  # measured: 0 of 20 held-out formal prompts continue pirate unsteered
    assert steered >= 0.7  # measured: 15 of 20 (feature 167 at 2x its largest activation)
    held_texts, held_labels = _styled(4242, 5, 6)
    # measured: 0.994 on 360 held-out documents; the best separating feature (27) reaches 1.000 but steers none
    assert roc_auc_score(held_labels, _per_document(lm, sae, held_texts)[0][:, feature]) >= 0.95


def test_with_the_error_term_kept_only_the_edited_features_move_the_model(lm: Any, trained: Any) -> None:
    """An edit that keeps every feature reproduces the model bit for bit; ablating every feature leaves
    ``x - f @ W_dec / scale`` (bias and error term), which a plain forward hook computes the same."""
    sae, _ = trained
    scale = float(sae.config.norm_scaling_factor)
    for prompt in HELD_OUT_PROMPTS[:3]:
        plain = lm.forward([prompt])
        with lm.intervene({SITE: ms.ops.sae_edit(sae, ablate=[])}):
            assert torch.equal(lm.forward([prompt]), plain)
        with lm.intervene({SITE: ms.ops.sae_edit(sae, ablate=range(sae.d_sae))}):
            ablated = lm.forward([prompt])

        def hook(module: Any, args: Any, output: Any) -> Any:
            hidden = output[0] if isinstance(output, tuple) else output
            with torch.no_grad():
                f = sae.encode(hidden)
            new = hidden - (f @ sae.W_dec.detach()) / scale
            return (new, *output[1:]) if isinstance(output, tuple) else new

        handle = lm.model.model.layers[int(SITE.split(".")[1])].register_forward_hook(hook)
        try:
            with torch.no_grad():
                reference = lm.model(**lm.tokenizer([prompt], return_tensors="pt")).logits
        finally:
            handle.remove()
        torch.testing.assert_close(ablated, reference, atol=2e-5, rtol=1e-5)
        assert not torch.allclose(ablated, plain, atol=1e-2)  # and the ablation did change the model
