"""`mechscope.sae.evaluate`: every number against an independent computation.

The reference runs each prompt alone (no padding) through the plain transformers model, with a
`register_forward_hook` on the decoder layer's own module to read or replace ``resid_post.2``; the SAE is
applied with numpy from its weights, the metrics are numpy sums, and the losses are
`torch.nn.functional.cross_entropy` on the plain model's logits. The code under test runs padded batches
through `lm.capture` / `lm.intervene`, so agreement is to float32 rounding, not bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mechscope as ms
from mechscope.errors import InputError, SiteError
from mechscope.sae import SAE
from mechscope.sae.evaluate import Splice, evaluate
from mechscope.zoo.corpus import text_documents

pytestmark = pytest.mark.usefixtures("one_thread")

SITE, LAYER = "resid_post.2", 2
#: Mixed lengths, one prompt of two tokens (BOS + one: an evaluated token, but nothing it predicts).
CORPUS = [*(d.text for d in text_documents(3, 6)), "a", "The capital of France is Paris."]


@pytest.fixture(scope="module")
def lm() -> Any:
    return ms.load("toy")


def _biased(sae: SAE, seed: int = 1) -> SAE:
    """Nonzero b_enc and b_dec, so that a bias forgotten or added twice shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.b_enc.copy_(0.5 * torch.randn(sae.d_sae, generator=generator))
        sae.b_dec.copy_(0.3 * torch.randn(sae.config.d_in, generator=generator))
    return sae


@pytest.fixture(scope="module")
def sae(lm: Any) -> SAE:
    return _biased(SAE.random(lm.arch.d_model, 256, SITE, k=8, seed=3))


def _numpy_sae(sae: SAE) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """``x -> (features, x_hat)`` of a TopK SAE, written from its weights in numpy (float64)."""
    w_enc, b_enc = sae.W_enc.detach().double().numpy(), sae.b_enc.detach().double().numpy()
    w_dec, b_dec = sae.W_dec.detach().double().numpy(), sae.b_dec.detach().double().numpy()
    k = sae.config.k

    def run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pre = (x - b_dec) @ w_enc + b_enc
        if sae.config.architecture == "topk":
            assert k is not None
            cut = np.sort(pre, axis=-1)[:, -k][:, None]
            pre = np.where(pre >= cut, pre, 0.0)
        features = np.maximum(pre, 0.0)
        return features, features @ w_dec + b_dec

    return run


def _plain(lm: Any, prompt: str, replace: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Any:
    """The plain model on one unpadded prompt: (ids, logits, layer output); ``replace`` maps positions 1.. ."""
    ids = lm.tokenizer(prompt, return_tensors="pt")["input_ids"]
    seen: list[torch.Tensor] = []

    def hook(module: Any, args: Any, output: Any) -> Any:
        hidden = output[0] if isinstance(output, tuple) else output
        seen.append(hidden.detach().clone())
        if replace is None:
            return None
        new = hidden.clone()
        new[:, 1:] = replace(hidden[:, 1:])
        return (new, *output[1:]) if isinstance(output, tuple) else new

    handle = lm.model.model.layers[LAYER].register_forward_hook(hook)
    try:
        with torch.no_grad():
            logits = lm.model(input_ids=ids).logits
    finally:
        handle.remove()
    return ids[0], logits[0], seen[0][0]


def _reference(lm: Any, sae: SAE, corpus: list[str]) -> dict[str, Any]:
    run = _numpy_sae(sae)
    xs, feats, recon = [], [], []
    sums = {"clean": 0.0, "sae": 0.0, "zero": 0.0}
    predictions = 0

    def through_sae(h: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(run(h[0].double().numpy())[1]).float()[None]

    for prompt in corpus:
        ids, clean, hidden = _plain(lm, prompt)
        x = hidden[1:].double().numpy()  # BOS left out
        f, x_hat = run(x)
        xs.append(x), feats.append(f), recon.append(x_hat)
        if len(ids) < 3:
            continue
        _, spliced, _ = _plain(lm, prompt, through_sae)
        _, zeroed, _ = _plain(lm, prompt, torch.zeros_like)
        targets = ids[2:]  # predicted from positions 1 .. n-2
        for name, logits in (("clean", clean), ("sae", spliced), ("zero", zeroed)):
            sums[name] += float(F.cross_entropy(logits[1:-1].double(), targets, reduction="sum"))
        predictions += len(targets)
    x, f, x_hat = np.concatenate(xs), np.concatenate(feats), np.concatenate(recon)
    error = ((x - x_hat) ** 2).sum()
    frequency = (f > 0).mean(axis=0)
    ce = {name: total / predictions for name, total in sums.items()}
    return {
        "tokens": len(x),
        "mse": error / len(x),
        "normalized_mse": error / (x**2).sum(),
        "explained_variance": 1 - error / ((x - x.mean(axis=0)) ** 2).sum(),
        "l0": (f > 0).sum(axis=1).mean(),
        "dead": int((frequency == 0).sum()),
        "dense": [int(i) for i in np.flatnonzero(frequency > 0.1)],
        "loss_tokens": predictions,
        **{f"ce_{name}": value for name, value in ce.items()},
        "recovered": (ce["zero"] - ce["sae"]) / (ce["zero"] - ce["clean"]),
    }


@pytest.fixture(scope="module")
def reference(lm: Any, sae: SAE) -> dict[str, Any]:
    return _reference(lm, sae, CORPUS)


@pytest.fixture(scope="module")
def result(lm: Any, sae: SAE) -> Any:
    return evaluate(lm, sae, CORPUS, batch_size=3)  # several padded batches


def test_reconstruction_metrics_match_numpy(result: Any, reference: dict[str, Any], sae: SAE) -> None:
    assert result.tokens == reference["tokens"]
    assert result.mse == pytest.approx(reference["mse"], rel=1e-4)
    assert result.mse_per_dim == pytest.approx(reference["mse"] / sae.config.d_in, rel=1e-4)
    assert result.normalized_mse == pytest.approx(reference["normalized_mse"], rel=1e-4)
    assert result.explained_variance == pytest.approx(reference["explained_variance"], abs=1e-5)
    assert 0.0 < result.explained_variance < 1.0  # neither trivially perfect nor useless: a real check


def test_sparsity_matches_numpy(result: Any, reference: dict[str, Any]) -> None:
    assert result.l0 == pytest.approx(reference["l0"], abs=1e-9)
    assert result.dead == reference["dead"] and result.dead > 0
    assert result.dense == reference["dense"] and result.dense
    assert result.dense_threshold == 0.1


def test_losses_match_a_manual_hook_through_plain_transformers(result: Any, reference: dict[str, Any]) -> None:
    assert result.loss_tokens == reference["loss_tokens"]
    for name in ("clean", "sae", "zero"):
        assert getattr(result, f"ce_{name}") == pytest.approx(reference[f"ce_{name}"], rel=1e-5, abs=1e-5)
    assert result.delta_loss == pytest.approx(reference["ce_sae"] - reference["ce_clean"], abs=1e-4)
    assert result.loss_recovered == pytest.approx(reference["recovered"], abs=1e-4)
    assert result.ce_clean < result.ce_sae < result.ce_zero


def test_an_identity_sae_costs_nothing(lm: Any) -> None:
    """ReLU(x) − ReLU(−x) = x: this standard SAE reconstructs exactly, so it recovers all the loss."""
    d = lm.arch.d_model
    sae = SAE.random(d, 2 * d, SITE, architecture="standard")
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
    result = evaluate(lm, sae, CORPUS[:4], batch_size=2)
    assert result.mse < 1e-9 and result.explained_variance == pytest.approx(1.0, abs=1e-9)
    assert result.delta_loss == pytest.approx(0.0, abs=1e-5)
    assert result.loss_recovered == pytest.approx(1.0, abs=1e-5)


def test_keeping_the_first_token_evaluates_and_splices_it(lm: Any, sae: SAE) -> None:
    corpus = CORPUS[:3]
    lengths = [len(lm.tokenizer(p)["input_ids"]) for p in corpus]
    result = evaluate(lm, sae, corpus, batch_size=2, skip_first=False)
    assert result.tokens == sum(lengths) and result.loss_tokens == sum(n - 1 for n in lengths)
    _, clean, _ = _plain(lm, corpus[0])
    with lm.intervene({SITE: Splice(None, skip_first=False)}):
        zeroed = lm.forward(corpus[0])[0]
    with lm.intervene({SITE: Splice(None)}):
        kept = lm.forward(corpus[0])[0]
    assert not torch.allclose(zeroed[0], clean[0], atol=1e-3)  # BOS zeroed too
    torch.testing.assert_close(kept[0], clean[0], atol=1e-5, rtol=1e-5)  # BOS left as it is


@pytest.mark.parametrize(
    ("prompts", "words"),
    [([], "no prompts"), (["The cat", ""], "prompt 1 is empty"), (["a", "b"], "next token to predict")],
)
def test_bad_corpora_raise_one_line(lm: Any, sae: SAE, prompts: list[str], words: str) -> None:
    with pytest.raises(InputError, match=words):
        evaluate(lm, sae, prompts)


def test_an_sae_the_model_cannot_run_is_refused(lm: Any) -> None:
    with pytest.raises(SiteError, match=r"resid_post\.9"):
        evaluate(lm, SAE.random(lm.arch.d_model, 16, "resid_post.9", k=2), CORPUS)
    with pytest.raises(InputError, match="64-wide"):
        evaluate(lm, SAE.random(64, 16, SITE, k=2), CORPUS)
    with pytest.raises(InputError, match="batch_size"):
        evaluate(lm, SAE.random(lm.arch.d_model, 16, SITE, k=2), CORPUS, batch_size=0)
