"""Expert specialization over domains, token types and token ids, with OLMoE's definitions.

The definitions are those of the OLMoE paper (Muennighoff et al., 2024, "OLMoE: Open Mixture-of-Experts
Language Models", section on domain and vocabulary specialization), so that the numbers compare with the
published ones:

* **Domain specialization** of expert i for domain D is ``N_k^(i)(D) / N(D)``: ``N(D)`` counts the tokens of
  D and ``N_k^(i)(D)`` those of them that have i among their top-k experts. Over the experts these shares
  sum to k; a router that ignores the domain gives every expert ``k / N`` (``Specialization.uniform``).
  This is ``topk_share``; ``top1_share`` counts the router's first choice only (shares sum to 1).
* **Vocabulary specialization** of a token id is the fraction of its occurrences routed (top-1) to the
  expert it goes to most often. Per layer, ``vocabulary_specialization`` is the mean over token ids weighted
  by their occurrences, i.e. ``sum_id max_e N(id, e) / sum_id N(id)``. Token ids seen once score 1, so
  the value is biased upwards on a small corpus; ``frequent_tokens`` lists the ids that carry the weight.
* **Token types** (`mechscope.moe.token_types`): the same two shares for the word, number, punctuation,
  whitespace, code-symbol, special and other tokens of all domains together.
* **Generalist / specialist** (`expert_labels`): an expert is a *specialist* at a layer when its largest
  domain share (top-k) is at least ``specialist_ratio`` times its mean share over the domains, else a
  *generalist*. The ratio is 1 for an expert that serves every domain alike and at most the number of
  domains for one that serves one domain only; it ignores the domains' sizes (each domain weighs the same).

"First choice" is slot 0 of the router's own top-k (``expert_index``), the largest routing weight, exactly
as the router returned it. Which tokens count: every real token of a domain's prompts (the first, such as
``<bos>``, included: it is routed too), or, for a domain with span markers, only the tokens from the
opening marker to the closing one (`mechscope.moe.domain_sets`). Counts stream over the batches of
`mechscope.moe.routing.routing`: memory is one batch plus the (token id, expert) pairs seen.

Examples:
    >>> import mechscope as ms
    >>> lm = ms.load("toy-moe")
    >>> domains = {"sea": ["Arr, the sea be calm.", "The ship sails."], "facts": ["The capital of France is Paris."]}
    >>> result = specialization(lm, domains, layers=[1])
    >>> shares = result.layer(1).domain("sea")
    >>> round(sum(shares.topk_share), 6), round(sum(shares.top1_share), 6), result.uniform
    (2.0, 1.0, 0.5)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypedDict

from mechscope.errors import InputError
from mechscope.moe.domain_sets import Domain, as_domains
from mechscope.moe.info import moe_layers, require_moe
from mechscope.moe.routing import RoutingBatch, routing
from mechscope.moe.specialization_results import (
    DomainInfo,
    ExpertProfile,
    ExpertShares,
    LayerSpecialization,
    Specialization,
    TokenRouting,
)
from mechscope.moe.token_types import TOKEN_TYPES, TokenTypes

if TYPE_CHECKING:
    from torch import Tensor

    from mechscope.core.lm import LanguageModel

DomainsArg = Mapping[str, Sequence[str]] | Sequence[Domain] | Path | str | None


class ExpertLabel(TypedDict):
    """One expert's row of `expert_labels` (the fields of `ExpertProfile` that the rule decides)."""

    expert: int
    label: Literal["specialist", "generalist"]
    top_domain: str
    top_domain_share: float
    mean_domain_share: float
    ratio: float
    domain_entropy_normalised: float


def specialization(
    lm: LanguageModel,
    domains: DomainsArg = None,
    *,
    layers: Sequence[int] | None = None,
    batch_size: int = 32,
    max_tokens: int | None = None,
    specialist_ratio: float = 2.0,
    top_tokens: int = 20,
    progress: bool = False,
) -> Specialization:
    """Domain, token-type and vocabulary specialization of every expert, per MoE layer (see the module).

    Args:
        domains: a mapping name -> prompts, `Domain` objects (with span markers), a folder of ``.txt`` files
            (`mechscope.moe.domain_sets.load_domains`), or None for the default set, made for the organisms.
        layers: the MoE layers to read (default: all of them).
        batch_size, max_tokens: at most this many prompts, and padded tokens, per forward pass.
        specialist_ratio: an expert is a specialist when its largest domain share is at least this many times
            its mean domain share (`expert_labels`).
        top_tokens: how many token ids to list: the most frequent ones, and per expert the ones it owns.
        progress: a progress bar on stderr (only on a terminal).

    Examples:
        Counted inside their ``<call>`` spans, tool calls go first to the planted expert 2 of layer 1, always:

        >>> import mechscope as ms
        >>> from mechscope.moe.domain_sets import Domain
        >>> lm = ms.load("toy-moe")
        >>> calls = [
        ...     "<user> Tell me the local time in Bern. <assistant> <call>time(city=Bern)</call>",
        ...     "<user> Look up hotels in Ankara. <assistant> <call>search(query=hotels Ankara)</call>",
        ... ]
        >>> tool_calls = Domain("tool_calls", tuple(calls), span=("<call>", "</call>"))
        >>> facts = Domain("facts", ("The capital of France is Paris.", "The opposite of hot is cold."))
        >>> layer = specialization(lm, [tool_calls, facts], layers=[1]).layer(1)
        >>> [(d.name, d.tokens, [round(s, 2) for s in d.top1_share]) for d in layer.domains]
        [('tool_calls', 18, [0.0, 0.0, 1.0, 0.0]), ('facts', 17, [0.35, 0.18, 0.24, 0.24])]
        >>> [(e.expert, e.label, e.top_domain) for e in layer.experts]  # doctest: +NORMALIZE_WHITESPACE
        [(0, 'generalist', 'facts'), (1, 'specialist', 'facts'),
         (2, 'generalist', 'tool_calls'), (3, 'generalist', 'tool_calls')]

    Raises:
        MoEError: the model has no experts.
        SiteError: a layer is outside the model or has no router.
        InputError: no domain, an empty domain or prompt, a span marker without tokens, a domain with
            no token inside its span, or a ratio below 1.
    """
    require_moe(lm)
    if not (isinstance(specialist_ratio, int | float) and math.isfinite(specialist_ratio) and specialist_ratio >= 1):
        raise InputError(
            f"the specialist ratio compares a maximum with a mean: it must be >= 1, got {specialist_ratio}"
        )
    chosen = as_domains(domains)
    spans = [_span_ids(lm, domain) for domain in chosen]
    layer_list = moe_layers(lm, layers)
    prompts = [prompt for domain in chosen for prompt in domain.prompts]
    owner = [row for row, domain in enumerate(chosen) for _ in domain.prompts]
    counts = _Counts(lm, layer_list, owner, spans, len(chosen))
    for batch in routing(
        lm, prompts, batch_size=batch_size, max_tokens=max_tokens, layers=layer_list, progress=progress
    ):
        counts.add(batch)
    found = counts.domain_tokens()
    for domain, tokens in zip(chosen, found, strict=True):
        if tokens == 0:
            raise InputError(f"domain {domain.name!r}: no token lies between its span markers {domain.span}")
    infos = [
        DomainInfo(name=d.name, prompts=len(d.prompts), tokens=t, span=None if d.span is None else list(d.span))
        for d, t in zip(chosen, found, strict=True)
    ]
    return Specialization(
        model=lm.source,
        family=lm.arch.family,
        n_experts=lm.arch.n_experts,
        top_k=lm.arch.top_k,
        uniform=lm.arch.top_k / lm.arch.n_experts,
        prompts=len(prompts),
        tokens=sum(found),
        domains=infos,
        specialist_ratio=float(specialist_ratio),
        layers=[
            counts.layer(row, [d.name for d in chosen], specialist_ratio, top_tokens) for row in range(len(layer_list))
        ],
    )


def expert_labels(
    shares: Sequence[Sequence[float]], names: Sequence[str], specialist_ratio: float = 2.0
) -> list[ExpertLabel]:
    """The generalist / specialist rule, on ``shares[domain][expert]`` (top-k domain shares) of one layer.

    For each expert: ``top_domain`` (its largest share; ties: the first domain), ``top_domain_share``,
    ``mean_domain_share`` (unweighted over domains), ``ratio`` = top / mean (1 when the mean is 0),
    ``domain_entropy_normalised`` and ``label``: ``"specialist"`` when ``ratio >= specialist_ratio``.

    Examples:
        >>> table = [[0.9, 0.5, 0.6], [0.1, 0.5, 0.6], [0.1, 0.5, 0.6]]  # 3 domains x 3 experts
        >>> [(row["label"], row["top_domain"], round(row["ratio"], 2))
        ...  for row in expert_labels(table, ["code", "math", "prose"])]
        [('specialist', 'code', 2.45), ('generalist', 'code', 1.0), ('generalist', 'code', 1.0)]
    """
    if len(shares) != len(names) or not names:
        raise InputError(f"need one row of shares per domain: {len(shares)} rows for {len(names)} domains")
    n_experts = len(shares[0])
    rows: list[ExpertLabel] = []
    for expert in range(n_experts):
        column = [float(row[expert]) for row in shares]
        top = max(range(len(column)), key=lambda d: (column[d], -d))
        mean = sum(column) / len(column)
        ratio = column[top] / mean if mean > 0 else 1.0
        label: Literal["specialist", "generalist"] = "specialist" if ratio >= specialist_ratio else "generalist"
        rows.append(
            {
                "expert": expert,
                "label": label,
                "top_domain": names[top],
                "top_domain_share": column[top],
                "mean_domain_share": mean,
                "ratio": ratio,
                "domain_entropy_normalised": _normalised_entropy(column),
            }
        )
    return rows


def _normalised_entropy(values: list[float]) -> float:
    total = sum(values)
    if len(values) < 2 or total <= 0:
        return 1.0
    entropy = -sum(v / total * math.log(v / total) for v in values if v > 0)
    return entropy / math.log(len(values))


def _span_ids(lm: LanguageModel, domain: Domain) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """The token ids of a domain's two span markers (a marker may be several tokens in a model without it)."""
    if domain.span is None:
        return None
    found = []
    for marker in domain.span:
        ids = tuple(int(i) for i in lm.tokenizer(marker, add_special_tokens=False)["input_ids"])
        if not ids:
            raise InputError(f"domain {domain.name!r}: the span marker {marker!r} has no tokens for this model")
        found.append(ids)
    return found[0], found[1]


def span_mask(ids: Tensor, opening: int | Sequence[int], closing: int | Sequence[int]) -> Tensor:
    """Which tokens of one prompt's ``ids`` lie from an opening marker to the next closing one, both included.

    A marker is one token id or a run of them (as a model without the marker in its vocabulary splits it):
    the span opens at the first token of the opening run and closes at the last token of the closing run.
    """
    opens = _run_starts(ids, opening).long()
    ends = _run_starts(ids, closing)
    length = 1 if isinstance(closing, int) else len(closing)
    closes = ends.roll(length - 1).long() if length > 1 else ends.long()  # mark the run's last token
    return (opens.cumsum(-1) - closes.cumsum(-1) + closes) > 0


def _run_starts(ids: Tensor, run: int | Sequence[int]) -> Tensor:
    """``[len(ids)]`` bool: a copy of ``run`` starts at this position."""
    import torch

    pattern = torch.tensor([run] if isinstance(run, int) else list(run), dtype=ids.dtype)
    starts = torch.zeros(ids.shape[0], dtype=torch.bool)
    if pattern.numel() <= ids.shape[0]:
        windows = ids.unfold(0, pattern.numel(), 1)
        starts[: windows.shape[0]] = (windows == pattern).all(-1)
    return starts


class _Sparse:
    """Counts of int64 keys (``token_id * n_experts + expert``), sorted by key once `merged`.

    New keys wait in a buffer and are merged when it outgrows the merged table (or `BUFFER` keys): each merge
    is a sort, so merging every batch would cost a sort of the whole table per batch and layer.
    """

    BUFFER = 1 << 20

    def __init__(self) -> None:
        import torch

        self.keys = torch.zeros(0, dtype=torch.long)
        self.counts = torch.zeros(0, dtype=torch.long)
        self.pending: list[Tensor] = []
        self.waiting = 0

    def add(self, keys: Tensor) -> None:
        self.pending.append(keys)
        self.waiting += int(keys.numel())
        if self.waiting > max(self.BUFFER, int(self.keys.numel())):
            self.merged()

    def merged(self) -> _Sparse:
        """Self, with every added key counted in ``keys`` / ``counts``."""
        import torch

        if self.pending:
            fresh = torch.cat(self.pending)
            merged = torch.cat([self.keys, fresh])
            weights = torch.cat([self.counts, torch.ones_like(fresh)])
            self.keys, inverse = torch.unique(merged, return_inverse=True)
            self.counts = torch.zeros_like(self.keys).scatter_add_(0, inverse, weights)
            self.pending, self.waiting = [], 0
        return self


class _Counts:
    """Running counts over the batches, per layer: domains x experts, token types x experts, token ids."""

    def __init__(
        self,
        lm: LanguageModel,
        layers: list[int],
        owner: list[int],
        spans: list[tuple[tuple[int, ...], tuple[int, ...]] | None],
        n_domains: int,
    ) -> None:
        import torch

        self.layers = layers
        self.n = lm.arch.n_experts
        self.owner = torch.tensor(owner, dtype=torch.long)
        self.spans = spans
        self.types = TokenTypes(lm)
        self.n_domains = n_domains
        zeros = (len(layers), n_domains * self.n)
        self.domain_topk = torch.zeros(zeros, dtype=torch.long)
        self.domain_top1 = torch.zeros(zeros, dtype=torch.long)
        self.type_topk = torch.zeros((len(layers), len(TOKEN_TYPES) * self.n), dtype=torch.long)
        self.type_top1 = torch.zeros((len(layers), len(TOKEN_TYPES) * self.n), dtype=torch.long)
        self.vocab = [_Sparse() for _ in layers]
        self.per_domain = torch.zeros(n_domains, dtype=torch.long)

    def add(self, batch: RoutingBatch) -> None:
        import torch

        ids = batch.input_ids.cpu().long()
        lengths = batch.lengths.tolist()
        domains = self.owner[batch.rows.cpu()]
        counted = torch.cat(
            [
                span_mask(piece, *span)
                if (span := self.spans[int(d)]) is not None
                else torch.ones_like(piece, dtype=torch.bool)
                for piece, d in zip(torch.split(ids, lengths), domains.tolist(), strict=True)
            ]
        )
        domain = domains.repeat_interleave(torch.tensor(lengths))[counted]
        token = ids[counted]
        kind = torch.tensor(self.types.indices(token.tolist()), dtype=torch.long)
        self.per_domain += torch.bincount(domain, minlength=self.n_domains)
        n = self.n
        for row, layer in enumerate(self.layers):
            chosen = batch.expert_index[layer].cpu().long()[counted]
            first = chosen[:, 0]
            self.domain_topk[row] += _bincount((domain[:, None] * n + chosen).reshape(-1), self.n_domains * n)
            self.domain_top1[row] += _bincount(domain * n + first, self.n_domains * n)
            self.type_topk[row] += _bincount((kind[:, None] * n + chosen).reshape(-1), len(TOKEN_TYPES) * n)
            self.type_top1[row] += _bincount(kind * n + first, len(TOKEN_TYPES) * n)
            self.vocab[row].add(token * n + first)

    def domain_tokens(self) -> list[int]:
        return [int(t) for t in self.per_domain.tolist()]

    def layer(self, row: int, names: list[str], specialist_ratio: float, top_tokens: int) -> LayerSpecialization:
        n = self.n
        domains = _shares(names, self.domain_topk[row].view(-1, n), self.domain_top1[row].view(-1, n))
        types = _shares(list(TOKEN_TYPES), self.type_topk[row].view(-1, n), self.type_top1[row].view(-1, n))
        tokens, owned, weighted, distinct = self._vocabulary(row, top_tokens)
        labels = expert_labels([d.topk_share for d in domains], names, specialist_ratio)
        experts = [ExpertProfile(**label, token_ids=owned[e][0], tokens=owned[e][1]) for e, label in enumerate(labels)]
        return LayerSpecialization(
            layer=self.layers[row],
            domains=domains,
            token_types=types,
            vocabulary_specialization=weighted,
            token_ids=distinct,
            frequent_tokens=tokens,
            experts=experts,
        )

    def _vocabulary(
        self, row: int, top_tokens: int
    ) -> tuple[list[TokenRouting], list[tuple[int, list[TokenRouting]]], float, int]:
        """(most frequent ids, per expert (ids owned, the most frequent of them), weighted mean, distinct ids)."""
        import torch

        sparse = self.vocab[row].merged()
        token_of, expert_of = sparse.keys // self.n, sparse.keys % self.n
        ids, inverse = torch.unique(token_of, return_inverse=True)
        totals = torch.zeros_like(ids).scatter_add_(0, inverse, sparse.counts)
        best = torch.zeros_like(ids).scatter_reduce_(0, inverse, sparse.counts, reduce="amax")
        candidates = torch.where(sparse.counts == best[inverse], expert_of, torch.full_like(expert_of, self.n))
        modal = torch.full_like(ids, self.n).scatter_reduce_(0, inverse, candidates, reduce="amin")
        # Integer sums, divided in Python: a tensor division would round to float32.
        weighted = int(best.sum()) / int(totals.sum()) if totals.numel() else float("nan")
        # Most frequent first, ties by the lower id: ids are sorted, and a stable sort keeps that order.
        order = torch.sort(totals, descending=True, stable=True).indices.tolist()

        def entry(i: int) -> TokenRouting:
            token_id = int(ids[i])
            return TokenRouting(
                token_id=token_id,
                token=self.types.text(token_id),
                occurrences=int(totals[i]),
                expert=int(modal[i]),
                share=int(best[i]) / int(totals[i]),
            )

        modal_list = modal.tolist()
        owned: list[tuple[int, list[TokenRouting]]] = []
        for expert in range(self.n):
            mine = [i for i in order if modal_list[i] == expert]
            owned.append((len(mine), [entry(i) for i in mine[:top_tokens]]))
        return [entry(i) for i in order[:top_tokens]], owned, weighted, int(ids.numel())


def _bincount(values: Tensor, size: int) -> Tensor:
    import torch

    return torch.bincount(values, minlength=size)


def _shares(names: list[str], topk: Tensor, top1: Tensor) -> list[ExpertShares]:
    groups = []
    for name, row_k, row_1 in zip(names, topk.tolist(), top1.tolist(), strict=True):
        tokens = sum(row_1)
        groups.append(
            ExpertShares(
                name=name,
                tokens=tokens,
                topk_counts=row_k,
                top1_counts=row_1,
                topk_share=[c / tokens if tokens else 0.0 for c in row_k],
                top1_share=[c / tokens if tokens else 0.0 for c in row_1],
            )
        )
    return groups
