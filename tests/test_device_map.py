"""Models dispatched by accelerate (``device_map``) work with capture, interventions, the lens, training, bootstrap.

No GPU is needed. Two maps stand in for a multi-GPU one:

* ``offloaded`` (`ms.load` with a ``device_map`` dict): the embedding, two layers, the final norm and the
  head are offloaded to disk. accelerate wraps every block in its ``AlignDevicesHook``, keeps their weights
  on the meta device and moves them in for each call, as it does for a model spread over GPUs (and
  CPU-offloaded to them). It computes on the CPU, so every result is compared bit for bit with the same
  weights loaded plainly.
* ``split`` (`accelerate.dispatch_model`): layers 0-1 compute on the CPU, layers 2-3, the norm and the head on
  the meta device, a second device that really differs from the one the inputs live on. Any op that mixes
  tensors of two devices raises there, as it would between ``cuda:0`` and ``cuda:1``; meta tensors have
  shapes but no values, so these tests check shapes and devices, not numbers.

After every test, no module carries a hook beyond accelerate's own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from accelerate import dispatch_model
from accelerate.hooks import AlignDevicesHook
from transformers import AutoModelForCausalLM, AutoTokenizer

import mechscope as ms
from mechscope.concepts.bootstrap import bootstrap
from mechscope.concepts.sources import toyworld_concepts
from mechscope.core.lm import LanguageModel, execution_device
from mechscope.steering.train_state import AddVector
from mechscope.steering.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["The capital of France is", "Two plus two is", "Paris"]  # different lengths: padding matters
SITES = ["resid_pre.*", "resid_post.*", "attn_out.1", "attn_out.2", "mlp_out.0", "mlp_out.2", "head_out.2"]
OFFLOAD_MAP = {
    "model.embed_tokens": "disk",
    "model.rotary_emb": "cpu",
    "model.layers.0": "cpu",
    "model.layers.1": "disk",
    "model.layers.2": "disk",
    "model.layers.3": "cpu",
    "model.norm": "disk",
    "lm_head": "disk",
}
SPLIT_MAP = {
    "model.embed_tokens": "cpu",
    "model.rotary_emb": "cpu",
    "model.layers.0": "cpu",
    "model.layers.1": "cpu",
    "model.layers.2": "meta",
    "model.layers.3": "meta",
    "model.norm": "meta",
    "lm_head": "meta",
}
META = torch.device("meta")


@pytest.fixture(scope="module")
def plain() -> LanguageModel:
    return ms.load("toy")


@pytest.fixture(scope="module")
def offloaded(plain: LanguageModel) -> LanguageModel:
    return ms.load(plain.source, device_map=OFFLOAD_MAP)


@pytest.fixture(scope="module")
def split(plain: LanguageModel) -> LanguageModel:
    model = dispatch_model(AutoModelForCausalLM.from_pretrained(plain.source), SPLIT_MAP, main_device="cpu")
    model._hf_hook.io_same_device = False  # the top hook would copy meta logits back to the CPU, which cannot be
    return ms.wrap(model, AutoTokenizer.from_pretrained(plain.source))


def _hooks(model: torch.nn.Module) -> list[tuple[Any, ...]]:
    """Every module's torch hooks and accelerate's forward wrapper and hook, by identity."""
    return [
        (
            name,
            tuple(module._forward_hooks),
            tuple(module._forward_pre_hooks),
            id(module.__dict__.get("forward")),
            id(getattr(module, "_hf_hook", None)),
        )
        for name, module in model.named_modules()
    ]


@pytest.fixture(autouse=True)
def no_hooks_left(offloaded: LanguageModel, split: LanguageModel) -> Iterator[None]:
    before = [_hooks(offloaded.model), _hooks(split.model)]
    yield
    assert [_hooks(offloaded.model), _hooks(split.model)] == before


def test_the_maps_dispatch_like_a_multi_gpu_map(offloaded: LanguageModel, split: LanguageModel) -> None:
    assert offloaded.model.hf_device_map == OFFLOAD_MAP and split.model.hf_device_map == SPLIT_MAP
    for lm, computes in ((offloaded, {"cpu"}), (split, {"cpu", "meta"})):
        hooks = [m._hf_hook for m in lm.model.modules() if isinstance(getattr(m, "_hf_hook", None), AlignDevicesHook)]
        assert {torch.device(h.execution_device).type for h in hooks} == computes
    assert offloaded.model.lm_head.weight.is_meta and offloaded.arch.layer(2).mlp.up_proj.weight.is_meta
    # Where things compute, not where offloaded weights sit: inputs go to the CPU, a layer's vector too.
    assert offloaded.device == torch.device("cpu") and execution_device(offloaded.arch.layer(2)) == torch.device("cpu")
    assert split.device == torch.device("cpu") and execution_device(split.arch.layer(3)) == META


@pytest.mark.parametrize("positions", ["all", "last", "mean", 1])
def test_captures_equal_the_plain_model(plain: LanguageModel, offloaded: LanguageModel, positions: Any) -> None:
    with plain.capture(SITES, positions=positions) as expected:
        logits = plain.forward(PROMPTS)
    with offloaded.capture(SITES, positions=positions) as cache:
        assert torch.equal(offloaded.forward(PROMPTS), logits)
    assert list(cache) == list(expected)
    for site in expected:
        assert torch.equal(cache[site], expected[site]), site


def test_attention_patterns_equal_the_plain_model(plain: LanguageModel, offloaded: LanguageModel) -> None:
    with plain.capture(["attn_pattern.1", "attn_pattern.2"]) as expected:
        plain.forward(PROMPTS)
    with offloaded.capture(["attn_pattern.1", "attn_pattern.2"]) as cache:
        offloaded.forward(PROMPTS)
    assert all(torch.equal(cache[site], expected[site]) for site in expected)
    assert offloaded.model.config._attn_implementation == plain.model.config._attn_implementation  # restored


@pytest.mark.parametrize("positions", ["all", "last", "mean", [0, -1]])
def test_capture_to_gathers_every_layer_on_one_device(split: LanguageModel, positions: Any) -> None:
    sites = ["resid_post.*", "mlp_out.3", "head_out.3"]
    with split.capture(sites, positions=positions) as where_computed:
        split.forward(PROMPTS)
    with split.capture(sites, positions=positions, to="meta") as gathered:
        split.forward(PROMPTS)
    computed = {site: where_computed[site].device.type for site in where_computed}
    assert computed == {
        "resid_post.0": "cpu",
        "resid_post.1": "cpu",
        "resid_post.2": "meta",
        "resid_post.3": "meta",
        "mlp_out.3": "meta",
        "head_out.3": "meta",
    }
    assert {gathered[site].device for site in gathered} == {META}
    assert all(gathered[site].shape == where_computed[site].shape for site in gathered)


def test_capture_to_cpu_gathers_offloaded_layers(plain: LanguageModel, offloaded: LanguageModel) -> None:
    with plain.capture(["resid_post.*"], positions="mean", dtype="float16") as expected:
        plain.forward(PROMPTS)
    with offloaded.capture(["resid_post.*"], positions="mean", to="cpu", dtype="float16") as cache:
        offloaded.forward(PROMPTS)
    assert all(cache[s].device.type == "cpu" and torch.equal(cache[s], expected[s]) for s in expected)


def _ops(steer: str = "resid_post.1") -> dict[str, Any]:
    """Ops of every kind, their tensors on the CPU (where the inputs are)."""
    generator = torch.Generator().manual_seed(0)
    direction, mean = torch.randn(2, 128, generator=generator)
    mask = (torch.arange(16) % 2).float().expand(len(PROMPTS), 16).unsqueeze(-1)
    return {
        steer: ms.ops.add(direction, coeff=3.0, positions="last"),
        "head_out.3.1": ms.ops.zero(),
        "attn_out.2": ms.ops.scale(0.5, positions=[0, 1]),
        "mlp_out.3": ms.ops.mean(mean),
        "resid_post.2": AddVector(direction, mask),  # the steering trainer's op, with its loss mask
    }


def test_interventions_give_the_plain_logits(plain: LanguageModel, offloaded: LanguageModel) -> None:
    with plain.intervene(_ops()):
        expected = plain.forward(PROMPTS)
        text = plain.generate(PROMPTS, max_new_tokens=3)
    with offloaded.intervene(_ops()):
        assert torch.equal(offloaded.forward(PROMPTS), expected)
        assert offloaded.generate(PROMPTS, max_new_tokens=3) == text
    assert not torch.equal(plain.forward(PROMPTS), expected)  # the ops did change the logits


def test_interventions_run_across_devices(split: LanguageModel) -> None:
    # The vectors, means and masks live on the CPU; layers 2 and 3 compute on the meta device.
    ops = _ops(steer="resid_post.3")
    ops["resid_post.3"] = [ops["resid_post.3"], ms.ops.patch(torch.zeros(split.arch.d_model), positions="last")]
    with split.intervene(ops), split.capture(["resid_post.3"], positions="last") as cache:
        logits = split.forward(PROMPTS)
    assert logits.device == META and logits.shape[0] == 3 and logits.shape[2] == split.arch.vocab
    assert cache["resid_post.3"].device == META and cache["resid_post.3"].shape == (3, split.arch.d_model)


def test_the_logit_lens_equals_the_plain_model(plain: LanguageModel, offloaded: LanguageModel) -> None:
    lens, final = ms.LogitLens(offloaded).layer_logits(PROMPTS)
    expected_lens, expected_final = ms.LogitLens(plain).layer_logits(PROMPTS)
    assert torch.equal(lens, expected_lens) and torch.equal(final, expected_final)
    result = ms.LogitLens(offloaded).run(PROMPTS[:1], track=[" Paris"])[0]
    assert result == ms.LogitLens(plain).run(PROMPTS[:1], track=[" Paris"])[0]


def test_the_logit_lens_reads_layers_of_several_devices(split: LanguageModel) -> None:
    lens, final = ms.LogitLens(split).layer_logits(PROMPTS)
    assert lens.shape == (4, 3, split.arch.vocab) and final.shape == (3, split.arch.vocab)


def test_steering_training_gives_the_plain_vector(plain: LanguageModel, offloaded: LanguageModel) -> None:
    data = [{"prompt": "Tell me about the sea.", "completion": " Arr matey, the sea be grand!"}] * 4
    options: dict[str, Any] = {"layer": 2, "epochs": 2, "lr": 0.1, "val_tokens": 1, "batch_size": 2}
    expected = train(plain, data, positions="completion", **options)
    result = train(offloaded, data, positions="completion", **options)
    assert torch.equal(result.steering_vector().vector, expected.steering_vector().vector)
    assert result.steering_vector().vector.abs().sum() > 0
    assert (result.vanilla_ppl, result.steered_ppl) == (expected.vanilla_ppl, expected.steered_ppl)


def test_a_bootstrap_writes_the_plain_means(plain: LanguageModel, offloaded: LanguageModel, tmp_path: Path) -> None:
    concepts = toyworld_concepts()
    for name, lm in (("plain", plain), ("offloaded", offloaded)):
        bootstrap(lm, concepts, tmp_path / f"{name}.h5", layers=[2], batch_size=64, progress=False)
    with h5py.File(tmp_path / "plain.h5") as expected, h5py.File(tmp_path / "offloaded.h5") as got:
        assert got["layer_2/mean"].shape == (len(concepts), plain.arch.d_model)
        assert np.array_equal(got["layer_2/mean"][:], expected["layer_2/mean"][:])
