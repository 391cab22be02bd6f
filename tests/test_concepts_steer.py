"""Concept steering on `toy`: a concept's direction (its mean minus the mean of all) makes its facts likelier.

Measured (toy, toyworld concepts, stage 1 with three toy templates per concept, layer 1, coefficient 2):
steering toward an animal raises the probability of its sound on prompts about other animals for 42 of
48 animals, median ×48; stage-0 directions (the bare term only) do not (21 of 48, median ×0.5), and
neither do random directions of the same lengths.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import mechscope as ms
from mechscope.concepts import refine
from mechscope.concepts.bootstrap import bootstrap
from mechscope.concepts.encyclopedia import Encyclopedia
from mechscope.concepts.sources import toyworld_concepts
from mechscope.concepts.steer import concept_direction
from mechscope.core.direction import Direction
from mechscope.errors import InputError
from mechscope.steering.generate import steering_ops
from mechscope.toyworld.facts import SOUND

pytestmark = pytest.mark.usefixtures("one_thread")
LAYER, COEFF = 1, 2.0


@pytest.fixture(scope="module")
def toy() -> ms.LanguageModel:
    return ms.load("toy")


@pytest.fixture(scope="module")
def refined(toy: ms.LanguageModel, tmp_path_factory: pytest.TempPathFactory) -> Encyclopedia:
    out = tmp_path_factory.mktemp("steer") / "enc.h5"
    enc = bootstrap(toy, toyworld_concepts(), out, layers=[0, 1, 2], progress=False)
    return refine.refine(toy, out, refine.template_contexts(enc, range(len(enc)), 3, held_out=1), 1)


def _sound_probability(lm: ms.LanguageModel, prompts: list[str], sound: str, direction: Direction | None) -> float:
    token = lm.token_id(sound)
    with torch.no_grad():
        if direction is None:
            logits = lm.forward(prompts)
        else:
            with lm.intervene(steering_ops(lm, direction, COEFF)):  # type: ignore[arg-type]
                logits = lm.forward(prompts)
    return float(logits[:, -1].float().softmax(-1)[:, token].mean())


def _effects(lm: ms.LanguageModel, make: object) -> tuple[float, float]:
    """(fraction of animals whose sound got likelier, median ratio) for directions from ``make(animal)``."""
    ups, ratios = [], []
    for animal, sound in SOUND.facts:
        others = [a for a, s in SOUND.facts if s != sound][:3]
        prompts = [f"The sound a {o} makes is" for o in others] + ["Listen! The animal says"]
        plain = _sound_probability(lm, prompts, f" {sound}", None)
        steered = _sound_probability(lm, prompts, f" {sound}", make(animal))  # type: ignore[operator]
        ups.append(steered > plain)
        ratios.append(steered / plain)
    return float(np.mean(ups)), float(np.median(ratios))


def test_steering_toward_an_animal_makes_its_sound_likelier(toy: ms.LanguageModel, refined: Encyclopedia) -> None:
    share, ratio = _effects(toy, lambda animal: concept_direction(refined, f"toy:animal:{animal}", LAYER))
    assert share >= 0.75 and ratio >= 5, (share, ratio)
    generator = torch.Generator().manual_seed(0)

    def random_direction(animal: str) -> Direction:
        real = concept_direction(refined, f"toy:animal:{animal}", LAYER)
        noise = torch.randn(real.vector.shape, generator=generator)
        return Direction(noise / noise.norm() * real.vector.norm(), LAYER, model=real.model)

    control_share, control_ratio = _effects(toy, random_direction)
    assert control_share < share - 0.2 and control_ratio < ratio / 3, (control_share, control_ratio)


def test_a_direction_from_a_lens_weight_keeps_the_mean_difference_length(refined: Encyclopedia) -> None:
    mean = concept_direction(refined, "toy:animal:cat", 2)
    weight = np.random.default_rng(0).normal(size=128)
    lens = concept_direction(refined, "toy:animal:cat", 2, lens_weight=weight)
    assert lens.method == "concept_lens" and lens.site_name == "resid_post.2"
    assert torch.isclose(lens.vector.norm(), mean.vector.norm(), rtol=1e-5)
    cosine = (
        float(lens.vector @ torch.tensor(weight, dtype=torch.float32))
        / float(lens.vector.norm())
        / np.linalg.norm(weight)
    )
    assert cosine > 0.9999
    with pytest.raises(InputError, match="width 3"):
        concept_direction(refined, "toy:animal:cat", 2, lens_weight=np.ones(3))
    with pytest.raises(InputError, match="not in this encyclopedia"):
        concept_direction(refined, "toy:animal:cat", 3)
    with pytest.raises(InputError, match="no concept 'toy:animal:unicorn'"):
        concept_direction(refined, "toy:animal:unicorn", 2)


def test_the_direction_is_the_mean_minus_the_mean_of_means(refined: Encyclopedia, tmp_path: Path) -> None:
    direction = concept_direction(refined, "toy:country:France", -2)  # toy has 4 layers: -2 is layer 2
    means = refined.mean(2).astype(np.float64)
    k = refined.concepts.index("toy:country:France")
    np.testing.assert_allclose(direction.vector.numpy(), means[k] - means.mean(0), rtol=1e-5, atol=1e-5)
    direction.save(tmp_path / "france.safetensors")
    assert Direction.load(tmp_path / "france.safetensors").meta["concept"] == "toy:country:France"
