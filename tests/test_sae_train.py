"""`mechscope.sae.train` and its activation stream: the method's rules, checked one by one.

The held-out numbers are recomputed independently: each document alone (no padding) through the plain
transformers model with a `register_forward_hook` on the decoder layer's own module, the SAE applied with
numpy from its saved weights, the metrics numpy sums.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import mechscope as ms
from mechscope.cli.main import app
from mechscope.errors import InputError, SiteError
from mechscope.sae import SAE
from mechscope.sae.activations import ActivationSource, StreamState, geometric_median
from mechscope.sae.formats import load
from mechscope.sae.train import STATE_NAME, _Run, lr_factor, train_sae
from mechscope.zoo.corpus import text_documents

pytestmark = pytest.mark.usefixtures("one_thread")

SITE, LAYER = "resid_post.2", 2
DOCS = [d.text for d in text_documents(5, 400)]  # ≈ 6,800 tokens once each BOS is dropped
HELD = [d.text for d in text_documents(6, 60)]
SMALL = {"width": 128, "tokens": 16_384, "batch_size": 512, "buffer_tokens": 4096, "eval_corpus": HELD}


@pytest.fixture(scope="module")
def lm() -> Any:
    return ms.load("toy")


@pytest.fixture(scope="module")
def topk(lm: Any) -> Any:
    return train_sae(lm, SITE, DOCS, k=8, log_every=1, **SMALL)  # type: ignore[arg-type]


def _hidden(lm: Any, prompt: str) -> np.ndarray:
    """The layer's output for one unpadded prompt, BOS left out, from the plain model."""
    ids = lm.tokenizer(prompt, return_tensors="pt")["input_ids"]
    seen: list[torch.Tensor] = []
    handle = lm.model.model.layers[LAYER].register_forward_hook(
        lambda module, args, output: seen.append((output[0] if isinstance(output, tuple) else output).detach())
    )
    try:
        with torch.no_grad():
            lm.model(input_ids=ids)
    finally:
        handle.remove()
    return seen[0][0, 1:].double().numpy()


def _numpy_stats(sae: SAE, xs: np.ndarray) -> dict[str, float]:
    """The SAE (input scaling, b_dec, TopK or ReLU, the inverse scaling) and its metrics, in numpy."""
    w_enc, b_enc = sae.W_enc.detach().double().numpy(), sae.b_enc.detach().double().numpy()
    w_dec, b_dec = sae.W_dec.detach().double().numpy(), sae.b_dec.detach().double().numpy()
    scale = sae.config.norm_scaling_factor or 1.0
    pre = (xs * scale - b_dec) @ w_enc + b_enc
    if sae.config.architecture == "topk":
        cut = np.sort(pre, axis=-1)[:, -int(sae.config.k or 1)][:, None]
        pre = np.where(pre >= cut, pre, 0.0)
    f = np.maximum(pre, 0.0)
    x_hat = (f @ w_dec + b_dec) / scale
    error = ((xs - x_hat) ** 2).sum()
    return {
        "mse": error / xs.size,
        "explained_variance": 1 - error / ((xs - xs.mean(axis=0)) ** 2).sum(),
        "l0": (f > 0).sum(axis=1).mean(),
        "never_active_fraction": ((f > 0).sum(axis=0) == 0).mean(),
        "tokens": len(xs),
    }


# --- the stream --------------------------------------------------------------------------------------------


def test_one_pass_hands_out_every_token_once(lm: Any) -> None:
    docs = DOCS[:40]
    reference = np.concatenate([_hidden(lm, doc) for doc in docs])
    ordered = ActivationSource(lm, SITE, docs, buffer_tokens=100, forward_batch_size=7, shuffle=False, cycle=False)
    got = torch.cat(list(ordered.batches(64))).double().numpy()
    assert got.shape == reference.shape  # pads and BOS dropped, nothing lost at block ends
    np.testing.assert_allclose(got, reference, atol=2e-5)
    shuffled = ActivationSource(lm, SITE, docs, buffer_tokens=100, forward_batch_size=7, cycle=False)
    mixed = torch.cat(list(shuffled.batches(64))).double().numpy()
    assert not np.allclose(mixed, got, atol=1e-3)  # really shuffled ...
    np.testing.assert_allclose(np.sort(mixed.sum(axis=1)), np.sort(got.sum(axis=1)), atol=1e-3)  # ... same tokens


def test_stream_resumes_at_its_state(lm: Any) -> None:
    source = ActivationSource(lm, SITE, DOCS[:60], buffer_tokens=300, seed=4)
    stream = source.batches(128)
    first = [next(stream) for _ in range(5)]
    state = source.state()
    rest = [next(stream) for _ in range(8)]  # crosses blocks and a pass over the corpus
    again = ActivationSource(lm, SITE, DOCS[:60], buffer_tokens=300, seed=4).batches(128, state=state)
    for expected in rest:
        assert torch.equal(next(again), expected)
    assert all(batch.shape == (128, 128) for batch in first)


def test_stream_errors(lm: Any) -> None:
    with pytest.raises(InputError, match="corpus is empty"):
        ActivationSource(lm, SITE, [])
    with pytest.raises(SiteError):
        ActivationSource(lm, "resid_post.9", DOCS)
    with pytest.raises(InputError, match="empty"):
        next(ActivationSource(lm, SITE, ["", "a"], buffer_tokens=16).batches(8))


def test_geometric_median_against_weiszfeld_in_numpy() -> None:
    points = torch.randn(200, 5, generator=torch.Generator().manual_seed(0)).double()
    points[:10] += 50  # outliers pull the mean, not the median
    median = geometric_median(points).numpy()
    data = points.numpy()
    # the median is where the gradient of Σ‖p - m‖ vanishes
    pull = ((data - median) / np.linalg.norm(data - median, axis=1, keepdims=True)).sum(axis=0)
    assert np.linalg.norm(pull) < 1e-3 * len(data)
    assert np.linalg.norm(median) < np.linalg.norm(data.mean(axis=0))


# --- the method ---------------------------------------------------------------------------------------------


def test_lr_warms_up_and_decays() -> None:
    factors = [lr_factor(step, 100, 0.05, 0.2) for step in range(100)]
    assert factors[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert factors[5:80] == [1.0] * 75
    assert factors[80:] == pytest.approx([(100 - s) / 21 for s in range(80, 100)])
    assert all(a >= b for a, b in itertools.pairwise(factors[80:]))


def test_topk_trains_keeps_unit_decoder_rows_and_k_features(lm: Any, topk: Any) -> None:
    sae, result = topk
    losses = [record.loss for record in result.history]
    assert result.steps == 32 and len(losses) == 32
    assert np.mean(losses[-4:]) < 0.5 * np.mean(losses[:4])  # measured: ≈ 0.25 of the start
    assert torch.allclose(sae.W_dec.detach().norm(dim=1), torch.ones(128), atol=1e-5)
    f = sae.encode(torch.from_numpy(np.concatenate([_hidden(lm, doc) for doc in HELD[:10]])).float())
    active = (f > 0).sum(dim=-1)
    assert int(active.max()) <= 8 and float(active.float().mean()) >= 7.5
    assert [record.lr for record in result.history][:2] == pytest.approx([result.lr / 2, result.lr])


def test_held_out_numbers_match_numpy(lm: Any, topk: Any) -> None:
    sae, result = topk
    xs = np.concatenate([_hidden(lm, doc) for doc in HELD])
    expected = _numpy_stats(sae, xs)
    final = result.final
    assert final.tokens == expected["tokens"]
    assert final.explained_variance == pytest.approx(expected["explained_variance"], abs=1e-5)
    assert final.mse == pytest.approx(expected["mse"], rel=1e-4)
    assert final.l0 == pytest.approx(expected["l0"], abs=1e-3)
    assert final.never_active_fraction == pytest.approx(expected["never_active_fraction"])
    assert final.explained_variance > 0.6  # measured: 0.74 after 32 steps of 512 tokens


def test_input_scale_and_config_are_recorded(lm: Any, topk: Any) -> None:
    sae, result = topk
    xs = np.concatenate([_hidden(lm, doc) for doc in DOCS[:60]])
    # the scale makes the mean norm √d_in (measured on the first sample, which is DOCS' tokens)
    mean_norm = np.linalg.norm(xs, axis=1).mean()
    assert sae.config.norm_scaling_factor == pytest.approx(math.sqrt(128) / mean_norm, rel=0.1)
    assert sae.config.normalize_activations == "expected_average_only_in" and sae.config.model == lm.source
    recorded = sae.config.extra["mechscope_training"]
    assert recorded["k"] == 8 and recorded["steps_done"] == 32 and recorded["corpus"]["documents"] == len(DOCS)
    assert result.tokens == 32 * 512 and result.tokens_per_s > 0


def test_relu_l1_trains_sparse(lm: Any) -> None:
    sae, result = train_sae(lm, SITE, DOCS, l1_coeff=5.0, **(SMALL | {"tokens": 32_768, "batch_size": 256}))
    assert sae.config.architecture == "standard" and result.l1_coeff == 5.0
    assert torch.allclose(sae.W_dec.detach().norm(dim=1), torch.ones(128), atol=1e-5)
    assert result.history[-1].l0 < 0.5 * result.history[0].l0  # the L1 penalty sparsifies
    assert result.final.explained_variance > 0.5


def test_resampling_reinitialises_dead_features(lm: Any) -> None:
    """Bricken et al.: a dead feature's decoder row becomes a (centred, unit) batch token, its encoder
    column the same at 0.2 × the live columns' mean norm, its bias and Adam moments zero."""
    source = ActivationSource(lm, SITE, DOCS, buffer_tokens=2048)
    settings: dict[str, Any] = {
        "site": SITE, "architecture": "standard", "width": 64, "k": None, "l1_coeff": 1.0, "tokens": 4096,
        "batch_size": 256, "warmup": 0.0, "decay": 0.0, "seed": 0, "aux_coeff": 0.0, "resample": True,
        "normalize": True, "buffer_tokens": 2048, "forward_batch_size": 32, "skip_first": True, "eval_tokens": 100,
        "checkpoint_every": None, "progress": False, "resume": False, "log_every": None, "lr": 1e-3, "aux_k": 8,
        "dead_tokens": 512, "resample_every": 4,
    }  # fmt: skip
    run = _Run(lm, source, settings, None, None, None)
    x = next(source.batches(256)) * run.scale
    run._update(x)
    dead = torch.tensor([3, 17, 40])
    run.since[:] = 0
    run.since[dead] = 10_000
    live_norm = float(run.sae.W_enc.detach()[:, run.since < 512].norm(dim=0).mean())
    squared = torch.rand(256, generator=torch.Generator().manual_seed(1))
    run._resample(x, squared)
    sae = run.sae
    rows = sae.W_dec.detach()[dead]
    assert torch.allclose(rows.norm(dim=1), torch.ones(3), atol=1e-6)
    centred = x - sae.b_dec.detach()
    centred = centred / centred.norm(dim=1, keepdim=True)
    for row in rows:  # each new row is one of the batch's tokens
        assert float((centred @ row).max()) == pytest.approx(1.0, abs=1e-5)
    assert torch.allclose(sae.W_enc.detach()[:, dead].norm(dim=0), torch.full((3,), 0.2 * live_norm), rtol=1e-4)
    assert torch.all(sae.b_enc.detach()[dead] == 0) and run.resampled == 3 and int(run.since.max()) == 0
    for param in (sae.W_dec, sae.b_enc):
        assert torch.all(run.optimizer.state[param]["exp_avg"][dead] == 0)


def test_auxk_gives_dead_features_a_gradient(lm: Any) -> None:
    source = ActivationSource(lm, SITE, DOCS, buffer_tokens=2048)
    base: dict[str, Any] = {
        "site": SITE, "architecture": "topk", "width": 512, "k": 4, "l1_coeff": None, "tokens": 4096,
        "batch_size": 256, "warmup": 0.0, "decay": 0.0, "seed": 0, "resample": False, "normalize": True,
        "buffer_tokens": 2048, "forward_batch_size": 32, "skip_first": True, "eval_tokens": 100,
        "checkpoint_every": None, "progress": False, "resume": False, "log_every": None, "lr": 1e-3, "aux_k": 8,
        "dead_tokens": 512, "resample_every": 4,
    }  # fmt: skip
    grads = {}
    for coeff in (0.0, 1 / 32):
        run = _Run(lm, source, base | {"aux_coeff": coeff}, None, None, None)
        x = next(source.batches(256)) * run.scale
        _, f, _, _ = run._loss(x, torch.zeros(512, dtype=torch.bool))
        dead = ~(f > 0).any(dim=0)  # chosen for no token of the batch, as a dead feature is not
        assert int(dead.sum()) > 100
        run.sae.zero_grad()
        run._loss(x, dead)[0].backward()  # type: ignore[no-untyped-call]
        grads[coeff] = run.sae.W_enc.grad[:, dead].abs().sum()  # type: ignore[index]
    assert float(grads[0.0]) == 0.0  # TopK alone never trains a feature that is not chosen
    assert float(grads[1 / 32]) > 0.0


# --- checkpoints, resume, errors ----------------------------------------------------------------------------


class _Stop(Exception):
    pass


@pytest.mark.parametrize("arch", [{"k": 8}, {"l1_coeff": 2.0, "resample_every": 3, "dead_tokens": 256}])
def test_resume_ends_where_an_uninterrupted_run_does(lm: Any, tmp_path: Path, arch: dict[str, Any]) -> None:
    settings = SMALL | arch | {"tokens": 8192, "batch_size": 512, "buffer_tokens": 1500, "checkpoint_every": 3}
    whole, whole_result = train_sae(lm, SITE, DOCS, out=tmp_path / "whole", **settings)

    def stop(record: Any) -> None:
        if record.step == 7:  # after the checkpoint of step 6, one step lost
            raise _Stop

    with pytest.raises(_Stop):
        train_sae(lm, SITE, DOCS, out=tmp_path / "cut", log_every=1, callback=stop, **settings)
    assert torch.load(tmp_path / "cut" / STATE_NAME, weights_only=True)["step"] == 6
    resumed, result = train_sae(lm, SITE, DOCS, out=tmp_path / "cut", resume=True, **settings)
    assert result.resumed_at_step == 6 and result.steps == whole_result.steps == 16
    for name, tensor in whole.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], tensor), name
    assert result.final == whole_result.final and result.resampled == whole_result.resampled
    saved = load(tmp_path / "cut", lm)
    assert torch.equal(saved.W_dec, resumed.W_dec) and saved.config.k == resumed.config.k


def test_bad_arguments_are_one_line_errors(lm: Any, tmp_path: Path) -> None:
    cases = [
        ({"width": 64}, "exactly one"),
        ({"width": 64, "k": 4, "l1_coeff": 1.0}, "exactly one"),
        ({"width": 64, "k": 65}, "between 1 and the width"),
        ({"width": 64, "k": 4, "tokens": 100, "batch_size": 512}, "below one batch"),
        ({"width": 64, "k": 4, "lr": -1.0}, "learning rate"),
        ({"width": 64, "k": 4, "warmup": 0.7, "decay": 0.5}, "warmup and decay"),
        ({"width": 64, "k": 4, "resume": True}, "resume needs"),
    ]
    for kwargs, message in cases:
        with pytest.raises(InputError, match=message):
            train_sae(lm, SITE, DOCS, **kwargs)
    with pytest.raises(SiteError):
        train_sae(lm, "resid_post.7", DOCS, width=64, k=4)
    with pytest.raises(InputError, match="corpus is empty"):
        train_sae(lm, SITE, [], width=64, k=4)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        train_sae(lm, SITE, DOCS, width=64, k=4, out=tmp_path / "file")


def test_a_run_folder_is_not_overwritten_and_resumes_only_itself(lm: Any, tmp_path: Path) -> None:
    settings = {"width": 64, "k": 4, "tokens": 2048, "batch_size": 512, "buffer_tokens": 1024, "eval_corpus": HELD}
    train_sae(lm, SITE, DOCS, out=tmp_path / "run", **settings)  # type: ignore[arg-type]
    before = (tmp_path / "run" / "sae_weights.safetensors").read_bytes()
    with pytest.raises(InputError, match="already holds an SAE"):
        train_sae(lm, SITE, DOCS, out=tmp_path / "run", **settings)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="other k"):
        train_sae(lm, SITE, DOCS, out=tmp_path / "run", resume=True, **(settings | {"k": 8}))  # type: ignore[arg-type]
    with pytest.raises(InputError, match="other corpus"):
        train_sae(lm, SITE, DOCS[:-1], out=tmp_path / "run", resume=True, **settings)  # type: ignore[arg-type]
    assert (tmp_path / "run" / "sae_weights.safetensors").read_bytes() == before
    # a finished run resumed is the same SAE again
    _, result = train_sae(lm, SITE, DOCS, out=tmp_path / "run", resume=True, **settings)  # type: ignore[arg-type]
    assert result.resumed_at_step == 4 and (tmp_path / "run" / "sae_weights.safetensors").read_bytes() == before
    (tmp_path / "run" / STATE_NAME).write_bytes(b"not a torch file")
    with pytest.raises(InputError, match="not a readable training state"):
        train_sae(lm, SITE, DOCS, out=tmp_path / "run", resume=True, **settings)  # type: ignore[arg-type]


def test_stream_state_is_plain_data() -> None:
    state = StreamState(block=2, cursor=40, offset=1, carry=torch.zeros(3, 4))
    assert state.block == 2 and state.carry is not None and state.carry.shape == (3, 4)


# --- the CLI ------------------------------------------------------------------------------------------------


def test_cli_trains_resumes_and_reports(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(DOCS) + "\n")
    args = ["sae", "train", "-m", "toy", "--site", SITE, "--width", "64", "--k", "4", "--tokens", "2K"]
    args += ["--batch-size", "512", "--prompts", str(corpus), "-o", str(tmp_path / "sae")]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["steps"] == 3 and report["tokens"] == 1536 and report["architecture"] == "topk"
    assert json.loads((tmp_path / "sae" / "train_result.json").read_text())["final"] == report["final"]
    again = CliRunner().invoke(app, [*args, "--resume"])
    assert again.exit_code == 0 and "resumed at step 3" in again.output and "explained variance" in again.output
    evaluated = CliRunner().invoke(app, ["sae", "evaluate", "-m", "toy", "--sae", str(tmp_path / "sae"), "--json"])
    assert evaluated.exit_code == 0 and json.loads(evaluated.stdout)["d_sae"] == 64


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--k", "4", "--l1", "1"], "exactly one"),
        (["--k", "4", "--tokens", "lots"], "--tokens wants a count"),
        (["--k", "4", "--tokens", "0"], "--tokens must be a positive count"),
        (["--k", "4", "--site", "resid_post.9"], "layer 9 is out of range"),
    ],
)
def test_cli_errors(tmp_path: Path, extra: list[str], message: str) -> None:
    args = ["sae", "train", "-m", "toy", "--site", SITE, "--width", "64", "-o", str(tmp_path / "s"), *extra]
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0 and message in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "s").exists()


def test_a_layer_counted_from_the_end_is_stored_absolute(lm: Any, tmp_path: Path) -> None:
    tiny = {"width": 32, "k": 4, "tokens": 1024, "batch_size": 256, "buffer_tokens": 1024, "eval_tokens": 256}
    sae, _ = train_sae(lm, "resid_post.-2", DOCS[:50], eval_corpus=HELD[:5], **tiny)  # type: ignore[arg-type]
    assert sae.site == "resid_post.2"  # so that it saves, reloads and compares like one named resid_post.2
    folder = ms.sae.save(sae, tmp_path / "sae")
    assert ms.sae.load(folder).site == "resid_post.2"
    with pytest.raises(SiteError, match="out of range"):
        train_sae(lm, "resid_post.-9", DOCS[:50], **tiny)  # type: ignore[arg-type]
