"""Steered generation: add directions to the residual stream while the model generates.

``positions`` says where the vector goes: ``"all"`` (the prompt and every new token), ``"prompt"`` (the
prompt pass only) or ``"generated"`` (only the passes that process generated tokens). Coefficient 0 adds
nothing and reproduces plain generation exactly. Steering is an intervention context, so it is switched on
and off on a shared model without reloading it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import BaseModel
from torch import Tensor

from mechscope.core.direction import Direction
from mechscope.core.layers import resolve_layer
from mechscope.core.lm import LanguageModel
from mechscope.core.ops import OpContext
from mechscope.errors import InputError

Phase = Literal["all", "prompt", "generated"]


@dataclass(frozen=True)
class PhaseAdd:
    """Add ``coeff * vector`` in the passes of one phase of generation (an op for `LanguageModel.intervene`)."""

    vector: Tensor
    coeff: float
    phase: Phase = "all"
    positions: str = "all"
    needs_layout: bool = True  # the op reads the KV offset to tell the prompt pass from generated tokens

    def apply(self, x: Tensor, ctx: OpContext) -> Tensor:
        """``x + coeff * vector`` in the passes of the op's phase (the prompt pass or the new tokens), else ``x``."""
        if self.phase != "all":
            prompt_pass = ctx.info.offset == 0
            if prompt_pass != (self.phase == "prompt"):
                return x
        return x + self.coeff * self.vector.to(device=x.device, dtype=x.dtype)


def steering_ops(
    lm: LanguageModel,
    directions: Direction | Sequence[Direction],
    coefficient: float,
    *,
    normalize: bool = False,
    positions: Phase = "all",
) -> dict[str, list[PhaseAdd]]:
    """The intervention ops that add ``directions`` (several may share a site) with ``coefficient``.

    Examples:
        A `PhaseAdd` per direction, keyed by its site, ready for `LanguageModel.intervene`:

        >>> import mechscope as ms
        >>> from mechscope.steering.directions import diff_of_means
        >>> lm = ms.load("toy")
        >>> topics = ["the sea", "the ship", "the weather", "the town"]
        >>> pirate = [f"<pirate> Tell me about {t}." for t in topics]
        >>> formal = [f"<formal> Tell me about {t}." for t in topics]
        >>> direction = diff_of_means(lm, pirate, formal, layers=[1])[1]
        >>> ops = steering_ops(lm, [direction, direction], 2.0, normalize=True, positions="generated")
        >>> list(ops), [(op.coeff, op.phase, round(float(op.vector.norm()), 3)) for op in ops["resid_post.1"]]
        (['resid_post.1'], [(2.0, 'generated', 1.0), (2.0, 'generated', 1.0)])
        >>> with lm.intervene(steering_ops(lm, direction, 2.0)):
        ...     lm.generate("<formal> Tell me about the sea.", max_new_tokens=8)
        ' Ahoy! the sea be full Ahoy?'

    Raises:
        InputError: unknown ``positions`` or a coefficient that is not finite.
    """
    if positions not in ("all", "prompt", "generated"):
        raise InputError(f"unknown positions '{positions}'; use all, prompt or generated")
    if not math.isfinite(coefficient):
        raise InputError(f"the steering coefficient must be a finite number, got {coefficient}")
    ops: dict[str, list[PhaseAdd]] = {}
    for direction in [directions] if isinstance(directions, Direction) else list(directions):
        direction.check(lm)
        vector = direction.unit() if normalize else direction.vector
        ops.setdefault(direction.site_name, []).append(PhaseAdd(vector, coefficient, positions))
    return ops


def generate_with_steering(
    lm: LanguageModel,
    prompts: str | Sequence[str],
    directions: Direction | Sequence[Direction],
    coefficient: float,
    *,
    normalize: bool = False,
    positions: Phase = "all",
    max_new_tokens: int = 32,
    do_sample: bool = False,
    seed: int | None = None,
    **generate_kwargs: object,
) -> list[str]:
    """Generate from ``prompts`` with ``directions`` added; greedy unless ``do_sample`` (seeded by ``seed``).

    Examples:
        Coefficient 0 is plain generation; a positive one steers the formal prompt into pirate talk, and
        ``positions="generated"`` steers only the new tokens (the prompt pass is left alone):

        >>> import mechscope as ms
        >>> from mechscope.steering.directions import diff_of_means
        >>> lm = ms.load("toy")
        >>> topics = ["the sea", "the ship", "the weather", "the town"]
        >>> pirate = [f"<pirate> Tell me about {t}." for t in topics]
        >>> formal = [f"<formal> Tell me about {t}." for t in topics]
        >>> direction = diff_of_means(lm, pirate, formal, layers=[1])[1]
        >>> prompt = "<formal> Tell me about the sea."
        >>> generate_with_steering(lm, prompt, direction, 0.0, max_new_tokens=12) == lm.generate(
        ...     [prompt], max_new_tokens=12)
        True
        >>> generate_with_steering(lm, prompt, direction, 2.0, max_new_tokens=12)
        [' Ahoy! the sea be full Ahoy? Aye, Aye,']
        >>> generate_with_steering(lm, prompt, direction, 2.0, max_new_tokens=12, positions="generated")
        [' It is, Aye, Aye, Aye, Aye, Aye']

    Raises:
        InputError: ``max_new_tokens`` below 1, unknown ``positions`` or a coefficient that is not finite.
    """
    batch = [prompts] if isinstance(prompts, str) else list(prompts)
    if max_new_tokens < 1:
        raise InputError(f"max-new-tokens must be at least 1, got {max_new_tokens}")
    ops = steering_ops(lm, directions, coefficient, normalize=normalize, positions=positions)
    if seed is not None:
        torch.manual_seed(seed)
    with lm.intervene(ops):  # type: ignore[arg-type]
        return lm.generate(batch, max_new_tokens=max_new_tokens, do_sample=do_sample, **generate_kwargs)


class SweepRow(BaseModel):
    """One coefficient of a sweep: the texts generated for each prompt.

    Examples:
        `sweep` makes one per coefficient; it is plain data, so it round-trips through JSON:

        >>> row = SweepRow(coefficient=2.0, texts=[" Ahoy! the sea be full Ahoy?"])
        >>> row.model_dump_json()
        '{"coefficient":2.0,"texts":[" Ahoy! the sea be full Ahoy?"]}'
        >>> SweepRow.model_validate_json(row.model_dump_json()) == row
        True
    """

    coefficient: float
    texts: list[str]


class SteeringSweep(BaseModel):
    """Generations at several coefficients on one loaded model."""

    prompts: list[str]
    site: str
    rows: list[SweepRow]


def sweep(
    lm: LanguageModel,
    prompts: str | Sequence[str],
    direction: Direction | Sequence[Direction],
    coefficients: Sequence[float] = (-8.0, -4.0, 0.0, 4.0, 8.0),
    **options: object,
) -> SteeringSweep:
    """`generate_with_steering` at each coefficient, reusing the loaded model; a table of outputs.

    Examples:
        >>> import mechscope as ms
        >>> from mechscope.steering.directions import diff_of_means
        >>> lm = ms.load("toy")
        >>> topics = ["the sea", "the ship", "the weather", "the town"]
        >>> pirate = [f"<pirate> Tell me about {t}." for t in topics]
        >>> formal = [f"<formal> Tell me about {t}." for t in topics]
        >>> direction = diff_of_means(lm, pirate, formal, layers=[1])[1]
        >>> table = sweep(lm, "<formal> Tell me about the sea.", direction, [0.0, 2.0], max_new_tokens=8)
        >>> table.site, [(row.coefficient, row.texts) for row in table.rows]
        ('resid_post.1', [(0.0, [' It is, indeed, most agreeable.']), (2.0, [' Ahoy! the sea be full Ahoy?'])])

    Raises:
        InputError: no coefficients, or an option `generate_with_steering` rejects.
    """
    batch = [prompts] if isinstance(prompts, str) else list(prompts)
    if not coefficients:
        raise InputError("a sweep needs at least one coefficient")
    first = direction if isinstance(direction, Direction) else direction[0]
    rows = [
        SweepRow(coefficient=c, texts=generate_with_steering(lm, batch, direction, c, **options))  # type: ignore[arg-type]
        for c in coefficients
    ]
    return SteeringSweep(prompts=batch, site=first.site_name, rows=rows)


def probability_shift(
    lm: LanguageModel,
    prompts: Sequence[str],
    direction: Direction | Sequence[Direction],
    coefficient: float,
    targets: Sequence[str],
    *,
    normalize: bool = False,
) -> dict[str, float]:
    """Mean change in the next-token probability of each target token when steering (last position).

    Examples:
        Steering towards pirate moves the first word's probability from the formal " It" to " Ahoy":

        >>> import mechscope as ms
        >>> from mechscope.steering.directions import diff_of_means
        >>> lm = ms.load("toy")
        >>> topics = ["the sea", "the ship", "the weather", "the town"]
        >>> pirate = [f"<pirate> Tell me about {t}." for t in topics]
        >>> formal = [f"<formal> Tell me about {t}." for t in topics]
        >>> direction = diff_of_means(lm, pirate, formal, layers=[1])[1]
        >>> shift = probability_shift(lm, ["<formal> Tell me about the sea."], direction, 2.0, [" Ahoy", " It"])
        >>> {token: round(change, 2) for token, change in shift.items()}
        {' Ahoy': 0.52, ' It': -1.0}

    Raises:
        InputError: a target that is not a single token.
    """
    ids = {target: lm.token_id(target) for target in targets}
    with torch.no_grad():
        plain = lm.forward(list(prompts))[:, -1].float().softmax(-1)
        with lm.intervene(steering_ops(lm, direction, coefficient, normalize=normalize)):  # type: ignore[arg-type]
            steered = lm.forward(list(prompts))[:, -1].float().softmax(-1)
    return {target: float((steered[:, i] - plain[:, i]).mean()) for target, i in ids.items()}


class ActivationSteering:
    """The interface other introspection tools offer: a loaded model that generates with a direction added.

    Example (a pirate-style direction from contrast prompts turns the toy's formal answer into pirate talk):
        >>> from mechscope.steering.directions import diff_of_means
        >>> from mechscope.zoo.corpus import style_of
        >>> steering = ActivationSteering.from_pretrained("toy")
        >>> topics = ["the sea", "the ship", "the weather", "the town"]
        >>> pirate_prompts = [f"<pirate> Tell me about {t}." for t in topics]
        >>> formal_prompts = [f"<formal> Tell me about {t}." for t in topics]
        >>> pirate = diff_of_means(steering.lm, pirate_prompts, formal_prompts, layers=[1])[1]
        >>> prompt = "<formal> Tell me about the sea."
        >>> style_of(steering.generate_with_steering(prompt, pirate, layer=1, coefficient=0.0, max_new_tokens=12))
        'formal'
        >>> style_of(steering.generate_with_steering(prompt, pirate, layer=1, coefficient=2.0, max_new_tokens=12))
        'pirate'
    """

    def __init__(self, lm: LanguageModel) -> None:
        self.lm = lm

    @classmethod
    def from_pretrained(cls, name: str, **load_kwargs: object) -> ActivationSteering:
        """Load ``name`` (organism, folder or hub id) with `mechscope.load`."""
        from mechscope.core.lm import load

        return cls(load(name, **load_kwargs))  # type: ignore[arg-type]

    def generate_with_steering(
        self,
        prompt: str,
        direction: Direction | Tensor,
        layer: int | None = None,
        coefficient: float = 1.0,
        **options: object,
    ) -> str:
        """Generate from ``prompt`` with ``direction`` (a `Direction` or a raw vector) added at ``layer``."""
        if isinstance(direction, Tensor):
            if layer is None:
                raise InputError("give the layer to add a raw vector at")
            direction = Direction(vector=direction, layer=resolve_layer(layer, self.lm.arch.n_layers))
        elif layer is not None:
            layer = resolve_layer(layer, self.lm.arch.n_layers)
            direction = Direction(direction.vector, layer, direction.site, direction.model)
        return generate_with_steering(self.lm, prompt, direction, coefficient, **options)[0]  # type: ignore[arg-type]
