"""Results of steered rollouts and of their evaluation (pydantic, torch-free), and the files they read and write.

One `RolloutRow` per (question, vector, scale, rollout). The baselines are rows too: vector ``"vanilla"``
(the question as given, no steering) and ``"prompted"`` (the persona prefix actually present in the prompt,
no steering); their ``scale`` is ``""``. A row's ``condition`` is ``vanilla``, ``prompted`` or
``NAME@SCALE`` (``pirate@learned``, ``pirate@4``).

Examples:
    >>> row = RolloutRow(question_id=0, question="Hi.", prompt="Hi.", vector="pirate", scale="4",
    ...                  coefficient=4.0, added_norm=2.0, rollout=0, seed=7, text=" Arr!")
    >>> row.condition
    'pirate@4'
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from mechscope.errors import InputError
from mechscope.storage.tables import ArrowType, write_table

BASELINES = ("vanilla", "prompted")

ROW_TYPES: dict[str, ArrowType] = {
    "question_id": "int",
    "question": "string",
    "prompt": "string",
    "vector": "string",
    "scale": "string",
    "coefficient": "float",
    "added_norm": "float",
    "rollout": "int",
    "seed": "int",
    "text": "string",
}
SCORE_TYPES: dict[str, ArrowType] = {
    **ROW_TYPES,
    "condition": "string",
    "score": "float",
    "nll": "float",
    "tokens": "int",
    "judge": "float",
}


class RolloutRow(BaseModel):
    """One generated continuation.

    Attributes:
        prompt: the exact text the model was given (system prompt, persona prefix and question).
        scale: ``learned``, the number as written (``-4``), or ``""`` for a baseline.
        coefficient: what multiplies the vector as stored (1 for ``learned``; ``s`` for a raw scale ``s``;
            ``s * reference_norm / ||vector||`` for a normalised one; 0 for a baseline).
        added_norm: the norm of the vector actually added (``|coefficient| * ||vector||``).
        seed: the seed set (``torch.manual_seed``) before the batched ``generate`` call that made this row.
    """

    question_id: int
    question: str
    prompt: str
    vector: str
    scale: str
    coefficient: float
    added_norm: float
    rollout: int
    seed: int
    text: str

    @property
    def condition(self) -> str:
        """``vanilla``, ``prompted`` or ``NAME@SCALE``."""
        return self.vector if self.vector in BASELINES else f"{self.vector}@{self.scale}"


class Rollouts(BaseModel):
    """Every rollout of one run, with the settings that made them."""

    model: str
    dataset: str = "questions"
    rows: list[RolloutRow]
    settings: dict[str, Any] = Field(default_factory=dict)
    reference_norms: dict[str, float] = Field(default_factory=dict)

    @property
    def conditions(self) -> list[str]:
        """The conditions in first-seen order (baselines first)."""
        return list(dict.fromkeys(row.condition for row in self.rows))

    def to_parquet(self, path: str | os.PathLike[str]) -> Path:
        """One row per (question, vector, scale, rollout), via `mechscope.storage.tables.write_table`."""
        rows = [row.model_dump() for row in self.rows]
        return write_table(path, rows, list(ROW_TYPES), types=ROW_TYPES)


class ScoredRow(RolloutRow):
    """A rollout with its classifier score (P(trait)), fluency and optional judge score.

    Attributes:
        nll: mean per-token negative log-likelihood of ``text`` under the vanilla model given ``prompt``
            (None when not measured or the text is empty); its perplexity is ``exp(nll)``.
        tokens: how many tokens ``nll`` averages over.
        judge: the judge's number, or None (not asked, or it refused).
    """

    score: float
    nll: float | None = None
    tokens: int = 0
    judge: float | None = None


class Interval(BaseModel):
    """A mean with a percentile-bootstrap confidence interval over questions."""

    mean: float
    low: float
    high: float


class QuestionSummary(BaseModel):
    """One question under one condition: means over its rollouts."""

    question_id: int
    question: str
    condition: str
    rollouts: int
    score: float
    nll: float | None = None
    judge: float | None = None


class ConditionSummary(BaseModel):
    """One condition over every question of the dataset.

    Attributes:
        score: mean classifier score (per-question means, then their mean) with its 95% CI.
        delta_vs_vanilla: mean per-question difference from vanilla, with its paired CI.
        nll: mean per-row NLL of the text under the vanilla model; ``perplexity`` is its exp.
        perplexity_ratio: this condition's perplexity over vanilla's (1 = as fluent as vanilla).
        fluent: ``perplexity_ratio <= max_perplexity_ratio`` (None when fluency was not measured).
        success: the delta CI is above 0 and the text is fluent; a vector that only breaks the text fails.
    """

    condition: str
    vector: str
    scale: str
    questions: int
    rows: int
    score: Interval
    delta_vs_vanilla: Interval | None = None
    nll: float | None = None
    perplexity: float | None = None
    perplexity_ratio: float | None = None
    fluent: bool | None = None
    success: bool | None = None
    judge: float | None = None
    judge_refusals: int = 0


class RolloutEvaluation(BaseModel):
    """Scores of every rollout, per-question and per-dataset summaries."""

    model: str
    dataset: str
    rows: list[ScoredRow]
    per_question: list[QuestionSummary]
    summary: list[ConditionSummary]
    settings: dict[str, Any] = Field(default_factory=dict)

    def condition(self, name: str) -> ConditionSummary:
        """The summary of one condition (``vanilla``, ``prompted``, ``pirate@4``)."""
        for summary in self.summary:
            if summary.condition == name:
                return summary
        known = ", ".join(s.condition for s in self.summary)
        raise InputError(f"no condition '{name}' in this evaluation; it has {known}")

    def to_parquet(self, path: str | os.PathLike[str]) -> Path:
        """The scored rows (one per rollout) as a table."""
        rows = [{**row.model_dump(), "condition": row.condition} for row in self.rows]
        return write_table(path, rows, list(SCORE_TYPES), types=SCORE_TYPES)

    def summary_json(self) -> dict[str, Any]:
        """What ``summary.json`` holds: the settings, the per-dataset summary and the per-question one."""
        return {
            "model": self.model,
            "dataset": self.dataset,
            "settings": self.settings,
            "summary": [s.model_dump() for s in self.summary],
            "per_question": [q.model_dump() for q in self.per_question],
        }


# --------------------------------------------------------------------------- input files


def read_questions(path: str | os.PathLike[str]) -> list[str]:
    """Questions from JSONL (``{"question": ...}`` per line) or plain text (one per line).

    A file whose first non-empty line starts with ``{`` is read as JSONL.

    Raises:
        InputError: no such file, a bad JSONL line, or no question in it.
    """
    lines = _lines(Path(path), "questions file")
    if lines and lines[0].startswith("{"):
        questions = [str(_record(line, number, path, "question")["question"]) for number, line in lines_numbered(lines)]
    else:
        questions = lines
    questions = [q for q in questions if q.strip()]
    if not questions:
        raise InputError(f"the questions file '{path}' holds no question")
    return questions


def read_labelled(path: str | os.PathLike[str]) -> tuple[list[str], list[int]]:
    """Classifier training data: JSONL ``{"text": ..., "label": 0 or 1}`` per line.

    Raises:
        InputError: no such file, a bad line or label, or not both labels present.
    """
    texts: list[str] = []
    labels: list[int] = []
    for number, line in lines_numbered(_lines(Path(path), "classifier data file")):
        record = _record(line, number, path, "text", "label")
        if record["label"] not in (0, 1) or isinstance(record["label"], bool):
            raise InputError(f"line {number} of '{path}': label must be 0 or 1, got {record['label']!r}")
        texts.append(str(record["text"]))
        labels.append(int(record["label"]))
    if set(labels) != {0, 1}:
        raise InputError(f"the classifier data '{path}' needs examples of both labels 0 and 1")
    return texts, labels


def lines_numbered(lines: list[str]) -> list[tuple[int, str]]:
    """``(line number from 1, line)`` pairs, for error messages that name the offending line."""
    return [(number + 1, line) for number, line in enumerate(lines)]


def _lines(path: Path, what: str) -> list[str]:
    if path.is_dir():
        raise InputError(f"'{path}' is a folder; give the {what} itself")
    if not path.is_file():
        raise InputError(f"no {what} at '{path}'")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise InputError(f"the {what} '{path}' is not UTF-8 text (byte {error.start})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _record(line: str, number: int, path: str | os.PathLike[str], *keys: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise InputError(f"line {number} of '{path}' is not JSON: {error.msg}") from None
    if not isinstance(record, dict) or any(key not in record for key in keys):
        raise InputError(f"line {number} of '{path}' needs the key(s) {', '.join(keys)}")
    return record
