"""What a steered-rollout job is, before anything is generated: scales, seeds, prompts and the `RolloutPlan`.

`make_plan` checks the inputs, renders every prompt, fixes each condition's coefficient (computing the
reference norms of ``normalize`` with forward passes, the only ones) and cuts the job's ``generate`` calls
(units) into shards; `mechscope.steering.rollout` runs the shards and merges their parts. The meaning of
conditions, scales and seeds is documented there.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from mechscope.core.direction import Direction
from mechscope.core.lm import LanguageModel
from mechscope.errors import InputError
from mechscope.steering.generate import Phase
from mechscope.steering.rollout_results import BASELINES

Scale = str | float
#: One ``generate`` call of a job: (condition index, rollout, batch index).
Unit = tuple[int, int, int]
PART_KIND = "steer-rollouts-part"

#: How far apart the seeds of two rollouts are (batch indices fill the gap).
ROLLOUT_SEED_STRIDE = 100_003


def parse_scale(scale: Scale) -> str | float:
    """``"learned"`` or a finite float, from a number or a string (``"learned"``, ``"-4"``, ``"0.5"``).

    Raises:
        InputError: any other string, or a number that is not finite.
    """
    if isinstance(scale, str):
        text = scale.strip().lower()
        if text == "learned":
            return "learned"
        try:
            value = float(text)
        except ValueError:
            raise InputError(f"unknown scale '{scale}'; use learned or a number such as -4 or 0.5") from None
    else:
        value = float(scale)
    if not math.isfinite(value):
        raise InputError(f"the scale {scale} is not a finite number")
    return value


def parse_scales(text: str) -> list[str | float]:
    """Comma-separated scales, e.g. ``learned,-8,-4,4,8``."""
    parts = [part for part in text.split(",") if part.strip()]
    if not parts:
        raise InputError("no scales given; write e.g. learned,-4,4")
    return [parse_scale(part) for part in parts]


def scale_label(scale: str | float) -> str:
    """How a scale is written in rows and condition names: ``learned``, ``-4``, ``0.5``."""
    return scale if isinstance(scale, str) else f"{scale:g}"


def seed_for(seed: int, rollout: int, batch_index: int) -> int:
    """The seed set before batch ``batch_index`` of rollout ``rollout`` (the same for every condition)."""
    return seed + ROLLOUT_SEED_STRIDE * rollout + batch_index


def render_prompt(
    lm: LanguageModel,
    question: str,
    system_prompt: str | None = None,
    prefix: str | None = None,
    suffix: str | None = None,
) -> str:
    """The prompt for ``question``: ``prefix``, the system prompt and chat template when any, ``suffix`` last."""
    return _render(lm, question, system_prompt, prefix) + (suffix or "")


def _render(lm: LanguageModel, question: str, system_prompt: str | None, prefix: str | None) -> str:
    user = f"{prefix or ''}{question}"
    template = getattr(lm.tokenizer, "chat_template", None) if lm.has_tokenizer else None
    if template:
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        messages.append({"role": "user", "content": user})
        rendered: str = lm.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return rendered
    return f"{system_prompt}\n{user}" if system_prompt else user


def reference_norm(lm: LanguageModel, prompts: Sequence[str], site: str, *, batch_size: int = 16) -> float:
    """Mean L2 norm of the activation at ``site`` over the tokens of ``prompts`` (each one's first token left out).

    A prompt of one token counts its only token.
    """
    total, count = 0.0, 0
    for start in range(0, len(prompts), batch_size):
        batch = list(prompts[start : start + batch_size])
        mask = lm.tokenize(batch)["attention_mask"].bool()
        with torch.no_grad(), lm.capture([site], positions="all") as cache:
            lm.forward(batch)
        norms = cache[site].float().norm(dim=-1).to(mask.device)
        first = mask.int().argmax(dim=1)  # left padding: each prompt's first real token
        keep = mask.clone()
        several = mask.sum(dim=1) > 1
        keep[torch.arange(len(batch), device=mask.device)[several], first[several]] = False
        total += float(norms[keep].sum())
        count += int(keep.sum())
    return total / max(count, 1)


@dataclass(frozen=True)
class Condition:
    """One condition of a rollout job: the prompts it answers, the vector it adds (none for a baseline), how much.

    Attributes:
        vector: ``vanilla``, ``prompted`` or the vector's name.
        scale: the scale as rows write it (``""`` for a baseline).
        coefficient: what multiplies the vector as stored (0 for a baseline); ``added_norm``: ``|c| * ||v||``.
        prompts: which prompts it generates from, ``vanilla`` or ``prompted``.
    """

    vector: str
    scale: str
    coefficient: float
    added_norm: float
    prompts: str

    @property
    def steered(self) -> bool:
        """Whether a vector is added (not a baseline)."""
        return self.vector not in BASELINES


@dataclass(frozen=True)
class RolloutPlan:
    """Everything that defines a rollout job, made once on a loaded model (`make_plan`) before any shard runs.

    Attributes:
        questions: as given; ``prompts``: the rendered prompts, ``vanilla`` and (when asked) ``prompted``.
        conditions: in the order their rows come out (baselines first, then every vector x scale).
        shards: each shard's units ``(condition, rollout, batch index)``; all of them, in order, are the
            loop of the local code, so the rows of the parts in shard order are the rows in order.
        settings: what `Rollouts.settings` records; ``reference_norms``: per vector, with ``normalize``.
        vectors_sha256: each vector's digest (site, dtype, shape and values): a part is never reused for
            another vector of the same name.
    """

    model: str
    questions: tuple[str, ...]
    prompts: dict[str, tuple[str, ...]]
    conditions: tuple[Condition, ...]
    shards: tuple[tuple[Unit, ...], ...]
    settings: dict[str, Any]
    reference_norms: dict[str, float]
    vectors_sha256: dict[str, str]

    def job(self) -> dict[str, Any]:
        """What the parts folder's ``plan.json`` holds: this plan, with digests for the questions and prompts."""
        return {
            "job": PART_KIND,
            "model": self.model,
            "questions_sha256": _sha256(list(self.questions)),
            "prompts_sha256": _sha256({name: list(prompts) for name, prompts in self.prompts.items()}),
            "vectors_sha256": self.vectors_sha256,
            "settings": self.settings,
            "reference_norms": self.reference_norms,
            "conditions": [asdict(condition) for condition in self.conditions],
            "shards": [[list(unit) for unit in shard] for shard in self.shards],
        }

    def expected(self, shard: int) -> list[tuple[int, str, str, int, int]]:
        """``(question_id, vector, scale, rollout, seed)`` of each row of ``shard``, in order."""
        size, total = int(self.settings["batch_size"]), len(self.questions)
        keys = []
        for index, rollout, batch_index in self.shards[shard]:
            condition = self.conditions[index]
            seed = seed_for(int(self.settings["seed"]), rollout, batch_index)
            for qid in range(batch_index * size, min((batch_index + 1) * size, total)):
                keys.append((qid, condition.vector, condition.scale, rollout, seed))
        return keys


def _sha256(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode("utf-8")).hexdigest()


def vector_sha256(direction: Direction) -> str:
    """A digest of a direction's site, dtype, shape and exact values."""
    vector = direction.vector.detach().cpu().contiguous().reshape(-1)
    digest = hashlib.sha256(f"{direction.site_name}|{vector.dtype}|{tuple(direction.vector.shape)}|".encode())
    digest.update(vector.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def make_plan(
    lm: LanguageModel,
    questions: Sequence[str],
    vectors: Mapping[str, Direction],
    *,
    scales: Sequence[Scale] = ("learned",),
    normalize: bool = False,
    rollouts: int = 1,
    seed: int = 0,
    max_new_tokens: int = 40,
    temperature: float = 1.0,
    system_prompt: str | None = None,
    prompted_prefix: str | None = None,
    prompted_suffix: str | None = None,
    prompted_system_prompt: str | None = None,
    positions: Phase = "all",
    batch_size: int = 16,
    units_per_shard: int = 1,
) -> RolloutPlan:
    """Check the inputs, render the prompts, fix each condition's coefficient, and cut the units into shards.

    The only forward passes are those of the reference norms (``normalize``); ``units_per_shard``
    ``generate`` calls make one shard. The other arguments are those of `rollouts`.

    Raises:
        InputError: no questions, a bad scale or option, a vector named like a baseline, or a zero vector.
        ModelLoadError: a vector does not fit ``lm``.
    """
    questions = [str(q) for q in questions]
    if not questions or any(not q.strip() for q in questions):
        raise InputError("give at least one question, none of them empty")
    _check_options(rollouts, max_new_tokens, temperature, batch_size)
    if units_per_shard < 1:
        raise InputError(f"units per shard must be at least 1, got {units_per_shard}")
    if positions not in ("all", "prompt", "generated"):
        raise InputError(f"unknown positions '{positions}'; use all, prompt or generated")
    chosen = [parse_scale(s) for s in scales]
    if vectors and not chosen:
        raise InputError("give at least one scale (learned or a number)")
    for name, direction in vectors.items():
        if name in BASELINES:
            raise InputError(f"a vector cannot be named '{name}': that name is a baseline's")
        direction.check(lm)
        if not float(direction.vector.float().norm()) > 0:
            raise InputError(f"the vector '{name}' is zero; it cannot steer")
    prompts = {"vanilla": tuple(render_prompt(lm, q, system_prompt) for q in questions)}
    conditions = [Condition("vanilla", "", 0.0, 0.0, "vanilla")]
    if prompted_prefix is not None or prompted_suffix is not None or prompted_system_prompt is not None:
        persona = prompted_system_prompt if prompted_system_prompt is not None else system_prompt
        prompts["prompted"] = tuple(render_prompt(lm, q, persona, prompted_prefix, prompted_suffix) for q in questions)
        conditions.append(Condition("prompted", "", 0.0, 0.0, "prompted"))
    references: dict[str, float] = {}
    sites: dict[str, float] = {}
    norms = {name: float(d.vector.float().norm()) for name, d in vectors.items()}
    for name, direction in vectors.items():
        if normalize:
            if direction.site_name not in sites:
                vanilla = prompts["vanilla"]
                sites[direction.site_name] = reference_norm(lm, vanilla, direction.site_name, batch_size=batch_size)
            references[name] = sites[direction.site_name]
        for scale in chosen:
            if scale == "learned":
                coefficient = 1.0
            elif normalize:
                coefficient = float(scale) * references[name] / norms[name]
            else:
                coefficient = float(scale)
            added = abs(coefficient) * norms[name]
            conditions.append(Condition(name, scale_label(scale), coefficient, added, "vanilla"))
    batches = range(math.ceil(len(questions) / batch_size))
    units = [(c, rollout, b) for c in range(len(conditions)) for rollout in range(rollouts) for b in batches]
    settings = {
        "scales": [scale_label(s) for s in chosen],
        "normalize": normalize,
        "rollouts": rollouts,
        "seed": seed,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "system_prompt": system_prompt,
        "prompted_prefix": prompted_prefix,
        "prompted_suffix": prompted_suffix,
        "prompted_system_prompt": prompted_system_prompt,
        "positions": positions,
        "batch_size": batch_size,
        "vectors": {
            name: {"site": d.site_name, "norm": norms[name], "method": d.method} for name, d in vectors.items()
        },
    }
    return RolloutPlan(
        model=lm.source,
        questions=tuple(questions),
        prompts=prompts,
        conditions=tuple(conditions),
        shards=tuple(tuple(units[i : i + units_per_shard]) for i in range(0, len(units), units_per_shard)),
        settings=settings,
        reference_norms=references,
        vectors_sha256={name: vector_sha256(d) for name, d in vectors.items()},
    )


def _check_options(rollouts: int, max_new_tokens: int, temperature: float, batch_size: int) -> None:
    if rollouts < 1:
        raise InputError(f"rollouts must be at least 1, got {rollouts}")
    if max_new_tokens < 1:
        raise InputError(f"max-new-tokens must be at least 1, got {max_new_tokens}")
    if batch_size < 1:
        raise InputError(f"batch-size must be at least 1, got {batch_size}")
    if not math.isfinite(temperature) or temperature < 0:
        raise InputError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature}")
