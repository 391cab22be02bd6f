"""Steered rollouts: many vectors and scales on one loaded model, next to a vanilla and a prompted baseline.

Every condition runs on the same loaded model; steering is an `LanguageModel.intervene` context entered
around each batched ``generate`` call and left after it, so nothing is reloaded and no hook stays behind.

**Conditions.** ``vanilla``: the question (after the optional system prompt), no steering. ``prompted``: the
same with the persona actually in the prompt, no steering (only when one of these is given):
``prompted_prefix`` (put before the question), ``prompted_suffix`` (put after the rendered prompt, i.e. at the
start of the answer: the toy organism's ``<pirate>`` marker goes there) and/or ``prompted_system_prompt``.
``NAME@SCALE``: the vanilla prompt with vector ``NAME`` added at its site at every position (prompt and
generated tokens; ``positions`` changes that).

**Scales.** ``"learned"``: the vector as stored (coefficient 1; a trained vector's own norm). A number ``s``:
coefficient ``s`` on the raw vector. With ``normalize=True`` a number ``s`` adds
``s * unit(vector) * reference_norm``, where the reference norm is the mean L2 norm of the residual stream at
the vector's site over the tokens of the vanilla prompts (each prompt's first token left out: the BOS /
attention-sink position has an outlying norm, 3-4x the rest on ``toy``). So ``s = 0.5`` adds half a typical
activation's norm, whatever the vector's own norm. ``learned`` is never normalised.

**Seeds.** Before each batched ``generate`` call the seed ``seed + 100003 * rollout + batch_index`` is set
with ``torch.manual_seed`` (recorded per row). Every condition uses the same seeds (common random numbers),
so vanilla and steered rows of one rollout differ by the steering, not by the draw. A row is reproduced by
rerunning with the same questions, ``batch_size`` and seed. ``temperature=0`` decodes greedily.

**Batching.** All questions of one (condition, rollout) go through ``generate`` in batches of
``batch_size`` (left-padded by `LanguageModel.tokenize`; positions count from each prompt's first token).

**Prompts.** When the tokenizer has a chat template, the system prompt and the question are rendered with it
(``add_generation_prompt=True``); otherwise the prompt is ``system_prompt + "\\n" + question`` (or the question).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from mechscope.core.direction import Direction
from mechscope.core.lm import LanguageModel
from mechscope.errors import InputError
from mechscope.progress import bar
from mechscope.steering.generate import Phase, steering_ops
from mechscope.steering.rollout_results import BASELINES, RolloutRow, Rollouts

Scale = str | float

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


def rollouts(
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
    dataset: str = "questions",
    progress: bool = False,
) -> Rollouts:
    """Generate ``rollouts`` continuations per question for vanilla, prompted and every vector x scale.

    See the module docstring for what the conditions, scales and seeds mean.

    Raises:
        InputError: no questions, a bad scale or option, a vector named like a baseline, or a zero vector.
        ModelLoadError: a vector does not fit ``lm``.
    """
    questions = [str(q) for q in questions]
    if not questions or any(not q.strip() for q in questions):
        raise InputError("give at least one question, none of them empty")
    _check_options(rollouts, max_new_tokens, temperature, batch_size)
    chosen = [parse_scale(s) for s in scales]
    if vectors and not chosen:
        raise InputError("give at least one scale (learned or a number)")
    for name, direction in vectors.items():
        if name in BASELINES:
            raise InputError(f"a vector cannot be named '{name}': that name is a baseline's")
        direction.check(lm)
        if not float(direction.vector.float().norm()) > 0:
            raise InputError(f"the vector '{name}' is zero; it cannot steer")
    vanilla = [render_prompt(lm, q, system_prompt) for q in questions]
    conditions: list[tuple[str, str, list[str], Direction | None, float]] = [("vanilla", "", vanilla, None, 0.0)]
    if prompted_prefix is not None or prompted_suffix is not None or prompted_system_prompt is not None:
        persona = prompted_system_prompt if prompted_system_prompt is not None else system_prompt
        prompted = [render_prompt(lm, q, persona, prompted_prefix, prompted_suffix) for q in questions]
        conditions.append(("prompted", "", prompted, None, 0.0))
    references: dict[str, float] = {}
    sites: dict[str, float] = {}
    norms = {name: float(d.vector.float().norm()) for name, d in vectors.items()}
    for name, direction in vectors.items():
        if normalize:
            if direction.site_name not in sites:
                sites[direction.site_name] = reference_norm(lm, vanilla, direction.site_name, batch_size=batch_size)
            references[name] = sites[direction.site_name]
        for scale in chosen:
            if scale == "learned":
                coefficient = 1.0
            elif normalize:
                coefficient = float(scale) * references[name] / norms[name]
            else:
                coefficient = float(scale)
            conditions.append((name, scale_label(scale), vanilla, direction, coefficient))
    options: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": temperature > 0}
    if temperature > 0:
        options["temperature"] = temperature
    starts = range(0, len(questions), batch_size)
    rows: list[RolloutRow] = []
    with bar("rollouts", len(conditions) * rollouts * len(starts), enabled=progress) as handle:
        for name, label, prompts, steer, coefficient in conditions:
            ops = steering_ops(lm, steer, coefficient, positions=positions) if steer is not None else None
            added = abs(coefficient) * norms.get(name, 0.0)
            for rollout in range(rollouts):
                for batch_index, start in enumerate(starts):
                    batch_seed = seed_for(seed, rollout, batch_index)
                    torch.manual_seed(batch_seed)
                    context = lm.intervene(ops) if ops is not None else contextlib.nullcontext()  # type: ignore[arg-type]
                    with context:
                        texts = lm.generate(prompts[start : start + batch_size], **options)
                    for offset, text in enumerate(texts):
                        qid = start + offset
                        rows.append(
                            RolloutRow(
                                question_id=qid,
                                question=questions[qid],
                                prompt=prompts[qid],
                                vector=name,
                                scale=label,
                                coefficient=coefficient,
                                added_norm=added,
                                rollout=rollout,
                                seed=batch_seed,
                                text=text,
                            )
                        )
                    if handle is not None:
                        handle.advance()
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
    return Rollouts(model=lm.source, dataset=dataset, rows=rows, settings=settings, reference_norms=references)


def _check_options(rollouts: int, max_new_tokens: int, temperature: float, batch_size: int) -> None:
    if rollouts < 1:
        raise InputError(f"rollouts must be at least 1, got {rollouts}")
    if max_new_tokens < 1:
        raise InputError(f"max-new-tokens must be at least 1, got {max_new_tokens}")
    if batch_size < 1:
        raise InputError(f"batch-size must be at least 1, got {batch_size}")
    if not math.isfinite(temperature) or temperature < 0:
        raise InputError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature}")
