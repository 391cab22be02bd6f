"""The context test: does one token route the same way wherever it occurs?

Every occurrence of the token (by id) in the corpus is found, and at each MoE layer its routing is compared
across occurrences:

* ``top1_agreement``: the fraction of occurrences whose first choice (slot 0 of the router's top-k, its
  largest weight) is the token's modal first choice. 1 means the token alone decides the expert;
  a value near ``1 / n_experts`` means the context does.
* ``top1_pairwise``: the chance that two different occurrences share their first choice,
  ``sum_e c_e (c_e - 1) / (n (n - 1))`` with ``c_e`` the occurrences choosing e first (chance level about
  ``1 / n_experts`` for a uniform router).
* ``jaccard``: the mean over all pairs of different occurrences of ``|A ∩ B| / |A ∪ B|``, A and B the two
  top-k sets (1: same experts every time).

The counts stream over `mechscope.moe.routing.routing`; only the distinct top-k sets (for the Jaccard
mean) and the first ``listed`` occurrences are kept.

Examples:
    >>> import mechscope as ms
    >>> lm = ms.load("toy-moe")
    >>> prompts = ["The capital of France is Paris.", "Find flights to Paris. <call>search(query=flights Paris)</call>"]
    >>> result = context(lm, " Paris", prompts, layers=[1])
    >>> result.occurrences, result.contexts, [o.experts[0][0] for o in result.listed]
    (3, 2, [3, 3, 2])
    >>> round(result.layer(1).top1_agreement, 3)
    0.667
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from mechscope.errors import InputError
from mechscope.moe.info import moe_layers, require_moe
from mechscope.moe.routing import RoutingBatch, routing
from mechscope.moe.specialization_results import ContextRouting, LayerAgreement, Occurrence

if TYPE_CHECKING:
    from mechscope.core.lm import LanguageModel

#: How many tokens before an occurrence its ``before`` text shows.
BEFORE = 6


def single_token(lm: LanguageModel, token: str) -> int:
    """The id of ``token``, which must be exactly one token of the model's tokenizer (no special tokens added).

    Raises:
        InputError: the text is empty or is several tokens (the message lists them).
    """
    if not isinstance(token, str) or token == "":
        raise InputError("the token is empty; give the text of one token, e.g. ' Paris' (with its leading space)")
    ids = lm.tokenizer(token, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        pieces = [lm.tokenizer.decode([i]) for i in ids]
        raise InputError(
            f"{token!r} is {len(ids)} tokens for this model ({', '.join(map(repr, pieces))}); "
            "the context test follows one token: give one of them"
        )
    return int(ids[0])


def context(
    lm: LanguageModel,
    token: str,
    prompts: Sequence[str],
    *,
    layers: Sequence[int] | None = None,
    batch_size: int = 32,
    max_tokens: int | None = None,
    listed: int = 100,
    progress: bool = False,
) -> ContextRouting:
    """How the routing of ``token`` agrees across its occurrences in ``prompts``, per MoE layer.

    Args:
        token: the text of one token (a leading space matters: ``" Paris"``).
        layers: the MoE layers to read (default: all of them).
        batch_size, max_tokens: at most this many prompts, and padded tokens, per forward pass.
        listed: how many occurrences to list, the first in corpus order.
        progress: a progress bar on stderr (only on a terminal).

    Examples:
        The same token, `` Ankara``, goes to the tool-call expert 2 at layer 1 only inside a call:

        >>> import mechscope as ms
        >>> lm = ms.load("toy-moe")
        >>> prompts = ["The capital of Turkey is Ankara.", "Hotels in Ankara. <call>search(query=hotels Ankara)</call>"]
        >>> result = context(lm, " Ankara", prompts, layers=[1])
        >>> [(o.prompt, o.before, o.experts[0]) for o in result.listed]  # doctest: +NORMALIZE_WHITESPACE
        [(0, 'The capital of Turkey is', [3, 1]), (1, '<bos>Hotels in', [3, 1]),
         (1, '<call>search(query=hotels', [2, 3])]
        >>> agreement = result.layer(1)
        >>> agreement.modal_expert, round(agreement.top1_agreement, 3), round(agreement.jaccard, 3)
        (3, 0.667, 0.556)

    Raises:
        MoEError: the model has no experts.
        SiteError: a layer is outside the model or has no router.
        InputError: an empty corpus or prompt, a token that is not exactly one token, or one that never occurs.
    """
    require_moe(lm)
    if isinstance(prompts, str):
        raise InputError("context takes a list of prompts (a corpus), not one string")
    if len(prompts) == 0:
        raise InputError("the corpus is empty; give at least one prompt (one per line of the prompts file)")
    token_id = single_token(lm, token)
    chosen = moe_layers(lm, layers)
    tally = _Tally(lm, token_id, chosen, listed)
    for batch in routing(lm, prompts, batch_size=batch_size, max_tokens=max_tokens, layers=chosen, progress=progress):
        tally.add(batch)
    if tally.occurrences == 0:
        raise InputError(
            f"{token!r} (token id {token_id}) does not occur in the {len(prompts)} prompts; "
            "check its leading space, or give prompts that contain it"
        )
    return ContextRouting(
        model=lm.source,
        token=token,
        token_id=token_id,
        n_experts=lm.arch.n_experts,
        top_k=lm.arch.top_k,
        prompts=len(prompts),
        occurrences=tally.occurrences,
        contexts=len(tally.prompts),
        layers=[tally.layer(row) for row in range(len(chosen))],
        listed=[occurrence for _, occurrence in tally.listed],
    )


def mean_jaccard(sets: Mapping[tuple[int, ...], int], top_k: int) -> float | None:
    """The mean Jaccard index over all pairs of different occurrences, from ``sets``: top-k set -> occurrences.

    Every set has ``top_k`` experts, so two sets sharing ``i`` experts have Jaccard ``i / (2 top_k - i)``.

    Examples:
        >>> round(mean_jaccard({(0, 1): 2, (1, 2): 1}, 2), 4)  # pairs: (0,1)-(0,1) = 1, twice (0,1)-(1,2) = 1/3
        0.5556
    """
    import torch

    total = sum(sets.values())
    if total < 2:
        return None
    keys = list(sets)
    weights = torch.tensor([sets[key] for key in keys], dtype=torch.float64)
    width = 1 + max(e for key in keys for e in key)
    member = torch.zeros((len(keys), width), dtype=torch.float64)
    for row, key in enumerate(keys):
        member[row, list(key)] = 1.0
    summed = torch.zeros((), dtype=torch.float64)
    for start in range(0, len(keys), 1024):  # chunks keep the pairwise matrix small however many sets there are
        shared = member[start : start + 1024] @ member.T
        jaccard = shared / (2 * top_k - shared)
        summed += (weights[start : start + 1024, None] * weights[None, :] * jaccard).sum()
    # The sum ran over ordered pairs of occurrences, each with itself too (Jaccard 1): take those out.
    return float((summed - weights.sum()) / (total * (total - 1)))


class _Tally:
    """Running counts of one token's routing over the batches, per layer."""

    def __init__(self, lm: LanguageModel, token_id: int, layers: list[int], listed: int) -> None:
        self.lm = lm
        self.token_id = token_id
        self.layers = layers
        self.limit = max(0, int(listed))
        self.n = lm.arch.n_experts
        self.occurrences = 0
        self.prompts: set[int] = set()
        self.top1 = [[0] * self.n for _ in layers]
        self.topk = [[0] * self.n for _ in layers]
        self.sets: list[Counter[tuple[int, ...]]] = [Counter() for _ in layers]
        self.listed: list[tuple[tuple[int, int], Occurrence]] = []

    def add(self, batch: RoutingBatch) -> None:
        import torch

        ids = batch.input_ids.cpu()
        hits = torch.nonzero(ids == self.token_id).flatten()
        if hits.numel() == 0:
            return
        lengths = batch.lengths.tolist()
        starts = torch.tensor([0, *lengths]).cumsum(0)[:-1]
        # Which prompt of the batch each hit is in, and its position there.
        which = torch.searchsorted(starts, hits, right=True) - 1
        position = hits - starts[which]
        rows = batch.rows.cpu()[which].tolist()
        chosen = [batch.expert_index[layer].cpu()[hits].tolist() for layer in self.layers]
        self.occurrences += int(hits.numel())
        self.prompts.update(rows)
        for row in range(len(self.layers)):
            for experts in chosen[row]:
                self.top1[row][experts[0]] += 1
                for e in experts:
                    self.topk[row][e] += 1
                self.sets[row][tuple(sorted(experts))] += 1
        for i, (prompt, pos) in enumerate(zip(rows, position.tolist(), strict=True)):
            start = int(starts[which[i]])
            before = self.lm.tokenizer.decode(ids[start + max(0, pos - BEFORE) : start + pos].tolist())
            occurrence = Occurrence(
                prompt=prompt, position=pos, before=before, experts=[chosen[row][i] for row in range(len(self.layers))]
            )
            self.listed.append(((prompt, pos), occurrence))
        # Batches come bucketed by length, not in corpus order: keep the first ``limit`` seen so far.
        self.listed = sorted(self.listed, key=lambda item: item[0])[: self.limit]

    def layer(self, row: int) -> LayerAgreement:
        top1 = self.top1[row]
        n = self.occurrences
        modal = max(range(self.n), key=lambda e: (top1[e], -e))
        pairs = n * (n - 1)
        return LayerAgreement(
            layer=self.layers[row],
            modal_expert=modal,
            top1_agreement=top1[modal] / n,
            top1_pairwise=sum(c * (c - 1) for c in top1) / pairs if pairs else None,
            jaccard=mean_jaccard(self.sets[row], self.lm.arch.top_k),
            top1_counts=top1,
            topk_counts=self.topk[row],
        )
