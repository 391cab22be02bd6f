"""Refinement stages 1–3: more contexts for the concepts a reader is unsure of, folded into the encyclopedia.

* **Stage 1** puts each concept's term into training templates it has not had yet (and, once per concept,
  into held-out templates, stored apart for evaluation and never folded into a mean).
* **Stage 2** asks a generator model to write about the term and uses what it writes (with the term in it)
  as contexts.
* **Stage 3** is adversarial: of the training templates a concept has not had, it keeps those on which a
  reader (the interpreter) gives the true concept the lowest probability.

Every stage captures the encyclopedia's layers with the encyclopedia's pooling and goes through
`mechscope.concepts.encyclopedia.add_samples` (running mean and variance, copy-and-swap): a failure loses
nothing.

The capture of the chosen contexts is sharded like the stage-0 bootstrap: shard ``i`` is contexts
``i * batch_size`` up to the next ``batch_size``, in order; `RefineTask` pools one shard and writes its
part atomically into ``ENC.refine.parts/`` beside the encyclopedia (never ``ENC.parts/``, the bootstrap's).
The plan names the model, layers, pooling, stage and the digests of the contexts and of the encyclopedia
file as it is now, so a rerun after an interruption reuses the finished parts, and a changed encyclopedia or
context list is refused. The merge checks the parts, concatenates them in plan order, calls `add_samples`
once and removes the folder. The shards run on a `mechscope.distributed.Runner`: here (the default) or on
Ray workers; both run the same shards, so both give the same file.

Examples:
    >>> import tempfile, pathlib
    >>> import mechscope as ms
    >>> from mechscope.concepts.bootstrap import bootstrap
    >>> from mechscope.concepts.sources import toyworld_concepts
    >>> lm, out = ms.load("toy"), pathlib.Path(tempfile.mkdtemp()) / "enc.h5"
    >>> enc = bootstrap(lm, toyworld_concepts(), out, layers=[-1], progress=False)
    >>> contexts = template_contexts(enc, range(3), 2, held_out=1)
    >>> refine(lm, out, contexts, 1, batch_size=4).count()[:4].tolist()
    [3, 3, 3, 1]
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from mechscope.concepts.concept import Concept
from mechscope.concepts.encyclopedia import GENERATED, HELD_OUT, TRAIN, Encyclopedia, add_samples
from mechscope.concepts.pooling import pooled
from mechscope.concepts.templates import TemplateBank, bank_for, choose
from mechscope.distributed.parts import PartsFolder, parts_folder
from mechscope.distributed.runner import LocalRunner, Runner
from mechscope.errors import InputError
from mechscope.progress import bar
from mechscope.storage.tensors import StoredFileError, load_tensors, save_tensors

if TYPE_CHECKING:
    from torch import Tensor

    from mechscope.core.lm import LanguageModel

#: A reader's probability of each sample's true concept: ``score(x [m, n_layers, d], concept [m]) -> [m]``.
TrueConceptScore = Callable[[np.ndarray, np.ndarray], np.ndarray]
GENERATOR_PROMPT = "Here is a sentence about {t}:"
PART_KIND = "refine-part"


@dataclass(frozen=True)
class Context:
    """One text to capture for a concept: its template (or -2 if generated) and split."""

    concept: int
    template: int
    split: int
    text: str


def bank_of(concept: Concept, bank: str) -> TemplateBank:
    """The template bank ``bank`` for ``concept``; ``auto`` means ``toyworld`` for the organisms' concepts.

    Examples:
        >>> from mechscope.concepts.concept import Concept
        >>> from mechscope.concepts.sources import toyworld_concepts
        >>> toy = bank_of(toyworld_concepts()[0], "auto")  # France: the organisms' templates of countries
        >>> toy.name, len(toy.train), len(toy.held_out), toy.train[0].format(t="France")
        ('toy:country', 3, 1, 'The capital of France is')
        >>> bank_of(Concept(id="dog.n.01", term="dog", category="noun.animal"), "auto").name
        'general'
    """
    if bank == "auto":
        bank = "toyworld" if concept.category.startswith("toy:") else "general"
    return bank_for(bank, concept.category)


def used_templates(encyclopedia: Encyclopedia) -> tuple[dict[int, set[int]], set[int]]:
    """Per concept the training templates it already has, and the concepts that have held-out samples.

    Examples:
        >>> import tempfile, pathlib
        >>> import mechscope as ms
        >>> from mechscope.concepts.bootstrap import bootstrap
        >>> from mechscope.concepts.concept import ConceptList
        >>> from mechscope.concepts.sources import toyworld_concepts
        >>> lm, out = ms.load("toy"), pathlib.Path(tempfile.mkdtemp()) / "enc.h5"
        >>> enc = bootstrap(lm, ConceptList(toyworld_concepts().concepts[:3]), out, progress=False)
        >>> used_templates(enc)  # stage 0 has bare terms only
        ({}, set())
        >>> enc = refine(lm, out, template_contexts(enc, [0], 2, held_out=1), 1)
        >>> used_templates(enc)  # concept 0's training templates, and that it has held-out samples now
        ({0: {1, 2}}, {0})
    """
    samples = encyclopedia.samples(layers=[])
    used: dict[int, set[int]] = {}
    for concept, template, split in zip(samples.concept, samples.template, samples.split, strict=True):
        if split == TRAIN and template >= 0:
            used.setdefault(int(concept), set()).add(int(template))
    return used, {int(c) for c, s in zip(samples.concept, samples.split, strict=True) if s == HELD_OUT}


def _fresh(concept_id: str, pool: int, used: set[int]) -> list[int]:
    return [i for i in choose(concept_id, pool, pool) if i not in used]


def template_contexts(
    encyclopedia: Encyclopedia, indices: Sequence[int], n: int, *, held_out: int = 2, bank: str = "auto"
) -> list[Context]:
    """Stage 1: ``n`` unused training templates per concept, plus ``held_out`` held-out ones where it has none.

    Examples:
        >>> import tempfile, pathlib
        >>> import mechscope as ms
        >>> from mechscope.concepts.bootstrap import bootstrap
        >>> from mechscope.concepts.concept import ConceptList
        >>> from mechscope.concepts.sources import toyworld_concepts
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "enc.h5"
        >>> enc = bootstrap(ms.load("toy"), ConceptList(toyworld_concepts().concepts[:3]), out, progress=False)
        >>> contexts = template_contexts(enc, [0, 1], 2, held_out=1)
        >>> [(c.concept, c.template, c.split) for c in contexts]  # split 1: held out, for evaluation only
        [(0, 1, 0), (0, 2, 0), (0, 0, 1), (1, 2, 0), (1, 1, 0), (1, 0, 1)]
        >>> contexts[0].text
        "France's capital city is"
        >>> template_contexts(enc, [0], 4)  # the toyworld banks have three training templates
        Traceback (most recent call last):
        mechscope.errors.InputError: toy:country:France has 3 unused training templates, fewer than 4; ask for fewer

    Raises:
        InputError: a concept has fewer than ``n`` unused training templates left.
    """
    used, evaluated = used_templates(encyclopedia)
    contexts = []
    for i in indices:
        concept = encyclopedia.concepts[i]
        templates = bank_of(concept, bank)
        fresh = _fresh(concept.id, len(templates.train), used.get(i, set()))
        if len(fresh) < n:
            raise InputError(f"{concept.id} has {len(fresh)} unused training templates, fewer than {n}; ask for fewer")
        contexts += [Context(i, t, TRAIN, templates.train[t].format(t=concept.term)) for t in fresh[:n]]
        if held_out and i not in evaluated:
            pool = len(templates.held_out)
            for t in choose(concept.id, min(held_out, pool), pool, "held_out"):
                contexts.append(Context(i, t, HELD_OUT, templates.held_out[t].format(t=concept.term)))
    return contexts


def generated_contexts(
    generator: LanguageModel,
    encyclopedia: Encyclopedia,
    indices: Sequence[int],
    n: int,
    *,
    prompt: str = GENERATOR_PROMPT,
    max_new_tokens: int = 32,
    temperature: float = 0.8,
    seed: int = 0,
) -> list[Context]:
    """Stage 2: ``n`` contexts per concept written by ``generator`` (sampled), each containing the term.

    A continuation that does not mention the term gets the term put in front (``"dog: ..."``), so the
    context is always about the concept it is filed under.

    Examples:
        >>> import tempfile, pathlib
        >>> import mechscope as ms
        >>> from mechscope.concepts.bootstrap import bootstrap
        >>> from mechscope.concepts.concept import ConceptList
        >>> from mechscope.concepts.sources import toyworld_concepts
        >>> lm, out = ms.load("toy"), pathlib.Path(tempfile.mkdtemp()) / "enc.h5"
        >>> enc = bootstrap(lm, ConceptList(toyworld_concepts().concepts[:3]), out, progress=False)
        >>> contexts = generated_contexts(lm, enc, [0], 2, max_new_tokens=6)  # the organism writes about France
        >>> [(c.concept, c.template, c.split) for c in contexts]
        [(0, -2, 0), (0, -2, 0)]
        >>> [c.text for c in contexts]  # the toy's text never names France: the term is put in front
        ['France: Listen market Xe Venezuela ple How', 'France: <formal> Kindly allow me to']
    """
    import torch

    if "{t}" not in prompt:
        raise InputError("the generator prompt needs a {t} slot for the term")
    torch.manual_seed(seed)
    contexts = []
    for i in indices:
        term = encyclopedia.concepts[i].term
        asks = [prompt.format(t=term)] * n
        texts = generator.generate(asks, max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature)
        for text in texts:
            body = " ".join(text.split())
            contexts.append(Context(i, GENERATED, TRAIN, body if term.lower() in body.lower() else f"{term}: {body}"))
    return contexts


def adversarial_contexts(
    lm: LanguageModel | None,
    encyclopedia: Encyclopedia,
    indices: Sequence[int],
    n: int,
    score: TrueConceptScore,
    *,
    bank: str = "auto",
    batch_size: int = 64,
    runner: Runner | None = None,
) -> list[Context]:
    """Stage 3: of each concept's unused training templates, the ``n`` where ``score`` is lowest.

    The candidates are captured in one call on ``runner`` (default: here, on ``lm``); ``score`` runs here.

    Examples:
        Here the score is closeness to the concept's stage-0 mean, so the context least like the bare term wins:

        >>> import tempfile, pathlib
        >>> import numpy as np
        >>> import mechscope as ms
        >>> from mechscope.concepts.bootstrap import bootstrap
        >>> from mechscope.concepts.concept import ConceptList
        >>> from mechscope.concepts.sources import toyworld_concepts
        >>> lm, out = ms.load("toy"), pathlib.Path(tempfile.mkdtemp()) / "enc.h5"
        >>> enc = bootstrap(lm, ConceptList(toyworld_concepts().concepts[:3]), out, progress=False)
        >>> def closeness(x, concept):
        ...     return -np.linalg.norm(x[:, 0] - enc.mean(3)[concept], axis=1)
        >>> chosen = adversarial_contexts(lm, enc, [0, 2], 1, closeness)
        >>> [(c.concept, c.template, c.split) for c in chosen]
        [(0, 2, 0), (2, 2, 0)]
        >>> chosen[0].text
        'Q: What is the capital of France? A:'
    """
    used, _ = used_templates(encyclopedia)
    candidates = []
    for i in indices:
        concept = encyclopedia.concepts[i]
        templates = bank_of(concept, bank)
        for t in _fresh(concept.id, len(templates.train), used.get(i, set())):
            candidates.append(Context(i, t, TRAIN, templates.train[t].format(t=concept.term)))
    if not candidates:
        raise InputError(
            "these concepts have no unused training templates left for stage 3 (all are in the encyclopedia); "
            "use fewer stage-1 --templates, or stage 2 for new contexts"
        )
    values = _runner(lm, runner).call(_pool, *_inputs(encyclopedia, candidates), batch_size)
    x = np.stack([values[layer].numpy() for layer in encyclopedia.info.layers], axis=1)
    p = score(x, np.array([c.concept for c in candidates]))
    chosen: list[Context] = []
    for i in indices:
        mine = [j for j, c in enumerate(candidates) if c.concept == i]
        chosen += [candidates[j] for j in sorted(mine, key=lambda j: float(p[j]))[:n]]
    return chosen


def _runner(lm: LanguageModel | None, runner: Runner | None) -> Runner:
    if runner is not None:
        return runner
    if lm is None:
        raise InputError("refinement needs a model or a runner that holds one")
    return LocalRunner(lm)


def _inputs(
    encyclopedia: Encyclopedia, contexts: Sequence[Context]
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[int, ...], str]:
    """What a capture of ``contexts`` needs: texts, their concepts' terms, the encyclopedia's layers and pooling."""
    texts = tuple(c.text for c in contexts)
    terms = tuple(encyclopedia.concepts[c.concept].term for c in contexts)
    return texts, terms, tuple(encyclopedia.info.layers), encyclopedia.info.pooling


def _pool(
    lm: LanguageModel, texts: Sequence[str], terms: Sequence[str], layers: Sequence[int], pooling: str, batch_size: int
) -> dict[int, Tensor]:
    """The texts pooled as the encyclopedia pools (``term`` poolings read the concept's term): float32."""
    return pooled(lm, list(texts), layers, pooling=pooling, terms=list(terms), batch_size=batch_size)


def _model_source(lm: LanguageModel) -> str:
    return lm.source


def _file_digest(path: Path) -> str:
    """SHA-256 of the file's bytes: any change to the encyclopedia makes the parts of an earlier run stale."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _contexts_digest(contexts: Sequence[Context], terms: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for context, term in zip(contexts, terms, strict=True):
        row = [context.concept, context.template, context.split, context.text, term]
        digest.update(json.dumps(row, ensure_ascii=False).encode("utf-8") + b"\n")
    return digest.hexdigest()


def _job_name(path: str | os.PathLike[str]) -> Path:
    target = Path(path)
    return target.with_name(target.name + ".refine")  # parts in ENC.refine.parts/: never the bootstrap's ENC.parts/


def refine_parts(path: str | os.PathLike[str]) -> Path:
    """Where refining ``path`` keeps its finished shards: ``ENC.refine.parts/`` (the bootstrap's is ``ENC.parts/``).

    Examples:
        >>> refine_parts("runs/enc.h5").as_posix()
        'runs/enc.h5.refine.parts'
    """
    return parts_folder(_job_name(path))


def make_plan(
    encyclopedia: Encyclopedia, contexts: Sequence[Context], stage: int, batch_size: int
) -> tuple[PartsFolder, RefineTask]:
    """The parts folder (plan) and the task of refining ``encyclopedia`` with ``contexts`` (nothing runs yet).

    Examples:
        >>> import tempfile, pathlib
        >>> import mechscope as ms
        >>> from mechscope.concepts.bootstrap import bootstrap
        >>> from mechscope.concepts.concept import ConceptList
        >>> from mechscope.concepts.sources import toyworld_concepts
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "enc.h5"
        >>> enc = bootstrap(ms.load("toy"), ConceptList(toyworld_concepts().concepts[:3]), out, progress=False)
        >>> contexts = template_contexts(enc, range(3), 1, held_out=0)
        >>> parts, task = make_plan(enc, contexts, 1, batch_size=2)
        >>> parts.n_shards, task.rows(0), task.rows(1), parts.plan["stage"], parts.plan["contexts"]
        (2, [0, 1], [2], 1, 3)
        >>> parts.folder.name, parts.folder.exists()  # nothing runs yet
        ('enc.h5.refine.parts', False)

    Raises:
        InputError: a batch size below 1, or a context of a concept the encyclopedia does not have.
    """
    if batch_size < 1:
        raise InputError(f"the batch size must be at least 1, got {batch_size}")
    if bad := [c.concept for c in contexts if not 0 <= c.concept < len(encyclopedia)]:
        raise InputError(f"a context is of concept {bad[0]}; the encyclopedia has concepts 0..{len(encyclopedia) - 1}")
    texts, terms, layers, pooling = _inputs(encyclopedia, contexts)
    n_shards = -(-len(contexts) // batch_size)
    plan = {
        "job": "refine",
        "model": encyclopedia.info.model,
        "layers": list(layers),
        "pooling": pooling,
        "stage": stage,
        "contexts": len(contexts),
        "contexts_sha256": _contexts_digest(contexts, terms),
        "encyclopedia_sha256": _file_digest(encyclopedia.path),
        "shard_size": batch_size,
        "shards": n_shards,
    }
    parts = PartsFolder(_job_name(encyclopedia.path), plan, n_shards)
    return parts, RefineTask(texts, terms, layers, pooling, batch_size, parts)


@dataclass(frozen=True)
class RefineTask:
    """The capture of one refinement's contexts, shard by shard, as a picklable `mechscope.distributed.ShardTask`."""

    texts: tuple[str, ...]
    terms: tuple[str, ...]
    layers: tuple[int, ...]
    pooling: str
    shard_size: int
    parts: PartsFolder

    def rows(self, shard: int) -> list[int]:
        """The indices of shard ``shard``'s contexts."""
        return list(range(shard * self.shard_size, min((shard + 1) * self.shard_size, len(self.texts))))

    def run(self, lm: LanguageModel, shard: int) -> None:
        """Pool shard ``shard``'s contexts and write its part atomically, unless a complete part is there already."""
        if self.done(shard):
            return  # a worker that died after writing it: its rerun must not write the part twice
        rows = self.rows(shard)
        texts, terms = [self.texts[i] for i in rows], [self.terms[i] for i in rows]
        values = _pool(lm, texts, terms, self.layers, self.pooling, self.shard_size)
        tensors = {f"layer_{layer}": value for layer, value in values.items()}  # float32, as add_samples had
        # no fsync per part: a part is checked when the merge or a rerun reads it, and remade if damaged
        save_tensors(self.parts.path(shard), tensors, kind=PART_KIND, meta={"rows": rows}, fsync=False)

    def done(self, shard: int) -> bool:
        """Whether shard ``shard``'s part is there, readable and of its own contexts."""
        if not self.parts.done(shard):
            return False
        try:
            stored = load_tensors(self.parts.path(shard), kind=PART_KIND)
        except StoredFileError:
            return False  # never complete (atomic writes make this rare): redo it
        return bool(stored.meta.get("rows") == self.rows(shard))


def merge(task: RefineTask, path: str | os.PathLike[str], contexts: Sequence[Context], stage: int) -> None:
    """Fold a complete parts folder into the encyclopedia (one `add_samples`), then remove the folder.

    Examples:
        What `refine` does, step by step: plan, run every shard, merge:

        >>> import tempfile, pathlib
        >>> import mechscope as ms
        >>> from mechscope.concepts.bootstrap import bootstrap
        >>> from mechscope.concepts.concept import ConceptList
        >>> from mechscope.concepts.sources import toyworld_concepts
        >>> lm, out = ms.load("toy"), pathlib.Path(tempfile.mkdtemp()) / "enc.h5"
        >>> enc = bootstrap(lm, ConceptList(toyworld_concepts().concepts[:3]), out, progress=False)
        >>> contexts = template_contexts(enc, range(3), 1, held_out=0)
        >>> parts, task = make_plan(enc, contexts, 1, batch_size=2)
        >>> _ = parts.open()
        >>> for shard in range(parts.n_shards):
        ...     task.run(lm, shard)
        >>> merge(task, out, contexts, 1)
        >>> Encyclopedia(out).count().tolist(), Encyclopedia(out).stage().tolist(), parts.folder.exists()
        ([2, 2, 2], [1, 1, 1], False)

    Raises:
        InputError: a shard missing or extra (`PartsFolder.check`), or a part damaged, of other rows or shapes.
    """
    parts = task.parts
    parts.check()
    d_model = Encyclopedia(path).info.d_model
    blocks: dict[int, list[Tensor]] = {layer: [] for layer in task.layers}
    for shard in range(parts.n_shards):
        try:
            stored = load_tensors(parts.path(shard), kind=PART_KIND)
        except StoredFileError as error:
            raise InputError(f"part {shard} in '{parts.folder}' is damaged ({error}); rerun to redo it") from None
        rows = task.rows(shard)
        if stored.meta.get("rows") != rows:
            raise InputError(f"part {shard} in '{parts.folder}' holds other rows than its shard; delete the folder")
        for layer in task.layers:
            value = stored.tensors.get(f"layer_{layer}")
            if value is None or tuple(value.shape) != (len(rows), d_model):
                raise InputError(f"part {shard} in '{parts.folder}' lacks layer {layer} [{len(rows)}, {d_model}]")
            blocks[layer].append(value)
    add_samples(
        path,
        {layer: torch.cat(blocks[layer]).numpy() for layer in task.layers},
        np.array([c.concept for c in contexts], np.int64),
        np.array([c.template for c in contexts], np.int64),
        np.array([c.split for c in contexts], np.int64),
        stage,
    )
    parts.remove()


def refine(
    lm: LanguageModel | None,
    path: str | os.PathLike[str],
    contexts: Sequence[Context],
    stage: int,
    *,
    batch_size: int = 64,
    progress: bool = False,
    on_shard: Callable[[int], None] | None = None,
    runner: Runner | None = None,
) -> Encyclopedia:
    """Capture ``contexts`` at the encyclopedia's layers, shard by shard, and add them as stage ``stage``.

    Args:
        lm: the model (None when ``runner`` holds it, e.g. on Ray workers).
        batch_size: contexts per shard (and per forward pass).
        on_shard: called after each shard's part is saved (progress reporting, tests of interruption).
        runner: where the shards run (default: here, on ``lm``); see `mechscope.distributed`.

    An interrupted run leaves the encyclopedia as it was and its finished parts in ``ENC.refine.parts/``;
    the same call again runs only the missing shards.

    Examples:
        A run stopped after its first shard leaves the file as it was; the same call again runs the rest:

        >>> import tempfile, pathlib
        >>> import mechscope as ms
        >>> from mechscope.concepts.bootstrap import bootstrap
        >>> from mechscope.concepts.concept import ConceptList
        >>> from mechscope.concepts.sources import toyworld_concepts
        >>> lm, out = ms.load("toy"), pathlib.Path(tempfile.mkdtemp()) / "enc.h5"
        >>> enc = bootstrap(lm, ConceptList(toyworld_concepts().concepts[:3]), out, progress=False)
        >>> contexts = template_contexts(enc, range(3), 2, held_out=1)
        >>> def stop(shard):
        ...     raise RuntimeError(f"stopped after shard {shard}")
        >>> refine(lm, out, contexts, 1, batch_size=3, on_shard=stop)
        Traceback (most recent call last):
        RuntimeError: stopped after shard 0
        >>> Encyclopedia(out).count().tolist()  # unchanged
        [1, 1, 1]
        >>> done = []
        >>> enc = refine(lm, out, contexts, 1, batch_size=3, on_shard=done.append)
        >>> done, enc.count().tolist(), enc.info.stage, len(enc.samples(split="held-out"))
        ([1, 2], [3, 3, 3], 1, 3)

    Raises:
        InputError: no contexts, a stage outside 1–3, the model is not the one the encyclopedia is of, or
            ``ENC.refine.parts/`` holds the parts of another refinement (another file state or contexts).
    """
    encyclopedia = Encyclopedia(path)
    if stage not in (1, 2, 3):
        raise InputError(f"refinement stages are 1, 2 and 3, not {stage}")
    runner = _runner(lm, runner)
    source = runner.call(_model_source)
    if Path(source).name != Path(encyclopedia.info.model).name and source != encyclopedia.info.model:
        raise InputError(
            f"the encyclopedia is of {encyclopedia.info.model}, not {source}; refine it with the same model"
        )
    if not contexts:
        raise InputError("nothing to refine: no contexts (are any concepts uncertain?)")
    parts, task = make_plan(encyclopedia, contexts, stage, batch_size)
    parts.open()
    todo = [shard for shard in range(parts.n_shards) if not task.done(shard)]
    with bar("refine", len(contexts), enabled=progress) as shown:
        if shown is not None:
            shown.advance(len(contexts) - sum(len(task.rows(shard)) for shard in todo))

        def finished(shard: int) -> None:
            if shown is not None:
                shown.advance(len(task.rows(shard)))
            if on_shard is not None:
                on_shard(shard)

        runner.run(task, todo, on_done=finished)
    merge(task, path, contexts, stage)
    return Encyclopedia(path)
