"""Editing SAE features in a run (`ms.ops.sae_edit`) and the ``mechscope sae steer|ablate|links`` commands.

Every expected value is computed here by hand from the captured site value and the SAE's weights (``x``,
``f = encode(x)``, ``W_dec``), or with a plain `register_forward_hook` on the model's own layer module, never
with the code under test.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor
from typer.testing import CliRunner

import mechscope as ms
from mechscope.cli.main import app
from mechscope.concepts.lenses import Lenses
from mechscope.core.direction import Direction
from mechscope.errors import InputError, InterventionError
from mechscope.sae import SAE, links

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["The capital of France is", "Two plus two is four, and the cat"]
SITE = "resid_post.2"


def _with_biases(sae: SAE, seed: int = 1) -> SAE:
    """Nonzero b_enc and b_dec, so a test would notice a bias added twice or forgotten."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.b_enc.copy_(0.1 * torch.randn(sae.d_sae, generator=generator))
        sae.b_dec.copy_(0.1 * torch.randn(sae.config.d_in, generator=generator))
    return sae


@pytest.fixture(scope="module")
def lm() -> Any:
    return ms.load("toy")


@pytest.fixture(scope="module")
def sae(lm: Any) -> SAE:
    return _with_biases(SAE.random(lm.arch.d_model, 256, SITE, k=8, model=lm.source))


def _site(lm: Any, site: str, ops: dict[str, Any] | None = None) -> tuple[Tensor, Tensor]:
    """The logits and ``site``'s value of a forward pass over PROMPTS, under ``ops`` if given."""
    with lm.intervene(ops or {}), lm.capture([site]) as cache:
        logits = lm.forward(PROMPTS)
    return logits, cache[site]


def _features(sae: SAE, x: Tensor) -> Tensor:
    with torch.no_grad():
        return sae.encode(x.flatten(2) if x.dim() == 4 else x)


def _inactive(features: Tensor) -> int:
    """A feature that is zero at every position of ``features``."""
    return int((features.flatten(0, -2) == 0).all(dim=0).nonzero()[0])


def _active(features: Tensor, count: int) -> list[int]:
    """``count`` features active somewhere, but not everywhere (so some positions must stay untouched)."""
    flat = features.flatten(0, -2) != 0
    partly = (flat.any(dim=0) & ~flat.all(dim=0)).nonzero().flatten()
    return [int(f) for f in partly[:count]]


# --- edits that change nothing are exact ---------------------------------------------------------------------


def test_an_edit_that_changes_no_feature_keeps_the_logits_bit_for_bit(lm: Any, sae: SAE) -> None:
    plain, x = _site(lm, SITE)
    dead = _inactive(_features(sae, x))
    for op in (ms.ops.sae_edit(sae), ms.ops.sae_edit(sae, ablate=[dead]), ms.ops.sae_edit(sae, add={dead: 0.0})):
        edited, _ = _site(lm, SITE, {SITE: op})
        assert torch.equal(edited, plain)


def test_an_edit_that_changes_no_feature_keeps_generation(lm: Any, sae: SAE) -> None:
    plain = lm.generate(PROMPTS, max_new_tokens=6)
    with lm.intervene({SITE: ms.ops.sae_edit(sae)}):
        same = lm.generate(PROMPTS, max_new_tokens=6)
    assert same == plain


# --- ablate, clamp, add ----------------------------------------------------------------------------------------


def test_ablating_features_moves_the_site_by_minus_their_decoder_rows(lm: Any, sae: SAE) -> None:
    _, x = _site(lm, SITE)
    _, before = _site(lm, "resid_post.1")
    f = _features(sae, x)
    chosen = _active(f, 3)
    assert len(chosen) == 3
    _, edited = _site(lm, SITE, {SITE: ms.ops.sae_edit(sae, ablate=chosen)})
    expected = x - torch.einsum("bpf,fd->bpd", f[..., chosen], sae.W_dec.detach()[chosen])
    torch.testing.assert_close(edited, expected, rtol=0, atol=1e-5)
    untouched = (f[..., chosen] == 0).all(dim=-1)  # where none of them is active, nothing moves at all
    assert untouched.any() and torch.equal(edited[untouched], x[untouched])
    _, upstream = _site(lm, "resid_post.1", {SITE: ms.ops.sae_edit(sae, ablate=chosen)})
    assert torch.equal(upstream, before)


def test_ablating_every_feature_keeps_only_the_bias_and_the_error_term(lm: Any, sae: SAE) -> None:
    _, x = _site(lm, SITE)
    f = _features(sae, x)
    _, edited = _site(lm, SITE, {SITE: ms.ops.sae_edit(sae, ablate=range(sae.d_sae))})
    torch.testing.assert_close(edited, x - f @ sae.W_dec.detach(), rtol=0, atol=1e-5)


def test_clamp_and_add_move_the_site_by_the_change_times_the_decoder_row(lm: Any, sae: SAE) -> None:
    _, x = _site(lm, SITE)
    f = _features(sae, x)
    one, two = _active(f, 2)
    row = sae.W_dec.detach()
    _, clamped = _site(lm, SITE, {SITE: ms.ops.sae_edit(sae, clamp={one: 5.0})})
    torch.testing.assert_close(clamped, x + (5.0 - f[..., one : one + 1]) * row[one], rtol=0, atol=1e-5)
    _, added = _site(lm, SITE, {SITE: ms.ops.sae_edit(sae, add={two: -3.0})})
    torch.testing.assert_close(added, x - 3.0 * row[two], rtol=0, atol=1e-5)


def test_last_position_only_touches_each_prompts_last_token(lm: Any, sae: SAE) -> None:
    _, x = _site(lm, SITE)
    feature = _inactive(_features(sae, x))
    _, edited = _site(lm, SITE, {SITE: ms.ops.sae_edit(sae, add={feature: 4.0}, positions="last")})
    mask = lm.tokenize(PROMPTS)["attention_mask"]
    last = mask.shape[1] - 1 if lm.tokenizer.padding_side == "left" else None
    for row in range(len(PROMPTS)):
        end = last if last is not None else int(mask[row].sum()) - 1
        torch.testing.assert_close(edited[row, end], x[row, end] + 4.0 * sae.W_dec.detach()[feature])
        others = [p for p in range(x.shape[1]) if p != end]
        assert torch.equal(edited[row, others], x[row, others])


def test_a_feature_out_of_range_is_refused(sae: SAE) -> None:
    with pytest.raises(InterventionError, match="out of range"):
        ms.ops.sae_edit(sae, ablate=[sae.d_sae])


# --- generation with the KV cache ------------------------------------------------------------------------------


def test_steered_generation_equals_a_plain_forward_hook(lm: Any, sae: SAE) -> None:
    _, x = _site(lm, SITE)
    feature = _inactive(_features(sae, x))  # inactive: f + c - f is exactly c, as the plain hook adds
    vector = 6.0 * sae.W_dec.detach()[feature]

    def hook(module: Any, args: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return (output[0] + vector, *output[1:])
        return output + vector

    handle = lm.arch.layer(2).register_forward_hook(hook)
    try:
        by_hand = lm.generate(PROMPTS, max_new_tokens=8)
        logits_by_hand = lm.forward(PROMPTS)
    finally:
        handle.remove()
    with lm.intervene({SITE: ms.ops.sae_edit(sae, add={feature: 6.0})}):
        steered = lm.generate(PROMPTS, max_new_tokens=8)
        logits = lm.forward(PROMPTS)
    torch.testing.assert_close(logits, logits_by_hand, rtol=0, atol=1e-4)
    assert steered == by_hand
    assert steered != lm.generate(PROMPTS, max_new_tokens=8)  # the steering does something


# --- other sites -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("site", ["head_out.1", "mlp_out.3"])
def test_saes_on_head_out_and_mlp_out(lm: Any, site: str) -> None:
    width = lm.arch.n_heads * lm.arch.head_dim if site.startswith("head_out") else lm.arch.d_model
    sae = _with_biases(SAE.random(width, 192, site, k=6, seed=3))
    plain, x = _site(lm, site)
    f = _features(sae, x)
    same, _ = _site(lm, site, {site: ms.ops.sae_edit(sae)})
    assert torch.equal(same, plain)
    chosen = _active(f, 2)
    changed, edited = _site(lm, site, {site: ms.ops.sae_edit(sae, ablate=chosen)})
    delta = torch.einsum("bpf,fd->bpd", f[..., chosen], sae.W_dec.detach()[chosen]).reshape(x.shape)
    torch.testing.assert_close(edited, x - delta, rtol=0, atol=1e-5)
    assert not torch.equal(changed, plain)


def _hooks(lm: Any) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in lm.model.modules())


def test_hooks_are_removed_after_an_exception_inside_intervene(lm: Any, sae: SAE) -> None:
    plain, _ = _site(lm, SITE)
    hooks = _hooks(lm)
    with pytest.raises(RuntimeError, match="boom"), lm.intervene({SITE: ms.ops.sae_edit(sae, add={0: 50.0})}):
        lm.forward(PROMPTS)
        raise RuntimeError("boom")
    assert _hooks(lm) == hooks
    assert torch.equal(_site(lm, SITE)[0], plain)


# --- cross-links: cosines with known vectors ------------------------------------------------------------------


def _numpy_ranking(weights: np.ndarray, vector: np.ndarray, top: int) -> tuple[list[int], np.ndarray]:
    """Features ranked by |cosine| of their rows of ``weights`` with ``vector`` (dead rows: cosine 0)."""
    norms = np.linalg.norm(weights, axis=1)
    dots = weights @ vector / np.linalg.norm(vector)
    cosines = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), 0.0)
    order = np.argsort(-np.abs(cosines), kind="stable")[:top]
    return [int(i) for i in order], cosines


def test_feature_cosines_match_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(links, "CHUNK", 7)  # several chunks, one of them short
    sae = SAE.random(16, 40, "resid_post.1", k=4, seed=5)
    generator = torch.Generator().manual_seed(9)
    with torch.no_grad():  # an encoder that is not the decoder's transpose, and one dead feature
        sae.W_enc.copy_(torch.randn(16, 40, generator=generator))
        sae.W_dec[13] = 0
    vectors = {"a": torch.randn(16, generator=generator), "b": np.linspace(-1, 2, 16), "c": sae.W_dec[21] * -4}
    result = links.feature_cosines(sae, vectors, top=6, sites={"a": "resid_post.1"})
    dec, enc = sae.W_dec.detach().double().numpy(), sae.W_enc.detach().double().numpy().T
    for name, value in vectors.items():
        v = np.asarray(value.detach() if isinstance(value, Tensor) else value, dtype=np.float64)
        for side, weights in (("decoder", dec), ("encoder", enc)):
            order, cosines = _numpy_ranking(weights, v, 6)
            got = getattr(result.of(name), side)
            assert [item.feature for item in got] == order, (name, side)
            np.testing.assert_allclose([item.cosine for item in got], cosines[order], atol=1e-5)
        best = links.max_cosine(sae, value, side="encoder")
        assert best.feature == int(np.argmax(np.abs(_numpy_ranking(enc, v, 1)[1])))
        matrix = links.cosine_matrix(sae, torch.as_tensor(v, dtype=torch.float32))
        np.testing.assert_allclose(matrix[0].numpy(), _numpy_ranking(dec, v, 1)[1], atol=1e-5)
    assert result.of("c").decoder[0].feature == 21 and result.of("c").decoder[0].cosine == pytest.approx(-1, abs=1e-6)
    assert result.of("a").site == "resid_post.1" and result.of("b").site is None
    assert float(links.cosine_matrix(sae, torch.ones(16))[0, 13]) == 0.0  # the dead feature
    assert links.feature_cosines(sae, {"a": vectors["a"]}, top=500).top == 40  # capped at d_sae


@pytest.mark.parametrize(
    ("vectors", "top", "words"),
    [
        ({}, 3, "at least one vector"),
        ({"w": torch.ones(5)}, 3, "5 entries"),
        ({"z": torch.zeros(16)}, 3, "all zeros"),
        ({"n": torch.full((16,), float("nan"))}, 3, "NaN"),
        ({"a": torch.ones(16)}, 0, "top must be"),
    ],
)
def test_feature_cosines_refuse_bad_vectors(vectors: dict[str, Tensor], top: int, words: str) -> None:
    sae = SAE.random(16, 40, "resid_post.1", k=4)
    with pytest.raises(InputError, match=words):
        links.feature_cosines(sae, vectors, top=top)


# --- the commands ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(lm: Any, sae: SAE, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    root = tmp_path_factory.mktemp("sae-edit")
    folder = ms.sae.save(sae, root / "sae")
    (root / "dirs").mkdir()
    direction = Direction(vector=3.0 * sae.W_dec.detach()[7].clone(), layer=2, model=lm.source)
    direction.save(root / "dirs" / "seven.safetensors")
    other = Direction(vector=torch.ones(lm.arch.d_model), layer=2, model="some/other-model")
    other.save(root / "other.safetensors")
    probe = Direction(vector=-sae.W_enc.detach()[:, 40].clone(), layer=1, model=lm.source, method="probing.probe")
    probe.save(root / "probe.safetensors")
    w = torch.stack([2.0 * sae.W_dec.detach()[11], torch.randn(lm.arch.d_model)], dim=1)
    lens = Lenses(w, torch.zeros(2), torch.zeros(2), ["toy:dog", "toy:cat"], ["dog", "cat"], site=SITE, model=lm.source)
    lens.save(root / "lenses")
    names = {"sae": folder, "dirs": root / "dirs", "other": root / "other.safetensors"}
    yield names | {"probe": root / "probe.safetensors", "lenses": root / "lenses"}


def _run(arguments: list[str]) -> Any:
    return CliRunner().invoke(app, arguments)


def test_cli_steer_json(lm: Any, sae: SAE, files: dict[str, Path]) -> None:
    done = _run(["sae", "steer", "--sae", str(files["sae"]), "--feature", "5", "-c", "6", "-p", PROMPTS[0],
                 "--max-new-tokens", "5", "--json"])  # fmt: skip
    assert done.exit_code == 0, done.output
    data = json.loads(done.stdout)
    assert data["site"] == SITE and data["feature"] == 5
    with lm.intervene({SITE: ms.ops.sae_edit(sae, add={5: 6.0})}):
        steered = lm.generate(PROMPTS[0], max_new_tokens=5)
    assert data["rows"] == [{"prompt": PROMPTS[0], "plain": lm.generate(PROMPTS[0], max_new_tokens=5),
                             "steered": steered}]  # fmt: skip


def test_cli_ablate_json_matches_a_manual_ablation(lm: Any, sae: SAE, files: dict[str, Path]) -> None:
    with lm.capture([SITE]) as cache:
        clean = lm.forward(PROMPTS[0])[0, -1]
    f = _features(sae, cache[SITE])[0]
    chosen = [int(i) for i in f[-1].nonzero().flatten()[:2]]
    removed = torch.einsum("pf,fd->pd", f[:, chosen], sae.W_dec.detach()[chosen])
    handle = lm.arch.layer(2).register_forward_hook(lambda m, a, out: out - removed)
    try:
        ablated = lm.forward(PROMPTS[0])[0, -1]
    finally:
        handle.remove()
    token = lm.token_id(" Paris")
    done = _run(["sae", "ablate", "--sae", str(files["sae"]), "--features", ",".join(map(str, chosen)),
                 "-p", PROMPTS[0], "--target", " Paris", "--json"])  # fmt: skip
    assert done.exit_code == 0, done.output
    data = json.loads(done.stdout)
    assert data["token_id"] == token
    assert data["clean"]["logit"] == pytest.approx(float(clean[token]), abs=1e-5)
    assert data["clean"]["prob"] == pytest.approx(float(torch.softmax(clean, -1)[token]), abs=1e-6)
    assert data["ablated"]["logit"] == pytest.approx(float(ablated[token]), abs=1e-4)
    assert data["ablated"]["logit"] != pytest.approx(data["clean"]["logit"], abs=1e-3)
    assert [row["feature"] for row in data["features"]] == chosen
    assert [row["activation"] for row in data["features"]] == pytest.approx([float(f[-1, c]) for c in chosen])


def test_cli_links_json_finds_the_feature_a_direction_copies(sae: SAE, files: dict[str, Path]) -> None:
    done = _run(["sae", "links", "--sae", str(files["sae"]), "--directions", str(files["dirs"]), "--top", "4",
                 "--json"])  # fmt: skip
    assert done.exit_code == 0, done.output
    data = json.loads(done.stdout)
    (links,) = data["vectors"]
    assert links["name"] == "direction:seven" and links["site"] == SITE
    assert links["decoder"][0]["feature"] == 7 and links["decoder"][0]["cosine"] == pytest.approx(1.0, abs=1e-5)
    assert len(links["decoder"]) == len(links["encoder"]) == 4
    table = _run(["sae", "links", "--sae", str(files["sae"]), "--directions", str(files["dirs"])])
    assert table.exit_code == 0 and "direction:seven" in table.stdout and "+1.000" in table.stdout


def test_cli_links_reads_probes_and_lenses(files: dict[str, Path]) -> None:
    done = _run(["sae", "links", "--sae", str(files["sae"]), "--probes", str(files["probe"]), "--lenses",
                 str(files["lenses"]), "--directions", str(files["dirs"]), "--json"])  # fmt: skip
    assert done.exit_code == 0, done.output
    found = {row["name"]: row for row in json.loads(done.stdout)["vectors"]}
    assert list(found) == ["direction:seven", "probe:probe", "lens:toy:dog", "lens:toy:cat"]
    assert found["probe:probe"]["site"] == "resid_post.1"  # recorded: not the SAE's site
    assert found["probe:probe"]["encoder"][0] == {"feature": 40, "cosine": pytest.approx(-1.0, abs=1e-5)}
    assert found["lens:toy:dog"]["decoder"][0] == {"feature": 11, "cosine": pytest.approx(1.0, abs=1e-5)}


@pytest.mark.parametrize(
    ("case", "arguments", "words"),
    [
        ("feature-range", ["sae", "steer", "--feature", "256", "-c", "2", "-p", "x"], "out of range"),
        ("features-empty", ["sae", "ablate", "--features", " , ", "-p", "x", "--target", " Paris"], "empty"),
        ("features-text", ["sae", "ablate", "--features", "1,b", "-p", "x", "--target", " Paris"], "--features"),
        ("features-range", ["sae", "ablate", "--features", "3,999", "-p", "x", "--target", " Paris"], "out of range"),
        ("target-tokens", ["sae", "ablate", "--features", "3", "-p", "x", "--target", " France is"], "3 tokens"),
        ("other-model", ["sae", "ablate", "-m", "toy-moe", "--features", "3", "-p", "x", "--target", " Paris"],
         "--force"),
        ("positions", ["sae", "steer", "--feature", "1", "-c", "2", "-p", "x", "--positions", "mean"], "positions"),
        ("coefficient", ["sae", "steer", "--feature", "1", "-c", "nan", "-p", "x"], "finite"),
        ("links-nothing", ["sae", "links"], "--directions"),
        ("links-other-model", ["sae", "links", "--directions", "{other}"], "--force"),
        ("links-missing", ["sae", "links", "--directions", "{sae}/nope.safetensors"], "nope"),
        ("sae-missing", ["sae", "steer", "--sae", "{sae}/../nothing", "--feature", "1", "-c", "2", "-p", "x"],
         "no SAE"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_exit_2(case: str, arguments: list[str], words: str, files: dict[str, Path]) -> None:
    filled = [part.format(**{k: str(v) for k, v in files.items()}) for part in arguments]
    if "--sae" not in filled:
        filled[2:2] = ["--sae", str(files["sae"])]
    done = _run(filled)
    assert done.exit_code == 2, (case, done.output)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mechscope: error: "), done.stderr
    assert words in lines[0], lines[0]


def test_force_runs_an_sae_made_for_another_model(files: dict[str, Path]) -> None:
    done = _run(["sae", "ablate", "-m", "toy-moe", "--sae", str(files["sae"]), "--features", "3", "-p", "x",
                 "--target", " Paris", "--force", "--json"])  # fmt: skip
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["features"][0]["feature"] == 3


@pytest.mark.parametrize("command", ["steer", "ablate"])
def test_the_model_commands_take_the_model_option_group(command: str) -> None:
    done = _run(["sae", command, "--help"])
    assert done.exit_code == 0, done.output
    for option in ("--model", "--dtype", "--device", "--device-map", "--sae", "--force", "--json"):
        assert option in done.stdout, option
