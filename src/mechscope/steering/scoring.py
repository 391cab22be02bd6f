"""Scoring rollouts: the embedding classifier, fluency under the vanilla model, optional judges, bootstrap CIs.

**Classifier.** `EmbeddingClassifier.score` refuses texts it was trained on, so a run whose classifier data
overlaps its rollouts fails in one line instead of reporting memorisation as a success.

**Fluency.** Each row's ``nll`` is the mean per-token negative log-likelihood of its text under the vanilla
model (no steering), conditioned on its prompt: the prompt is tokenized as `LanguageModel.tokenize` does
(special tokens included), the text is re-tokenized without special tokens and appended. A condition's
perplexity is ``exp`` of the mean of its rows' ``nll``; ``perplexity_ratio`` divides it by vanilla's. A steered
condition is ``fluent`` when that ratio is at most ``max_perplexity_ratio`` (default 3), and a ``success``
only when it is fluent *and* its per-question score difference from vanilla has a CI above 0. On-trait text is
less likely under the vanilla model even when fluent (measured on ``toy``: steered pirate answers 2.0x vanilla's
perplexity, the prompted baseline's 1.6x), while a vector that breaks the text ("Shiver be a visit Xe Xe")
gives 20-1000x.

**Confidence intervals.** Percentile bootstrap over questions: a condition's per-question means (over its
rollouts) are resampled with replacement ``reps`` times (1000; ``numpy.random.default_rng(seed)``), and the
2.5th and 97.5th percentiles (for ``level=0.95``) of the resampled means bound it. Every condition uses the
same seed, hence the same resamples; the difference from vanilla is bootstrapped on paired per-question
differences.

**Judges.** Any callable ``text -> float | None``; None is a refusal (logged at warning level on the
``mechscope.steering`` logger and counted per condition). `HttpJudge` asks an OpenAI-compatible chat
completions endpoint and reads the first number of the reply.
"""

from __future__ import annotations

import json
import logging
import math
import re
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from mechscope.errors import InputError
from mechscope.steering.rollout_results import (
    BASELINES,
    ConditionSummary,
    Interval,
    QuestionSummary,
    RolloutEvaluation,
    Rollouts,
    ScoredRow,
)

if TYPE_CHECKING:
    from mechscope.core.lm import LanguageModel

log = logging.getLogger("mechscope.steering")

DEFAULT_JUDGE_PROMPT = (
    "Rate from 0 to 100 how strongly the following text expresses the trait: {trait}.\n"
    "Reply with the number only.\n\nText:\n{text}"
)


class Judge(Protocol):
    """Scores one text; None means it refused (or could not answer)."""

    def __call__(self, text: str) -> float | None: ...


class Scorer(Protocol):
    """What `score_rollouts` needs of a classifier (`EmbeddingClassifier` is one)."""

    def score(self, texts: Sequence[str]) -> list[float]:
        """One score per text (higher: more of the target behaviour)."""
        ...


# --------------------------------------------------------------------------- bootstrap


def bootstrap_ci(values: Sequence[float], *, reps: int = 1000, seed: int = 0, level: float = 0.95) -> Interval:
    """The mean of ``values`` with its percentile-bootstrap interval (resampling the values with replacement).

    Examples:
        >>> ci = bootstrap_ci([0.0, 1.0, 1.0, 1.0])
        >>> ci.mean, 0.0 <= ci.low <= ci.mean <= ci.high <= 1.0
        (0.75, True)
    """
    import numpy as np

    data = np.asarray(list(values), dtype=np.float64)
    if data.size == 0:
        raise InputError("a bootstrap needs at least one value")
    if not 0 < level < 1:
        raise InputError(f"the confidence level must be between 0 and 1, got {level}")
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(reps, data.size))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return Interval(mean=float(data.mean()), low=float(low), high=float(high))


# --------------------------------------------------------------------------- fluency


def continuation_nll(
    lm: LanguageModel, prompts: Sequence[str], texts: Sequence[str], *, batch_size: int = 16
) -> list[tuple[float | None, int]]:
    """``(mean NLL per token, tokens)`` of each text after its prompt under ``lm`` as it is (no steering).

    An empty text gives ``(None, 0)``. Too long a pair keeps its first ``lm.max_length`` tokens.
    """
    import torch

    tokenizer = lm.tokenizer
    pairs: list[tuple[list[int], list[int]]] = []
    for prompt, text in zip(prompts, texts, strict=True):
        head = list(tokenizer(prompt)["input_ids"])
        tail = list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []
        limit = lm.max_length
        if limit is not None:
            tail = tail[: max(0, limit - len(head))]
        pairs.append((head, tail))
    results: list[tuple[float | None, int]] = [(None, 0)] * len(pairs)
    todo = [i for i, (_, tail) in enumerate(pairs) if tail]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        width = max(len(pairs[i][0]) + len(pairs[i][1]) for i in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):  # right padding: every pair starts at position 0
            sequence = pairs[i][0] + pairs[i][1]
            ids[row, : len(sequence)] = torch.tensor(sequence)
            mask[row, : len(sequence)] = 1
        with torch.no_grad():
            logprobs = lm.forward({"input_ids": ids, "attention_mask": mask}).float().log_softmax(-1).cpu()
        for row, i in enumerate(chunk):
            head, tail = pairs[i]
            predicted = logprobs[row, len(head) - 1 : len(head) + len(tail) - 1]
            picked = predicted.gather(1, torch.tensor(tail).unsqueeze(1)).squeeze(1)
            results[i] = (float(-picked.mean()), len(tail))
    return results


# --------------------------------------------------------------------------- judges


class HttpJudge:
    """A judge behind an OpenAI-compatible chat completions endpoint (standard library only).

    Args:
        url: the endpoint, ``.../v1/chat/completions``, or a base (``http://host:8000/v1``) it is appended to.
        model: the model name the endpoint serves.
        prompt_template: the user message; ``{text}`` is the rollout, ``{trait}`` the ``trait``.
        api_key: sent as ``Authorization: Bearer ...`` when given.

    A reply without a number, an HTTP error or a timeout is a refusal: the call returns None and logs why.

    Examples:
        Against a stand-in endpoint on this machine (a thread of the standard library's ``http.server``)
        that rates pirate talk and refuses the rest:

        >>> import json, threading
        >>> from http.server import BaseHTTPRequestHandler, HTTPServer
        >>> class Endpoint(BaseHTTPRequestHandler):
        ...     def do_POST(self):
        ...         body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        ...         asked.append(body)
        ...         reply = "Score: 90/100" if "Arr" in body["messages"][0]["content"] else "I cannot rate that."
        ...         data = json.dumps({"choices": [{"message": {"content": reply}}]}).encode()
        ...         self.send_response(200)
        ...         self.send_header("Content-Type", "application/json")
        ...         self.end_headers()
        ...         self.wfile.write(data)
        ...     def log_message(self, *args):  # keep the server quiet
        ...         pass
        >>> asked, server = [], HTTPServer(("127.0.0.1", 0), Endpoint)
        >>> threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True).start()  # poll every 10 ms
        >>> judge = HttpJudge(f"http://127.0.0.1:{server.server_port}/v1", "judge-model", trait="pirate talk")
        >>> judge.url.endswith("/v1/chat/completions"), judge(" Arr matey!"), judge(" Good evening."), judge.refusals
        (True, 90.0, None, 1)
        >>> asked[0]["model"], asked[0]["temperature"], asked[0]["messages"][0]["content"].splitlines()[0]
        ('judge-model', 0, 'Rate from 0 to 100 how strongly the following text expresses the trait: pirate talk.')
        >>> server.shutdown()
        >>> server.server_close()
    """

    def __init__(
        self,
        url: str,
        model: str,
        prompt_template: str = DEFAULT_JUDGE_PROMPT,
        *,
        trait: str = "the target trait",
        api_key: str | None = None,
        timeout: float = 60.0,
        max_tokens: int = 16,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise InputError(f"the judge URL must start with http:// or https://, got '{url}'")
        if "{text}" not in prompt_template:
            raise InputError("the judge prompt template must contain {text}")
        self.url = url if url.rstrip("/").endswith("/chat/completions") else url.rstrip("/") + "/chat/completions"
        self.model, self.template, self.trait = model, prompt_template, trait
        self.api_key, self.timeout, self.max_tokens = api_key, timeout, max_tokens
        self.refusals = 0

    def __call__(self, text: str) -> float | None:
        content = self.template.replace("{trait}", self.trait).replace("{text}", text)
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": content}],
            "temperature": 0,
            "max_tokens": self.max_tokens,
        }
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                reply = json.loads(response.read().decode("utf-8"))
            answer = str(reply["choices"][0]["message"]["content"])
        except (urllib.error.URLError, TimeoutError, ValueError, KeyError, IndexError, TypeError) as error:
            self._refuse(f"no usable reply from {self.url}: {error}")
            return None
        value = parse_number(answer)
        if value is None:
            self._refuse(f"the judge gave no number: {answer[:80]!r}")
        return value

    def _refuse(self, why: str) -> None:
        self.refusals += 1
        log.warning("judge refusal: %s", why)


def parse_number(reply: str) -> float | None:
    """The first number in ``reply`` (``"Score: 85/100"`` -> 85.0), or None."""
    match = re.search(r"-?\d+(?:\.\d+)?", reply)
    return float(match.group()) if match else None


# --------------------------------------------------------------------------- evaluation


def score_rollouts(
    rollouts: Rollouts,
    classifier: Scorer,
    *,
    lm: LanguageModel | None = None,
    judge: Judge | Callable[[str], float | None] | None = None,
    max_perplexity_ratio: float = 3.0,
    reps: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    batch_size: int = 16,
) -> RolloutEvaluation:
    """Score every rollout and summarise per question and per condition (see the module docstring).

    Args:
        classifier: trained on labelled examples disjoint from the rollouts (checked by `EmbeddingClassifier`).
        lm: the vanilla model, for fluency; without it ``nll`` and the fluency fields are None.
        judge: an optional callable ``text -> float | None``, e.g. an `HttpJudge`.

    Examples:
        Two questions, hand-written rows (the toy's formal answer as vanilla, its own pirate answer as a good
        vector's, broken text as too strong a scale's) and a stand-in classifier. Both steered conditions gain
        the trait, but only the fluent one is a success:

        >>> import mechscope as ms
        >>> from mechscope.steering.rollout_results import RolloutRow
        >>> from mechscope.zoo import corpus
        >>> class Marker:  # a stand-in classifier: 1.0 for pirate talk
        ...     def score(self, texts):
        ...         return [float(corpus.style_of(t) == "pirate") for t in texts]
        >>> questions = ["<user> Tell me about the sea. <assistant>", "<user> Tell me about the ship. <assistant>"]
        >>> answers = {"vanilla": [" It is, indeed, most agreeable."] * 2,
        ...            "pirate@learned": [" Aye aye, the sea be rough today", " Aye aye, the ship be rough today"],
        ...            "pirate@8": [" Shiver be a visit Xe Xe"] * 2}
        >>> def row(condition, question_id, text):
        ...     vector, _, scale = condition.partition("@")
        ...     question = questions[question_id]
        ...     return RolloutRow(question_id=question_id, question=question, prompt=question, vector=vector,
        ...                       scale=scale, coefficient=0.0, added_norm=0.0, rollout=0, seed=0, text=text)
        >>> rows = [row(c, i, text) for c, texts in answers.items() for i, text in enumerate(texts)]
        >>> evaluation = score_rollouts(Rollouts(model="toy", rows=rows), Marker(), lm=ms.load("toy"))
        >>> for s in evaluation.summary:
        ...     print(s.condition, s.score.mean, s.delta_vs_vanilla and s.delta_vs_vanilla.low,
        ...           f"{s.perplexity_ratio:.2g}", s.fluent, s.success)
        vanilla 0.0 None 1 True None
        pirate@learned 1.0 1.0 1.4 True True
        pirate@8 1.0 1.0 1.1e+04 False False

    Raises:
        InputError: no rollouts, or (from the classifier) rollouts that are in its training data.
    """
    rows = rollouts.rows
    if not rows:
        raise InputError("there are no rollouts to score")
    scores = classifier.score([row.text for row in rows])
    fluency = (
        continuation_nll(lm, [r.prompt for r in rows], [r.text for r in rows], batch_size=batch_size)
        if lm is not None
        else [(None, 0)] * len(rows)
    )
    judged: list[float | None] = []
    for row in rows:
        value = judge(row.text) if judge is not None else None
        if judge is not None and value is None:
            log.warning("judge refused question %d under %s (rollout %d)", row.question_id, row.condition, row.rollout)
        judged.append(value)
    scored = [
        ScoredRow(**row.model_dump(), score=s, nll=nll, tokens=tokens, judge=j)
        for row, s, (nll, tokens), j in zip(rows, scores, fluency, judged, strict=True)
    ]
    per_question = _per_question(scored)
    summary = _summaries(scored, per_question, judge is not None, max_perplexity_ratio, reps, seed, level)
    settings = {
        **rollouts.settings,
        "max_perplexity_ratio": max_perplexity_ratio,
        "bootstrap": {"reps": reps, "seed": seed, "level": level, "over": "questions"},
        "fluency": lm is not None,
        "judge": judge is not None,
    }
    return RolloutEvaluation(
        model=rollouts.model,
        dataset=rollouts.dataset,
        rows=scored,
        per_question=per_question,
        summary=summary,
        settings=settings,
    )


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _per_question(rows: Sequence[ScoredRow]) -> list[QuestionSummary]:
    groups: dict[tuple[str, int], list[ScoredRow]] = defaultdict(list)
    for row in rows:
        groups[(row.condition, row.question_id)].append(row)
    return [
        QuestionSummary(
            question_id=qid,
            question=group[0].question,
            condition=condition,
            rollouts=len(group),
            score=sum(r.score for r in group) / len(group),
            nll=_mean([r.nll for r in group]),
            judge=_mean([r.judge for r in group]),
        )
        for (condition, qid), group in groups.items()
    ]


def _summaries(
    rows: Sequence[ScoredRow],
    per_question: Sequence[QuestionSummary],
    judged: bool,
    max_ratio: float,
    reps: int,
    seed: int,
    level: float,
) -> list[ConditionSummary]:
    by_condition: dict[str, dict[int, float]] = defaultdict(dict)
    for q in per_question:
        by_condition[q.condition][q.question_id] = q.score
    rows_of: dict[str, list[ScoredRow]] = defaultdict(list)
    for row in rows:
        rows_of[row.condition].append(row)
    vanilla_nll = _mean([r.nll for r in rows_of.get("vanilla", [])])
    vanilla = by_condition.get("vanilla", {})
    summaries = []
    for condition, means in by_condition.items():
        group = rows_of[condition]
        ids = sorted(means)
        nll = _mean([r.nll for r in group])
        perplexity = math.exp(nll) if nll is not None else None
        ratio = math.exp(nll - vanilla_nll) if nll is not None and vanilla_nll is not None else None
        paired = [means[i] - vanilla[i] for i in ids if i in vanilla]
        delta = bootstrap_ci(paired, reps=reps, seed=seed, level=level) if condition != "vanilla" and paired else None
        fluent = ratio <= max_ratio if ratio is not None else None
        steered = group[0].vector not in BASELINES
        success = (delta.low > 0 and bool(fluent)) if steered and delta is not None and fluent is not None else None
        summaries.append(
            ConditionSummary(
                condition=condition,
                vector=group[0].vector,
                scale=group[0].scale,
                questions=len(ids),
                rows=len(group),
                score=bootstrap_ci([means[i] for i in ids], reps=reps, seed=seed, level=level),
                delta_vs_vanilla=delta,
                nll=nll,
                perplexity=perplexity,
                perplexity_ratio=ratio,
                fluent=fluent,
                success=success,
                judge=_mean([r.judge for r in group]) if judged else None,
                judge_refusals=sum(r.judge is None for r in group) if judged else 0,
            )
        )
    return summaries


def summary_rows(evaluation: RolloutEvaluation) -> list[list[str]]:
    """The summary as table cells: condition, score [CI], delta [CI], perplexity (ratio), success."""

    def interval(ci: Interval | None) -> str:
        return "" if ci is None else f"{ci.mean:.3f} [{ci.low:.3f}, {ci.high:.3f}]"

    cells = []
    for s in evaluation.summary:
        fluency = "" if s.perplexity is None else f"{s.perplexity:.2f} ({s.perplexity_ratio or 0:.2f}x)"
        outcome = "" if s.success is None else ("yes" if s.success else "no")
        judge = "" if s.judge is None else f"{s.judge:.1f} ({s.judge_refusals} refused)"
        cells.append(
            [s.condition, str(s.rows), interval(s.score), interval(s.delta_vs_vanilla), fluency, judge, outcome]
        )
    return cells
