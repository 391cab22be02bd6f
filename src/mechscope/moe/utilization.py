"""Expert utilization over a corpus: how many tokens each expert gets, and the family's load-balancing loss.

Everything is accumulated from streamed sums (`mechscope.moe.routing.routing`, one batch at a time), so a
corpus of any size costs one batch of memory. Counts come from the router's own choice (``expert_index``).
The load-balancing loss is transformers' ``load_balancing_loss_func``, which every MoE family of the map
(Mixtral, Qwen2/3-MoE, OLMoE, GPT-OSS, Granite-MoE) defines identically and calls with the attention mask:
``n_experts * sum_e f_e * P_e``, where ``f_e`` is the fraction of top-k slots that go to expert e when the
softmax probabilities are ranked (as that function ranks them, in the logits' dtype) and ``P_e`` the mean
softmax probability of e, both pooled over every MoE layer and every real token. Its sums are linear, so
adding them batch by batch gives the value of the whole corpus at once.

The corpus is cut into shards of consecutive prompts (`make_plan`; ``shard_size`` prompts each, by default
`SHARD_BATCHES` batches). Each shard's sums are a part file (`UtilizationTask`, written atomically into a
`mechscope.distributed.PartsFolder`), and `gather` adds the parts in shard order. The shards run on a
`mechscope.distributed.Runner`: in this process by default, or on Ray workers; both go through the same
shards and the same merge, so the result is the same to the last bit on either backend. With ``out`` the
parts are kept in ``OUT.parts/`` until the result is written, so a killed run resumes where it stopped.

Examples:
    >>> import mechscope as ms
    >>> lm = ms.load("toy-moe")
    >>> result = utilization(lm, ["The capital of France is", "Two plus two is"])
    >>> result.tokens == sum(len(lm.tokenizer(p)["input_ids"]) for p in ["The capital of France is", "Two plus two is"])
    True
    >>> round(sum(result.layer(0).share), 6) == lm.arch.top_k
    True
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mechscope.distributed.parts import PartsFolder
from mechscope.distributed.runner import LocalRunner, Runner
from mechscope.errors import InputError
from mechscope.moe.info import require_moe
from mechscope.moe.results import LayerUtilization, Utilization
from mechscope.moe.routing import RoutingBatch, routing
from mechscope.progress import bar
from mechscope.storage.atomic import atomic_write_text
from mechscope.storage.tensors import StoredFileError, load_tensors, save_tensors, stored_meta

if TYPE_CHECKING:
    from torch import Tensor

    from mechscope.core.lm import LanguageModel

#: A shard is this many batches of prompts unless ``shard_size`` says otherwise.
SHARD_BATCHES = 4
PART_KIND = "moe-utilization-part"


def utilization(
    lm: LanguageModel | None,
    prompts: Sequence[str],
    *,
    batch_size: int = 32,
    max_tokens: int | None = None,
    cold_threshold: float = 0.01,
    progress: bool = False,
    shard_size: int | None = None,
    out: str | os.PathLike[str] | None = None,
    runner: Runner | None = None,
    on_shard: Callable[[int], None] | None = None,
) -> Utilization:
    """Count, per MoE layer, the tokens each expert receives over ``prompts`` (padding never counts).

    Args:
        lm: the model (None when ``runner`` holds it, e.g. on Ray workers).
        batch_size, max_tokens: at most this many prompts, and padded tokens, per forward pass.
        cold_threshold: an expert whose share (fraction of tokens routed to it) is below this is cold.
        progress: a progress bar on stderr (only on a terminal), advanced shard by shard.
        shard_size: prompts per shard (default ``SHARD_BATCHES * batch_size``); the sums, and so the
            result, depend on it in the last bits only (the order in which floats are added).
        out: also write the result as JSON to this file (atomically). The shards' parts are kept in
            ``OUT.parts/`` until then, so a rerun after a kill runs only the missing shards; without
            ``out`` they live in a temporary folder, removed at the end.
        runner: where the shards run (default: here, on ``lm``); see `mechscope.distributed`.
        on_shard: called after each shard is saved (progress reporting, tests of interruption).

    Examples:
        >>> import mechscope as ms, tempfile
        >>> from pathlib import Path
        >>> lm = ms.load("toy-moe")
        >>> prompts = ["Tell me the time in Bern. <call>time(city=Bern)</call>", "The capital of France is Paris."]
        >>> out = Path(tempfile.mkdtemp()) / "usage.json"
        >>> usage = utilization(lm, prompts, shard_size=1, out=out, cold_threshold=0.4)  # two shards, resumable
        >>> usage.tokens, usage.layer(1).counts, [layer.cold for layer in usage.layers]
        (27, [14, 11, 16, 13], [[3], [], [2], [1]])
        >>> round(usage.load_balancing_loss, 3), Utilization.model_validate_json(out.read_text()) == usage
        (2.002, True)

    Raises:
        MoEError: the model has no experts.
        InputError: the corpus is empty, a prompt is empty or too long, the threshold is not in [0, 1], a
            bad batch or shard size, or ``OUT.parts/`` holds the parts of another job.
    """
    if lm is not None:
        require_moe(lm)
    if not (isinstance(cold_threshold, int | float) and 0 <= cold_threshold <= 1):
        raise InputError(f"the cold threshold is a share of tokens in [0, 1], got {cold_threshold}")
    if isinstance(prompts, str):
        raise InputError("utilization takes a list of prompts (a corpus), not one string")
    if len(prompts) == 0:
        raise InputError("the corpus is empty; give at least one prompt (one per line of the prompts file)")
    if runner is None:
        if lm is None:
            raise InputError("utilization needs a model or a runner that holds one")
        runner = LocalRunner(lm)
    corpus = tuple(prompts)
    plan = runner.call(make_plan, corpus, batch_size=batch_size, max_tokens=max_tokens, shard_size=shard_size)
    scratch: Path | None = None
    if out is None:  # nothing to resume into: the parts live in a folder of their own, removed at the end
        scratch = Path(tempfile.mkdtemp(prefix="mechscope-utilization-"))
        target = scratch / "utilization.json"
    else:
        target = Path(out)
    try:
        parts = plan_parts(plan, target).open()
        todo = [shard for shard in range(len(plan.shards)) if not _part_done(parts.path(shard), plan, shard)]
        _run(runner, UtilizationTask(corpus, plan, target), todo, progress, on_shard)
        result = gather(plan, target, cold_threshold=cold_threshold)
        if out is not None:
            atomic_write_text(target, result.model_dump_json(indent=2))
        parts.remove()
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return result


def _run(
    runner: Runner,
    task: UtilizationTask,
    todo: list[int],
    progress: bool,
    on_shard: Callable[[int], None] | None,
) -> None:
    """Run the shards ``todo`` on ``runner``, with a bar over the corpus's prompts (finished shards count)."""
    sizes = [stop - start for start, stop in task.plan.shards]
    with bar("utilization", task.plan.prompts, enabled=progress) as shown:
        if shown is not None:
            shown.advance(task.plan.prompts - sum(sizes[shard] for shard in todo))

        def finished(shard: int) -> None:
            if shown is not None:
                shown.advance(sizes[shard])
            if on_shard is not None:
                on_shard(shard)

        runner.run(task, todo, on_done=finished)


@dataclass(frozen=True)
class UtilizationPlan:
    """One utilization job (saved as ``plan.json``): the model, the corpus, its batching and its shards.

    ``shards`` are ``(start, stop)`` ranges of consecutive prompts, in order, covering the corpus.
    The cold threshold is not part of it: a rerun with another threshold reuses the parts.
    """

    model: str
    revision: str
    family: str
    n_experts: int
    top_k: int
    moe_layers: tuple[int, ...]
    aux_loss_coef: float | None
    corpus_sha256: str
    prompts: int
    batch_size: int
    max_tokens: int | None
    shards: tuple[tuple[int, int], ...]


def make_plan(
    lm: LanguageModel,
    prompts: Sequence[str],
    *,
    batch_size: int = 32,
    max_tokens: int | None = None,
    shard_size: int | None = None,
) -> UtilizationPlan:
    """Check and tokenize every prompt, and cut the corpus into shards (nothing runs through the model).

    Raises:
        MoEError: the model has no experts.
        InputError: no prompts, a prompt empty or too long for the model, a bad batch or shard size.
    """
    from mechscope.core.bulk import token_ids  # imports torch: only when called (see mechscope.moe)

    require_moe(lm)
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    if max_tokens is not None and max_tokens < 1:
        raise InputError(f"max_tokens must be at least 1, got {max_tokens}")
    size = SHARD_BATCHES * batch_size if shard_size is None else shard_size
    if size < 1:
        raise InputError(f"shard_size must be at least 1, got {size}")
    if len(prompts) == 0:
        raise InputError("the corpus is empty; give at least one prompt (one per line of the prompts file)")
    token_ids(lm, prompts)  # every prompt is checked before the first shard runs, not when its shard does
    coef = getattr(lm.model.config, "router_aux_loss_coef", None)
    return UtilizationPlan(
        model=lm.source,
        revision=str(getattr(lm.model.config, "_commit_hash", None) or ""),
        family=lm.arch.family,
        n_experts=lm.arch.n_experts,
        top_k=lm.arch.top_k,
        moe_layers=tuple(lm.arch.moe_layers),
        aux_loss_coef=None if coef is None else float(coef),
        corpus_sha256=corpus_digest(prompts),
        prompts=len(prompts),
        batch_size=batch_size,
        max_tokens=max_tokens,
        shards=tuple((start, min(start + size, len(prompts))) for start in range(0, len(prompts), size)),
    )


def corpus_digest(prompts: Sequence[str]) -> str:
    """SHA-256 of the prompts in order (as a JSON list): what tells two corpora apart in a plan."""
    return hashlib.sha256(json.dumps(list(prompts), ensure_ascii=False).encode("utf-8")).hexdigest()


def plan_parts(plan: UtilizationPlan, out: str | os.PathLike[str]) -> PartsFolder:
    """The parts folder of ``plan`` for the job writing ``out`` (``OUT.parts/``; `open` it before use)."""
    return PartsFolder(out, asdict(plan), len(plan.shards))


@dataclass(frozen=True)
class UtilizationTask:
    """The shards of one utilization job, as a picklable `mechscope.distributed.ShardTask`."""

    prompts: tuple[str, ...]
    plan: UtilizationPlan
    out: Path

    def run(self, lm: LanguageModel, shard: int) -> None:
        """Sum shard ``shard``'s routing and write its part atomically, unless a complete part is there."""
        path = plan_parts(self.plan, self.out).path(shard)
        if _part_done(path, self.plan, shard):
            return  # a worker that died after writing it: its rerun must not write the part twice
        start, stop = self.plan.shards[shard]
        sums = _Sums(self.plan)
        for batch in routing(
            lm, self.prompts[start:stop], batch_size=self.plan.batch_size, max_tokens=self.plan.max_tokens,
            with_logits=True,
        ):  # fmt: skip
            sums.add(batch)
        tensors = {"counts": sums.counts, "slots": sums.slots, "probability": sums.probability}
        meta = {"shard": shard, "prompts": [start, stop], "tokens": sums.tokens}
        # no fsync per part: a part is checked when the merge or a rerun reads it, and remade if damaged
        save_tensors(path, tensors, kind=PART_KIND, meta=meta, fsync=False)


def _part_done(path: Path, plan: UtilizationPlan, shard: int) -> bool:
    meta = stored_meta(path, PART_KIND)
    return meta is not None and meta.get("prompts") == list(plan.shards[shard])


def gather(plan: UtilizationPlan, out: str | os.PathLike[str], *, cold_threshold: float = 0.01) -> Utilization:
    """The `Utilization` of a complete parts folder (``OUT.parts/``): its shards' sums added in shard order.

    Raises:
        InputError: a shard missing (the job is unfinished: rerun it), a part the plan has no shard for, a
            damaged part, or a part that holds another range of prompts than its shard.
    """
    parts = plan_parts(plan, out)
    parts.check()
    sums = _Sums(plan)
    for shard, (start, stop) in enumerate(plan.shards):
        try:
            stored = load_tensors(parts.path(shard), kind=PART_KIND)
        except StoredFileError as error:
            raise InputError(f"part {shard} in '{parts.folder}' is damaged ({error}); rerun the job") from None
        if stored.meta.get("shard") != shard or stored.meta.get("prompts") != [start, stop]:
            raise InputError(f"part {shard} in '{parts.folder}' holds other prompts than its shard; delete it")
        sums.absorb(stored.tensors, int(stored.meta["tokens"]))
    return Utilization(
        model=plan.model,
        family=plan.family,
        n_experts=plan.n_experts,
        top_k=plan.top_k,
        prompts=plan.prompts,
        tokens=sums.tokens,
        cold_threshold=float(cold_threshold),
        load_balancing_loss=sums.pooled_loss(),
        aux_loss_coef=plan.aux_loss_coef,
        layers=[sums.layer(row, layer, cold_threshold) for row, layer in enumerate(plan.moe_layers)],
    )


def balance_sums(logits: Tensor, top_k: int) -> tuple[Tensor, Tensor]:
    """``(slots, probability)``, each ``[expert]`` float64: the two sums of transformers' load-balancing loss.

    ``logits`` are one layer's router logits of real tokens, ``[tokens, expert]``. As in
    ``load_balancing_loss_func``: the softmax is taken in the logits' own dtype, its top-k ranks the experts
    (``slots`` counts them), and ``probability`` sums the probabilities in float32.
    """
    import torch

    probs = torch.softmax(logits, dim=-1)
    _, chosen = torch.topk(probs, top_k, dim=-1)
    slots = torch.bincount(chosen.reshape(-1), minlength=logits.shape[-1]).double()
    return slots, probs.float().sum(dim=0).double()


def balance_loss(slots: Tensor, probability: Tensor, rows: int) -> float:
    """``n_experts * sum_e (slots_e / rows) * (probability_e / rows)``, the load-balancing loss from its sums."""
    if rows == 0:
        return float("nan")
    return float(slots.shape[-1] * ((slots / rows) * (probability / rows)).sum())


class _Sums:
    """Running sums over batches or shards: routed counts, the load-balancing loss's two sums, per MoE layer."""

    def __init__(self, plan: UtilizationPlan) -> None:
        import torch

        self.layers = list(plan.moe_layers)
        self.top_k = plan.top_k
        shape = (len(self.layers), plan.n_experts)
        self.counts = torch.zeros(shape, dtype=torch.long)
        self.slots = torch.zeros(shape, dtype=torch.float64)
        self.probability = torch.zeros(shape, dtype=torch.float64)
        self.tokens = 0

    def add(self, batch: RoutingBatch) -> None:
        import torch

        assert batch.router_logits is not None
        n = self.counts.shape[1]
        for row, layer in enumerate(self.layers):
            chosen = batch.expert_index[layer].reshape(-1)
            self.counts[row] += torch.bincount(chosen, minlength=n).cpu()
            slots, probability = balance_sums(batch.router_logits[layer], self.top_k)
            self.slots[row] += slots.cpu()
            self.probability[row] += probability.cpu()
        self.tokens += batch.tokens

    def absorb(self, part: dict[str, Tensor], tokens: int) -> None:
        """Add one shard's sums (a part's tensors), refusing a part of another shape."""
        for name in ("counts", "slots", "probability"):
            mine = getattr(self, name)
            theirs = part.get(name)
            if theirs is None or theirs.shape != mine.shape or theirs.dtype != mine.dtype:
                raise InputError(f"a part's '{name}' is not [{len(self.layers)} layers, experts]; delete the parts")
            mine += theirs
        self.tokens += tokens

    def pooled_loss(self) -> float:
        """The loss over every layer at once (transformers' definition: the sums pooled over layers)."""
        return balance_loss(self.slots.sum(dim=0), self.probability.sum(dim=0), self.tokens * len(self.layers))

    def layer(self, row: int, layer: int, cold_threshold: float) -> LayerUtilization:
        counts = [int(c) for c in self.counts[row].tolist()]
        share = [c / self.tokens for c in counts]
        entropy = _entropy(counts)
        n = len(counts)
        return LayerUtilization(
            layer=layer,
            counts=counts,
            share=share,
            load_entropy=entropy,
            load_entropy_normalised=entropy / math.log(n) if n > 1 else 1.0,
            load_balancing_loss=balance_loss(self.slots[row], self.probability[row], self.tokens),
            cold=[e for e, s in enumerate(share) if s < cold_threshold],
        )


def _entropy(counts: list[int]) -> float:
    """Entropy (nats) of the distribution ``counts / sum(counts)`` (0 log 0 = 0)."""
    total = sum(counts)
    return -sum(c / total * math.log(c / total) for c in counts if c)
