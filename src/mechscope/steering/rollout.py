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

**Shards.** The job's ``generate`` calls (units: condition x rollout x batch, in that loop order) are cut
into shards of ``units_per_shard`` units by `make_plan`, which runs once on a loaded model through the runner
(it renders the prompts and computes the reference norms). `RolloutTask` runs a shard on any loaded model,
here (`mechscope.distributed.LocalRunner`, the default) or on Ray workers, under the seeds above, and writes
its rows as one JSON part, atomically, into ``OUT.parts/``. `gather` checks the parts against the plan and
concatenates them in shard order, the order of the loop, so the rows are the same on every backend. With
``out``, a job rerun after a kill skips the parts already there.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mechscope.core.direction import Direction
from mechscope.core.lm import LanguageModel
from mechscope.distributed.parts import PartsFolder
from mechscope.distributed.runner import LocalRunner, Runner
from mechscope.errors import InputError
from mechscope.progress import bar
from mechscope.steering.generate import Phase, steering_ops
from mechscope.steering.rollout_plan import (
    PART_KIND,
    ROLLOUT_SEED_STRIDE,
    Condition,
    RolloutPlan,
    Scale,
    Unit,
    make_plan,
    parse_scale,
    parse_scales,
    reference_norm,
    render_prompt,
    scale_label,
    seed_for,
)
from mechscope.steering.rollout_results import RolloutRow, Rollouts
from mechscope.storage.atomic import atomic_write, check_target

__all__ = [
    "ROLLOUT_SEED_STRIDE",
    "Condition",
    "RolloutPlan",
    "RolloutTask",
    "Scale",
    "Unit",
    "gather",
    "generate_unit",
    "make_plan",
    "parse_scale",
    "parse_scales",
    "read_part",
    "reference_norm",
    "render_prompt",
    "rollouts",
    "scale_label",
    "seed_for",
]


def generate_unit(
    lm: LanguageModel, plan: RolloutPlan, vectors: Mapping[str, Direction], unit: Unit
) -> list[RolloutRow]:
    """The rows of one unit: batch ``batch_index`` of one condition and rollout, under its seed."""
    index, rollout, batch_index = unit
    condition, settings = plan.conditions[index], plan.settings
    prompts = plan.prompts[condition.prompts]
    size = int(settings["batch_size"])
    start = batch_index * size
    ops = None
    if condition.steered:
        ops = steering_ops(lm, vectors[condition.vector], condition.coefficient, positions=settings["positions"])
    options: dict[str, Any] = {"max_new_tokens": settings["max_new_tokens"], "do_sample": settings["temperature"] > 0}
    if settings["temperature"] > 0:
        options["temperature"] = settings["temperature"]
    batch_seed = seed_for(int(settings["seed"]), rollout, batch_index)
    torch.manual_seed(batch_seed)
    context = lm.intervene(ops) if ops is not None else contextlib.nullcontext()  # type: ignore[arg-type]
    with context:
        texts = lm.generate(list(prompts[start : start + size]), **options)
    return [
        RolloutRow(
            question_id=start + offset,
            question=plan.questions[start + offset],
            prompt=prompts[start + offset],
            vector=condition.vector,
            scale=condition.scale,
            coefficient=condition.coefficient,
            added_norm=condition.added_norm,
            rollout=rollout,
            seed=batch_seed,
            text=text,
        )
        for offset, text in enumerate(texts)
    ]


@dataclass(frozen=True)
class RolloutTask:
    """The shards of one rollout job, as a picklable `mechscope.distributed.ShardTask` (vectors included)."""

    plan: RolloutPlan
    vectors: dict[str, Direction]
    parts: PartsFolder

    def run(self, lm: LanguageModel, shard: int) -> None:
        """Generate shard ``shard``'s units and write their rows as one part, unless a complete one is there."""
        path = self.parts.path(shard)
        if read_part(path, self.plan, shard) is not None:
            return  # a worker that died after writing it: its rerun must not write the part twice
        rows = [
            row.model_dump()
            for unit in self.plan.shards[shard]
            for row in generate_unit(lm, self.plan, self.vectors, unit)
        ]
        text = json.dumps({"kind": PART_KIND, "units": [list(unit) for unit in self.plan.shards[shard]], "rows": rows})
        # no fsync per part: a part is checked when the merge or a rerun reads it, and remade if damaged
        atomic_write(path, lambda temporary: temporary.write_text(text, encoding="utf-8"), fsync=False)


def read_part(path: Path, plan: RolloutPlan, shard: int) -> list[RolloutRow] | None:
    """The rows of ``shard``'s part, or None when it is missing, damaged or holds other units or rows."""
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        units = [list(unit) for unit in plan.shards[shard]]
        if stored.get("kind") != PART_KIND or stored.get("units") != units:
            return None
        rows = [RolloutRow(**row) for row in stored["rows"]]
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None  # missing, or never complete (atomic writes make this rare): redo it
    found = [(row.question_id, row.vector, row.scale, row.rollout, row.seed) for row in rows]
    return rows if found == plan.expected(shard) else None


def gather(plan: RolloutPlan, parts: PartsFolder, dataset: str = "questions") -> Rollouts:
    """The job's rows from a complete parts folder, in the order of the plan's units (the local loop's order).

    Raises:
        InputError: a shard missing or one the plan lacks (`PartsFolder.check`), or a part that is damaged
            or holds other units than its shard's.
    """
    parts.check()
    rows: list[RolloutRow] = []
    for shard in range(len(plan.shards)):
        found = read_part(parts.path(shard), plan, shard)
        if found is None:
            raise InputError(
                f"part {shard} in '{parts.folder}' is damaged or holds other rows than its shard; rerun the job"
            )
        rows.extend(found)
    return Rollouts(
        model=plan.model, dataset=dataset, rows=rows, settings=plan.settings, reference_norms=plan.reference_norms
    )


def rollouts(
    lm: LanguageModel | None,
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
    out: str | os.PathLike[str] | None = None,
    runner: Runner | None = None,
    units_per_shard: int = 1,
    on_shard: Callable[[int], None] | None = None,
) -> Rollouts:
    """Generate ``rollouts`` continuations per question for vanilla, prompted and every vector x scale.

    See the module docstring for what the conditions, scales, seeds and shards mean.

    Args:
        lm: the model (None when ``runner`` holds it, e.g. on Ray workers).
        out: the rollouts table to write (Parquet); the finished shards wait in ``OUT.parts/`` beside it, so
            a rerun after a kill resumes. None: nothing is written (the parts live in a temporary folder,
            which Ray workers on other machines cannot see).
        runner: where the shards run (default: here, on ``lm``); see `mechscope.distributed`.
        units_per_shard: ``generate`` calls per shard (one part file each).
        on_shard: called after each shard is saved (progress reporting, tests of interruption).

    Examples:
        One question, greedy, a pirate direction at its own norm and at twice it, next to vanilla; every
        condition's row was generated under the same seed:

        >>> import mechscope as ms
        >>> from mechscope.steering.directions import diff_of_means
        >>> lm = ms.load("toy")
        >>> topics = ["the sea", "the ship", "the weather", "the town"]
        >>> towards = diff_of_means(lm, [f"<pirate> Tell me about {t}." for t in topics],
        ...                         [f"<formal> Tell me about {t}." for t in topics], layers=[1])[1]
        >>> found = rollouts(lm, ["<formal> Tell me about the sea."], {"pirate": towards}, scales=["learned", 2.0],
        ...                  max_new_tokens=8, temperature=0)
        >>> for row in found.rows:
        ...     print(f"{row.condition:15} {row.seed} {row.added_norm:5.1f} {row.text!r}")
        vanilla         0   0.0 ' It is, indeed, most agreeable.'
        pirate@learned  0  10.9 ' It is, Aye, the sea be'
        pirate@2        0  21.8 ' Ahoy! the sea be full Ahoy?'

    Raises:
        InputError: no questions, a bad scale or option, a vector named like a baseline, a zero vector, or a
            parts folder of another job beside ``out``.
        ModelLoadError: a vector does not fit the model.
    """
    if runner is None:
        if lm is None:
            raise InputError("rollouts need a model or a runner that holds one")
        runner = LocalRunner(lm)
    plan = runner.call(
        make_plan, questions, vectors, scales=scales, normalize=normalize, rollouts=rollouts, seed=seed,
        max_new_tokens=max_new_tokens, temperature=temperature, system_prompt=system_prompt,
        prompted_prefix=prompted_prefix, prompted_suffix=prompted_suffix,
        prompted_system_prompt=prompted_system_prompt, positions=positions, batch_size=batch_size,
        units_per_shard=units_per_shard,
    )  # fmt: skip
    with contextlib.ExitStack() as stack:
        if out is None:
            target = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mechscope-rollouts-"))) / "r.parquet"
        else:
            target = check_target(out)
        parts = PartsFolder(target, plan.job(), len(plan.shards), suffix=".json").open()
        todo = [shard for shard in range(len(plan.shards)) if read_part(parts.path(shard), plan, shard) is None]
        total = sum(len(shard) for shard in plan.shards)
        with bar("rollouts", total, enabled=progress) as shown:
            if shown is not None:
                shown.advance(total - sum(len(plan.shards[shard]) for shard in todo))

            def finished(shard: int) -> None:
                if shown is not None:
                    shown.advance(len(plan.shards[shard]))
                if on_shard is not None:
                    on_shard(shard)

            runner.run(RolloutTask(plan, dict(vectors), parts), todo, on_done=finished)
        result = gather(plan, parts, dataset)
        if out is not None:
            result.to_parquet(target)
        parts.remove()
    return result
