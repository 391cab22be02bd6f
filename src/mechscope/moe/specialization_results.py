"""The results of expert specialization and the context test: plain values (ints, floats, strings), no tensors.

`Specialization` (which experts a domain's, a token type's and a token id's tokens go to, per MoE layer,
with a generalist / specialist label per expert) and `ContextRouting` (how one token's routing agrees
across its occurrences). Each checks that its counts add up; nothing here imports torch.

Share names: ``topk_share[e]`` is the fraction of a group's tokens that have expert e among their top-k
(the shares sum to ``top_k``; a router that ignores the group gives every expert ``top_k / n_experts``), and
``top1_share[e]`` the fraction whose first choice is e (they sum to 1; uniform ``1 / n_experts``).
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, model_validator

from mechscope.errors import InputError


class ExpertShares(BaseModel):
    """How one group of tokens (a domain, or a token type) spreads over the experts at one layer.

    Attributes:
        name: the domain's name, or the token type.
        tokens: how many tokens of the group were counted.
        topk_counts, top1_counts: ``[expert]`` tokens with the expert among their top-k / as their first choice.
        topk_share, top1_share: those counts divided by ``tokens`` (all 0 when the group has no token).
    """

    name: str
    tokens: int
    topk_counts: list[int]
    top1_counts: list[int]
    topk_share: list[float]
    top1_share: list[float]

    def ranking(self, *, top1: bool = False) -> list[int]:
        """The experts from the largest share to the smallest (top-k shares unless ``top1``; ties: lower first)."""
        share = self.top1_share if top1 else self.topk_share
        return sorted(range(len(share)), key=lambda e: (-share[e], e))


class TokenRouting(BaseModel):
    """How one token id is routed at one layer (top-1): its most frequent expert and that expert's share.

    Attributes:
        token: the token's text, decoded alone.
        occurrences: how many times the id was counted.
        expert: the expert most of its occurrences go to first (ties: the lower number).
        share: the fraction of its occurrences routed first to ``expert``: its vocabulary specialization.
    """

    token_id: int
    token: str
    occurrences: int
    expert: int
    share: float


class ExpertProfile(BaseModel):
    """One expert at one layer: which domain it leans to, and its label.

    Attributes:
        label: ``specialist`` when ``ratio >= specialist_ratio`` of the result, else ``generalist`` (see
            `mechscope.moe.specialization.expert_labels`).
        top_domain: the domain where the expert's top-k share is largest (ties: the first domain).
        top_domain_share: that share; ``mean_domain_share`` its mean over the domains (unweighted).
        ratio: ``top_domain_share / mean_domain_share`` (1 for an expert no domain uses).
        domain_entropy_normalised: entropy of the expert's top-k shares over the domains, normalised to sum
            to 1, divided by ``log(domains)``: 1 is an even spread, 0 one domain only (1 with one domain).
        token_ids: how many token ids have this expert as their most frequent one (top-1).
        tokens: the most frequent of those ids.
    """

    expert: int
    label: Literal["specialist", "generalist"]
    top_domain: str
    top_domain_share: float
    mean_domain_share: float
    ratio: float
    domain_entropy_normalised: float
    token_ids: int
    tokens: list[TokenRouting]


class LayerSpecialization(BaseModel):
    """Domain, token-type and vocabulary specialization at one MoE layer.

    Attributes:
        domains, token_types: one `ExpertShares` per domain (in the result's domain order) and per token type.
        vocabulary_specialization: the mean over token ids, weighted by occurrences, of each id's `TokenRouting`
            share (OLMoE's vocabulary specialization, pooled): 1 when every id always goes to one expert.
        token_ids: how many distinct token ids were counted.
        frequent_tokens: the most frequent token ids, most frequent first.
        experts: one `ExpertProfile` per expert.
    """

    layer: int
    domains: list[ExpertShares]
    token_types: list[ExpertShares]
    vocabulary_specialization: float
    token_ids: int
    frequent_tokens: list[TokenRouting]
    experts: list[ExpertProfile]

    def domain(self, name: str) -> ExpertShares:
        """The shares of one domain.

        Raises:
            InputError: no domain has that name.
        """
        for shares in self.domains:
            if shares.name == name:
                return shares
        raise InputError(f"no domain {name!r}; the domains are {[d.name for d in self.domains]}")


class DomainInfo(BaseModel):
    """One domain of the corpus: its prompts, the tokens counted, and its span markers if it has them."""

    name: str
    prompts: int
    tokens: int
    span: list[str] | None


class Specialization(BaseModel):
    """Which experts each domain, token type and token id is routed to, per MoE layer.

    Definitions follow OLMoE (Muennighoff et al., 2024; see `mechscope.moe.specialization`). ``uniform`` is
    ``top_k / n_experts``, the top-k share of every expert under a router that ignores the domain.

    Attributes:
        prompts, tokens: all prompts run, and the tokens counted (inside spans where a domain has them).
        specialist_ratio: the ratio from which an expert is labelled a specialist.
    """

    model: str
    family: str
    n_experts: int
    top_k: int
    uniform: float
    prompts: int
    tokens: int
    domains: list[DomainInfo]
    specialist_ratio: float
    layers: list[LayerSpecialization]

    @model_validator(mode="after")
    def _counts_add_up(self) -> Specialization:
        names = [d.name for d in self.domains]
        if sum(d.tokens for d in self.domains) != self.tokens:
            raise ValueError(f"the domains' tokens must sum to the {self.tokens} tokens counted")
        for layer in self.layers:
            if [d.name for d in layer.domains] != names:
                raise ValueError(f"layer {layer.layer}: domains must be {names}")
            for group in (*layer.domains, *layer.token_types):
                _check_shares(group, self.n_experts, self.top_k, layer.layer)
            if [d.tokens for d in layer.domains] != [d.tokens for d in self.domains]:
                raise ValueError(f"layer {layer.layer}: domain token counts differ from the corpus's")
            if sum(t.tokens for t in layer.token_types) != self.tokens:
                raise ValueError(f"layer {layer.layer}: token types must cover the {self.tokens} tokens")
            if len(layer.experts) != self.n_experts:
                raise ValueError(f"layer {layer.layer}: one profile per expert ({self.n_experts})")
        return self

    def layer(self, index: int) -> LayerSpecialization:
        """The specialization at MoE layer ``index`` (the model's layer number).

        Raises:
            InputError: the result has no such layer.
        """
        for layer in self.layers:
            if layer.layer == index:
                return layer
        raise InputError(f"no specialization for layer {index}; it covers layers {[s.layer for s in self.layers]}")


def _check_shares(group: ExpertShares, n_experts: int, top_k: int, layer: int) -> None:
    where = f"layer {layer}, {group.name!r}"
    rows = (group.topk_counts, group.top1_counts, group.topk_share, group.top1_share)
    if any(len(row) != n_experts for row in rows):
        raise ValueError(f"{where}: counts and shares need {n_experts} experts")
    if sum(group.topk_counts) != group.tokens * top_k or sum(group.top1_counts) != group.tokens:
        raise ValueError(f"{where}: top-k counts must sum to tokens x top_k and top-1 counts to tokens")
    if group.tokens and not math.isclose(sum(group.topk_share), top_k, rel_tol=1e-6):
        raise ValueError(f"{where}: top-k shares must sum to top_k = {top_k}")


class LayerAgreement(BaseModel):
    """How the occurrences of one token agree on their routing at one MoE layer.

    Attributes:
        modal_expert: the expert most occurrences choose first (ties: the lower number).
        top1_agreement: the fraction of occurrences whose first choice is ``modal_expert`` (1: the context
            never matters; ``1 / n_experts`` or so: it decides everything).
        top1_pairwise: the probability that two different occurrences, drawn at random, share their first
            choice (``sum_e c_e (c_e - 1) / (n (n - 1))``); None with one occurrence.
        jaccard: the mean over all pairs of different occurrences of ``|A ∩ B| / |A ∪ B|``, A and B their
            top-k sets; None with one occurrence.
        top1_counts, topk_counts: ``[expert]`` occurrences choosing the expert first / among their top-k.
    """

    layer: int
    modal_expert: int
    top1_agreement: float
    top1_pairwise: float | None
    jaccard: float | None
    top1_counts: list[int]
    topk_counts: list[int]


class Occurrence(BaseModel):
    """One occurrence of the token: where it is and where it goes.

    Attributes:
        prompt, position: the prompt's index in the corpus and the token's position in it (0 = first token).
        before: the few tokens before it, as text (its immediate context).
        experts: ``[layer][k]`` its top-k experts at each layer of the result, in the router's order.
    """

    prompt: int
    position: int
    before: str
    experts: list[list[int]]


class ContextRouting(BaseModel):
    """The context test: one token's routing across its occurrences in a corpus, per MoE layer.

    Attributes:
        token, token_id: the token followed, as given and as its id.
        occurrences: how many times it occurs; ``contexts`` in how many different prompts.
        listed: the first occurrences (at most the ``listed`` limit of the call), in corpus order.
    """

    model: str
    token: str
    token_id: int
    n_experts: int
    top_k: int
    prompts: int
    occurrences: int
    contexts: int
    layers: list[LayerAgreement]
    listed: list[Occurrence]

    @model_validator(mode="after")
    def _counts_add_up(self) -> ContextRouting:
        for layer in self.layers:
            if sum(layer.top1_counts) != self.occurrences or sum(layer.topk_counts) != self.occurrences * self.top_k:
                raise ValueError(f"layer {layer.layer}: counts must sum to occurrences (x top_k)")
        return self

    def layer(self, index: int) -> LayerAgreement:
        """The agreement at MoE layer ``index``.

        Raises:
            InputError: the result has no such layer.
        """
        for layer in self.layers:
            if layer.layer == index:
                return layer
        raise InputError(f"no agreement for layer {index}; it covers layers {[a.layer for a in self.layers]}")
