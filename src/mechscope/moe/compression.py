"""Compression of one MoE layer, measured rather than guessed: similar experts, cold experts, an SVD overlay.

What `compression` measures, per layer:

* **Weight similarity** of every pair of experts, raw (cosine of the weight vectors as stored: the naive
  baseline) and aligned: expert b's hidden units permuted to best match a's, as MC-SMoE aligns before merging
  (`mechscope.moe.packed.align`: a linear assignment over each unit's gate row, up row and down column). A
  permutation of hidden units is the same function, so only the aligned cosine says whether two experts
  compute alike. It is never below the raw one, and it is positive even for unrelated experts (the matching
  picks the best of ``hidden!`` orders): ``aligned_cosine_null`` is its value for a pair with the same weight
  statistics and no shared function, the baseline to read it against.
* **Output similarity** on a corpus: for a pair (a, b), the cosine of their own outputs (unweighted by the
  router) on the tokens routed to a or b. These are the tokens a merge would change, so it is the output
  agreement that matters for merging them. Every expert runs on every token of the layer through the
  module's own forward (`LayerBatch.outputs`), in chunks: memory is one chunk of ``experts x tokens x
  d_model`` at a time, the sums are streamed.
* **Merge candidates**: pairs whose aligned weight cosine and output cosine both reach their thresholds.
* **Cold experts**: share of the corpus's tokens below ``cold_threshold``, counted as `mechscope.moe.utilization`
  counts them (from the same pass).
* **SVD overlay**: each expert = shared base + its residual truncated to rank r (float64; singular values by
  ``torch.linalg.svdvals``, the truncation by `mechscope.moe.packed.truncated`).
  The base is the mean of the experts after aligning each one's hidden units to expert 0's. Measured on
  toy-moe, this reconstructs better than the mean of the experts as stored at every rank below full (base
  alone: relative error 0.80 aligned vs 0.87 unaligned; rank 16: 0.59 vs 0.61); aligning each expert again
  to that mean changes nothing there, so one alignment to a reference is kept. Both errors are reported
  (``relative_error``, ``unaligned_error``). The aligned reconstruction is permuted back to each expert's
  stored order, so the overlay at full rank is the original layer up to float64 rounding. Parameter counts:
  base ``3 h d`` + per expert ``3 r (h + d)`` against ``3 E h d``; the savings are negative at high rank.
* **Verification** (``verify``): a merge (`Merge`) or an overlay (`Overlay`) is written into the layer's own
  packed tensors in place (`edited`; restored bit-exactly afterwards, also on error) and the corpus is scored
  with and without it, batch by batch in one process: mean next-token NLL, share of positions whose top-1
  prediction is unchanged, mean KL. Nothing is estimated.

Memory: the layer's weights are read as views of its own tensors (`read_experts` with ``copy=False``); an
edit builds one edited copy of that one layer, and `applied` one saved copy. No module per expert is built.

Examples:
    >>> import mechscope as ms
    >>> lm = ms.load("toy-moe")
    >>> result = compression(lm, 1, ranks=[8, 128])
    >>> len(result.pairs), result.full_rank, result.merge_candidates is None
    (6, 128, True)
    >>> all(p.aligned_cosine >= p.raw_cosine for p in result.pairs)
    True
    >>> [(r.rank, r.savings < 0) for r in result.overlay]
    [(8, False), (128, True)]
    >>> import torch
    >>> ids = lm.tokenize("The capital of France is")
    >>> before = lm.forward(ids)
    >>> with edited(lm, 1, Overlay(rank=128)):  # full rank: the layer itself
    ...     torch.testing.assert_close(lm.forward(ids), before)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Literal

from mechscope.errors import InputError, SiteError
from mechscope.moe.compression_results import Compression, EditCheck, Merge, Overlay, OverlayRank, PairSimilarity
from mechscope.moe.info import moe_layers

if TYPE_CHECKING:
    from torch import Tensor

    from mechscope.core.lm import LanguageModel
    from mechscope.moe.packed import ExpertWeights, LayerBatch

#: Elements of float64 scratch per chunk of the output-similarity sums (256 MiB): every expert on the chunk.
_CHUNK_ELEMENTS = 1 << 25


def compression(
    lm: LanguageModel,
    layer: int,
    *,
    prompts: Sequence[str] | None = None,
    weight_threshold: float = 0.8,
    output_threshold: float = 0.8,
    cold_threshold: float = 0.01,
    ranks: Sequence[int] | None = None,
    verify: Sequence[Merge | Overlay] | Literal["best"] | None = None,
    batch_size: int = 16,
    max_tokens: int | None = None,
    progress: bool = False,
) -> Compression:
    """Measure how one MoE layer could be compressed (see the module docstring for every definition).

    Args:
        layer: an MoE layer (negative counts from the end).
        prompts: a corpus; without one, only weights are compared (no output similarity, candidates,
            cold experts or verification).
        weight_threshold, output_threshold: the aligned weight cosine and the output cosine a merge
            candidate must reach.
        cold_threshold: an expert whose share of the tokens is below this is cold.
        ranks: overlay ranks to report (default 1, 2, 4, ... up to the full rank, and the full rank).
        verify: edits to apply and measure on the corpus; ``"best"`` measures merging the most similar
            pair (the first merge candidate when there is one).
        batch_size, max_tokens: at most this many prompts, and padded tokens, per forward pass.
        progress: progress bars on stderr (only on a terminal).

    Examples:
        With a corpus: output similarity, shares, merge candidates, and the best merge measured on it:

        >>> import mechscope as ms
        >>> lm = ms.load("toy-moe")
        >>> calls = [
        ...     "<user> Tell me the local time in Bern. <assistant> <call>time(city=Bern)</call>",
        ...     "<user> Look up hotels in Ankara. <assistant> <call>search(query=hotels Ankara)</call>",
        ... ]
        >>> result = compression(
        ...     lm, 1, prompts=calls, ranks=[16], weight_threshold=0.2, output_threshold=0.2, verify="best"
        ... )
        >>> pair = result.pair(0, 3)
        >>> round(pair.raw_cosine, 3), round(pair.aligned_cosine, 3), round(result.aligned_cosine_null, 3)
        (0.006, 0.215, 0.134)
        >>> round(pair.output_cosine, 3), result.merge_candidates, [round(s, 2) for s in result.share]
        (0.26, [(0, 3)], [0.34, 0.47, 0.68, 0.5])
        >>> check = result.verified[0]
        >>> check.edit.experts, abs(check.loss_change) < 0.001, check.top1_agreement
        ((0, 3), True, 1.0)

    Raises:
        MoEError: the model has no experts.
        SiteError: ``layer`` is not an MoE layer, or a merge names an expert out of range.
        InputError: a threshold or rank out of range, an empty corpus, or ``verify`` without a corpus.
    """
    from mechscope.moe.packed import null_aligned_cosine, read_experts

    layer = moe_layers(lm, [layer])[0]
    for value, name in ((weight_threshold, "weight"), (output_threshold, "output")):
        if not -1 <= value <= 1:
            raise InputError(f"the {name} threshold is a cosine in [-1, 1], got {value}")
    if not 0 <= cold_threshold <= 1:
        raise InputError(f"the cold threshold is a share of tokens in [0, 1], got {cold_threshold}")
    corpus = _corpus(prompts)
    if verify is not None and corpus is None:
        raise InputError("verifying an edit measures the corpus loss: give prompts (--prompts FILE or -p)")
    weights = read_experts(lm.arch.part("experts", layer), copy=False)
    full = min(weights.hidden, weights.d_model)
    chosen = sorted(set(_default_ranks(full) if ranks is None else [_rank(r, full, layer) for r in ranks]))
    edits = None if verify is None or verify == "best" else [check_edit(lm, layer, e, weights) for e in verify]

    pairs = _weight_pairs(weights, progress)
    spectra = {aligned: _spectra(weights, aligned) for aligned in (True, False)}
    tokens, share, cold, candidates = 0, None, None, None
    if corpus is not None:
        stats = _OutputStats(weights.n_experts)
        for batch in _layer_batches(lm, corpus, layer, batch_size, max_tokens, progress):
            stats.add(batch)
        tokens = stats.tokens
        pairs = [stats.pair(p) for p in pairs]
        share = [int(c) / tokens for c in stats.counts.tolist()]
        cold = [e for e, s in enumerate(share) if s < cold_threshold]
        candidates = _candidates(pairs, weight_threshold, output_threshold)
    if verify == "best":
        best = _candidates(pairs, -1.0, -1.0)
        edits = [Merge(experts=best[0])] if best else []
    verified = (
        []
        if edits is None
        else verify_edits(
            lm, layer, corpus or [], edits, batch_size=batch_size, max_tokens=max_tokens, progress=progress
        )
    )
    original = 3 * weights.n_experts * weights.hidden * weights.d_model
    return Compression(
        model=lm.source,
        family=lm.arch.family,
        layer=layer,
        n_experts=weights.n_experts,
        top_k=lm.arch.top_k,
        hidden=weights.hidden,
        d_model=weights.d_model,
        full_rank=full,
        weight_threshold=float(weight_threshold),
        output_threshold=float(output_threshold),
        cold_threshold=float(cold_threshold),
        prompts=0 if corpus is None else len(corpus),
        tokens=tokens,
        pairs=pairs,
        aligned_cosine_null=null_aligned_cosine(weights) if weights.n_experts > 1 else None,
        merge_candidates=candidates,
        share=share,
        cold=cold,
        original_parameters=original,
        base_error=spectra[True].error(0)[0],
        unaligned_base_error=spectra[False].error(0)[0],
        overlay=[_overlay_rank(weights, spectra, r, original) for r in chosen],
        verified=verified,
    )


def _corpus(prompts: Sequence[str] | None) -> list[str] | None:
    if prompts is None:
        return None
    if isinstance(prompts, str):
        raise InputError("prompts is a list of prompts (a corpus), not one string")
    if len(prompts) == 0:
        raise InputError("the corpus is empty; give at least one prompt (one per line of the prompts file)")
    return list(prompts)


def _default_ranks(full: int) -> list[int]:
    ranks, r = [], 1
    while r < full:
        ranks.append(r)
        r *= 2
    return [*ranks, full]


def _rank(rank: int, full: int, layer: int) -> int:
    if not isinstance(rank, int) or not 1 <= rank <= full:
        raise InputError(
            f"overlay rank {rank} is out of range: layer {layer}'s experts have full rank {full} (1..{full})"
        )
    return rank


def check_edit(lm: LanguageModel, layer: int, edit: Merge | Overlay, weights: ExpertWeights) -> Merge | Overlay:
    """``edit``, once its experts or rank fit the layer.

    Raises:
        SiteError: a merged expert is out of range.
        InputError: an overlay rank outside ``1..min(hidden, d_model)``.
    """
    if isinstance(edit, Merge):
        n = weights.n_experts
        for expert in edit.experts:
            if not 0 <= expert < n:
                raise SiteError(
                    f"expert {expert} is out of range at layer {layer}: the model has {n} experts (0..{n - 1})"
                )
    else:
        _rank(edit.rank, min(weights.hidden, weights.d_model), layer)
    return edit


# ----------------------------------------------------------------- weights


def _weight_pairs(weights: ExpertWeights, progress: bool) -> list[PairSimilarity]:
    """Raw and aligned weight cosine of every pair ``a < b``."""
    from mechscope.moe.packed import align
    from mechscope.progress import track

    n = weights.n_experts
    todo = [(a, b) for a in range(n) for b in range(a + 1, n)]
    return [
        PairSimilarity(
            a=a, b=b, raw_cosine=weights.cosine(a, b), aligned_cosine=weights.cosine(a, b, align(weights, a, b))
        )
        for a, b in track(todo, "aligning experts", enabled=progress)
    ]


def _orders(weights: ExpertWeights, aligned: bool) -> list[Tensor]:
    """Each expert's hidden-unit order: aligned to expert 0's, or as stored."""
    import torch

    from mechscope.moe.packed import align

    identity = torch.arange(weights.hidden, device=weights.tensors["gate"].device)
    return [identity if e == 0 or not aligned else align(weights, 0, e) for e in range(weights.n_experts)]


def _base(weights: ExpertWeights, orders: list[Tensor]) -> dict[str, Tensor]:
    """The float64 mean of the (reordered) experts' matrices, summed one expert at a time."""
    from mechscope.moe.packed import MATRICES

    base: dict[str, Tensor] = {}
    for e, order in enumerate(orders):
        expert = weights.expert(e, order)
        for name in MATRICES:
            value = expert[name].double()
            base[name] = value if name not in base else base[name] + value
    return {name: value / weights.n_experts for name, value in base.items()}


class _Spectra:
    """Per expert: ``tail[r] = sum over matrices of sum_{i >= r} s_i^2`` of its residuals, and its energy."""

    def __init__(self, tail: Tensor, energy: Tensor) -> None:
        self.tail, self.energy = tail, energy  # [expert, full + 1], [expert]

    def error(self, rank: int) -> tuple[float, float]:
        """``(relative error of the layer, largest relative error of one expert)`` at ``rank``."""
        tail = self.tail[:, rank]
        total = float(tail.sum() / self.energy.sum()) if float(self.energy.sum()) > 0 else 0.0
        worst = float((tail / self.energy.clamp(min=1e-300)).max())
        return math.sqrt(total), math.sqrt(worst)


def _spectra(weights: ExpertWeights, aligned: bool) -> _Spectra:
    import torch

    from mechscope.moe.packed import MATRICES

    orders = _orders(weights, aligned)
    base = _base(weights, orders)
    full = min(weights.hidden, weights.d_model)
    tails, energies = [], []
    for e, order in enumerate(orders):
        expert = weights.expert(e, order)
        tail = torch.zeros(full + 1, dtype=torch.float64)
        energy = 0.0
        for name in MATRICES:
            matrix = expert[name].double()
            energy += float((matrix**2).sum())
            s2 = torch.linalg.svdvals(matrix - base[name]).cpu() ** 2
            # tail[r] = sum_{i >= r} s_i^2, by a reversed cumulative sum (zero past the last value)
            tail[: s2.shape[0]] += s2.flip(0).cumsum(0).flip(0)
        tails.append(tail)
        energies.append(energy)
    return _Spectra(torch.stack(tails), torch.tensor(energies, dtype=torch.float64))


def _overlay_rank(weights: ExpertWeights, spectra: dict[bool, _Spectra], rank: int, original: int) -> OverlayRank:
    h, d, n = weights.hidden, weights.d_model, weights.n_experts
    error, worst = spectra[True].error(rank)
    parameters = 3 * h * d + n * 3 * rank * (h + d)
    return OverlayRank(
        rank=rank,
        relative_error=error,
        unaligned_error=spectra[False].error(rank)[0],
        max_expert_error=worst,
        parameters=parameters,
        savings=1 - parameters / original,
    )


def overlay(weights: ExpertWeights, rank: int) -> ExpertWeights:
    """A copy of the layer where each expert's matrices are the aligned base + its rank-``rank`` residual.

    Biases are kept as they are; each reconstruction is permuted back to the expert's stored unit order.
    """
    import torch

    from mechscope.moe.packed import MATRICES, UNIT_AXIS, truncated

    orders = _orders(weights, aligned=True)
    base = _base(weights, orders)
    updates = {}
    for e, order in enumerate(orders):
        expert, back = weights.expert(e, order), torch.argsort(order)
        values = {}
        for name in MATRICES:
            approx = base[name] + truncated(expert[name].double() - base[name], rank)
            axis = UNIT_AXIS[name]
            assert axis is not None
            values[name] = approx.index_select(axis - 1, back).to(expert[name].dtype)
        updates[e] = values
    return weights.replaced(updates)


@contextlib.contextmanager
def edited(lm: LanguageModel, layer: int, edit: Merge | Overlay) -> Iterator[None]:
    """Run the body with ``edit`` written into the layer's own packed tensors; restored bit-exactly after.

    Examples:
        Merging the planted tool-call expert 2 of layer 1 with expert 0 costs the call's next token some probability:

        >>> import mechscope as ms
        >>> lm = ms.load("toy-moe")
        >>> prompt, n = "<user> Tell me the local time in Bern. <assistant> <call>time(city=Ber", lm.token_id("n")
        >>> def p_n():
        ...     return round(float(lm.forward(prompt)[0, -1].softmax(-1)[n]), 3)
        >>> before = p_n()
        >>> with edited(lm, 1, Merge(experts=(0, 2))):
        ...     merged = p_n()
        >>> before, merged, p_n()
        (0.982, 0.896, 0.982)

    Raises:
        MoEError, SiteError, InputError: see `compression`.
    """
    from mechscope.moe.packed import applied, read_experts

    layer = moe_layers(lm, [layer])[0]
    module = lm.arch.part("experts", layer)
    weights = read_experts(module, copy=False)
    with applied(module, _build(weights, check_edit(lm, layer, edit, weights))):
        yield


def _build(weights: ExpertWeights, edit: Merge | Overlay) -> ExpertWeights:
    from mechscope.moe.packed import merged

    return merged(weights, *edit.experts) if isinstance(edit, Merge) else overlay(weights, edit.rank)


# ----------------------------------------------------------------- corpus


def _layer_batches(
    lm: LanguageModel, corpus: list[str], layer: int, batch_size: int, max_tokens: int | None, progress: bool
) -> Iterator[LayerBatch]:
    from mechscope.moe.packed import layer_batches

    for batches in layer_batches(lm, corpus, [layer], batch_size=batch_size, max_tokens=max_tokens, progress=progress):
        yield batches[layer]


class _OutputStats:
    """Streamed sums over the corpus: per pair ``<O_a, O_b>`` and ``|O_a|^2`` on the union of their tokens."""

    def __init__(self, n: int) -> None:
        import torch

        self.inner = torch.zeros(n, n, dtype=torch.float64)  # [a, b]: sum over U_ab of <O_a(t), O_b(t)>
        self.square = torch.zeros(n, n, dtype=torch.float64)  # [a, b]: sum over U_ab of |O_a(t)|^2
        self.union = torch.zeros(n, n, dtype=torch.long)  # [a, b]: |U_ab|, tokens routed to a or b
        self.counts = torch.zeros(n, dtype=torch.long)
        self.tokens = 0

    def add(self, batch: LayerBatch) -> None:
        import torch

        n = self.counts.shape[0]
        self.counts += torch.bincount(batch.index.reshape(-1), minlength=n).cpu()
        self.tokens += batch.hidden.shape[0]
        routed = batch.routed()
        chunk = max(1, _CHUNK_ELEMENTS // (n * (batch.hidden.shape[1] + n)))
        for start in range(0, batch.hidden.shape[0], chunk):
            tokens = torch.arange(start, min(start + chunk, batch.hidden.shape[0]), device=batch.hidden.device)
            out = batch.outputs(tokens).double()  # [expert, chunk, d_model]
            r = routed[tokens].double()  # [chunk, expert]
            union = 1 - (1 - r)[:, :, None] * (1 - r)[:, None, :]  # [chunk, a, b]: routed to a or b
            self.inner += torch.einsum("atd,btd,tab->ab", out, out, union).cpu()
            self.square += torch.einsum("at,tab->ab", (out**2).sum(-1), union).cpu()
            self.union += union.sum(0).round().long().cpu()

    def pair(self, pair: PairSimilarity) -> PairSimilarity:
        a, b = pair.a, pair.b
        norm = math.sqrt(float(self.square[a, b]) * float(self.square[b, a]))
        cosine = float(self.inner[a, b]) / norm if norm > 0 else None
        return pair.model_copy(update={"output_cosine": cosine, "tokens": int(self.union[a, b])})


def _candidates(pairs: list[PairSimilarity], weight: float, output: float) -> list[tuple[int, int]]:
    """Pairs passing both thresholds, the most similar first (by the smaller of the two cosines)."""
    passing = [
        p for p in pairs if p.output_cosine is not None and p.aligned_cosine >= weight and p.output_cosine >= output
    ]
    passing.sort(key=lambda p: (-min(p.aligned_cosine, p.output_cosine or 0.0), p.a, p.b))
    return [(p.a, p.b) for p in passing]


def verify_edits(
    lm: LanguageModel,
    layer: int,
    prompts: Sequence[str],
    edits: Sequence[Merge | Overlay],
    *,
    batch_size: int = 16,
    max_tokens: int | None = None,
    progress: bool = False,
) -> list[EditCheck]:
    """Apply each edit to the layer in turn and measure it on the corpus against the unedited model.

    Per batch: one unedited forward pass, then one per edit with the edit written into the layer (restored
    right after). Each edited layer is built once (one copy of the layer per edit).

    Examples:
        >>> import mechscope as ms
        >>> lm = ms.load("toy-moe")
        >>> calls = [
        ...     "<user> Tell me the local time in Bern. <assistant> <call>time(city=Bern)</call>",
        ...     "<user> Look up hotels in Ankara. <assistant> <call>search(query=hotels Ankara)</call>",
        ... ]
        >>> checks = verify_edits(lm, 1, calls, [Merge(experts=(1, 2)), Overlay(rank=16), Overlay(rank=128)])
        >>> [(c.edit.label(), round(c.loss_change, 3), round(c.top1_agreement, 3)) for c in checks]
        [('merge 1+2', 0.027, 0.921), ('overlay rank 16', -0.001, 0.974), ('overlay rank 128', 0.0, 1.0)]
        >>> checks[0].targets, checks[0].predictions  # next tokens scored, positions compared
        (36, 38)

    Raises:
        MoEError, SiteError, InputError: see `compression`; also a corpus with no next-token target.
    """
    import torch

    from mechscope.moe.packed import applied, corpus_batches, read_experts
    from mechscope.progress import bar

    layer = moe_layers(lm, [layer])[0]
    module = lm.arch.part("experts", layer)
    weights = read_experts(module, copy=False)
    built = [(check_edit(lm, layer, edit, weights), _build(weights, edit)) for edit in edits]
    if not built:
        return []
    batches = corpus_batches(lm, prompts, batch_size, max_tokens)
    sums = torch.zeros(len(built), 4, dtype=torch.float64)  # edited nll, agreeing top-1, kl, base nll
    targets = predictions = 0
    with bar("verifying", len(prompts), enabled=progress) as shown:
        for encoded in batches:
            mask = encoded["attention_mask"].bool()
            scored = mask[:, :-1] & mask[:, 1:]
            nexts = encoded["input_ids"][:, 1:]
            with torch.no_grad():
                base = torch.log_softmax(lm.model(**encoded, use_cache=False).logits.float(), dim=-1)
                base_nll = _nll(base, nexts, scored)
                base_top = base.argmax(-1)[mask]
                for i, (_, new) in enumerate(built):
                    with applied(module, new):
                        logp = torch.log_softmax(lm.model(**encoded, use_cache=False).logits.float(), dim=-1)
                    kl = (base.exp() * (base - logp)).sum(-1)[mask].sum()
                    agree = (logp.argmax(-1)[mask] == base_top).sum()
                    sums[i] += torch.stack([_nll(logp, nexts, scored), agree.double(), kl.double(), base_nll]).cpu()
            targets += int(scored.sum())
            predictions += int(mask.sum())
            if shown is not None:
                shown.advance(int(mask.shape[0]))
    if targets == 0:
        raise InputError("the corpus has no next token to score: every prompt is a single token")
    return [
        EditCheck(
            edit=edit,
            base_loss=float(s[3]) / targets,
            edited_loss=float(s[0]) / targets,
            loss_change=float(s[0] - s[3]) / targets,
            top1_agreement=float(s[1]) / predictions,
            kl=float(s[2]) / predictions,
            predictions=predictions,
            targets=targets,
        )
        for (edit, _), s in zip(built, sums, strict=True)
    ]


def _nll(logp: Tensor, nexts: Tensor, scored: Tensor) -> Tensor:
    """Summed NLL of the next tokens at the scored positions (float64)."""
    picked = logp[:, :-1].gather(-1, nexts[..., None])[..., 0]
    return -picked[scored].double().sum()


__all__ = ["check_edit", "compression", "edited", "overlay", "verify_edits"]
