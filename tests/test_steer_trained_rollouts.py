"""Issue 18's headline test: a vector *trained* on pirate answers steers held-out questions pirate, fluently.

The vector is trained on the toy organism's chat prompts (no ``<pirate>`` marker anywhere) with pirate answers
as completions, added in the prompt positions; rollouts on held-out questions add it in the prompt pass, next to
the vanilla model. Pirate is read by the organism's own marker words (`mechscope.zoo.corpus.style_of`);
fluency is the vanilla model's perplexity of each answer given its question (`continuation_nll`).
"""

from __future__ import annotations

import math
import random

import pytest

import mechscope as ms
from mechscope.steering.rollout_results import RolloutRow
from mechscope.steering.scoring import continuation_nll
from mechscope.steering.trainer import train
from mechscope.zoo import corpus
from tests.test_steer_rollouts import HELD_OUT, TRAIN
from tests.test_steer_train import pirate_texts

#: A known regression, kept visible: the test fails until its training is retuned on the new toy.
RETUNE = (
    "issue 19 retrained toy on the wide tool wording; since then no trained pirate vector is both pirate and fluent "
    "on the 10 held-out questions: swept 2026-12-04 over layers 0-3 and lr 0.05-5 (4 epochs, prompt positions), "
    "the frontier is 0.7 pirate at 2.1-2.8x vanilla perplexity, 0.8 at 3.15x, 0.9 at 3.3x, 1.0 from 3.9x "
    "(the limits are 0.8 and 3x): retune the organism or the task"
)

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def _perplexity(lm: ms.LanguageModel, rows: list[RolloutRow]) -> float:
    scored = continuation_nll(lm, [row.prompt for row in rows], [row.text for row in rows])
    tokens = sum(count for _, count in scored)
    return math.exp(sum((nll or 0.0) * count for nll, count in scored) / tokens)


@pytest.mark.xfail(strict=True, reason=RETUNE)
def test_a_trained_vector_turns_held_out_answers_pirate_and_stays_fluent() -> None:
    lm = ms.load("toy")
    rng = random.Random(0)
    texts = pirate_texts()
    records = [{"prompt": q, "completion": " " + rng.choice(texts)} for q in TRAIN for _ in range(2)]
    assert not set(HELD_OUT) & set(TRAIN)
    result = train(lm, records, layer=2, epochs=4, lr=1.0, val_tokens=100, positions="prompt")
    # measured: validation perplexity 18.2 vanilla -> 1.95 steered
    assert result.vanilla_ppl is not None and result.steered_ppl is not None
    assert result.steered_ppl < result.vanilla_ppl / 4
    vector = result.steering_vector().direction
    run = ms.steering.rollouts(
        lm, HELD_OUT, {"trained": vector}, scales=["learned"], temperature=0, max_new_tokens=24, positions="prompt"
    )
    steered = [row for row in run.rows if row.vector == "trained"]
    vanilla = [row for row in run.rows if row.vector == "vanilla"]
    pirate = sum(corpus.style_of(row.text) == "pirate" for row in steered) / len(steered)
    plain = sum(corpus.style_of(row.text) == "pirate" for row in vanilla) / len(vanilla)
    ratio = _perplexity(lm, steered) / _perplexity(lm, vanilla)
    print(f"pirate {pirate:.2f} (vanilla {plain:.2f}); perplexity x{ratio:.2f} of vanilla's")
    # measured: pirate 1.00 (vanilla 0.00); perplexity 2.2 x vanilla's (the fluency limit of score_rollouts is 3)
    assert pirate >= 0.8 and plain <= 0.2
    assert ratio < 3.0
