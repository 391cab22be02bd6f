"""The results of the routing-path analyses: plain values (ints, floats), no tensors, no torch.

`Pipeline` (how a token's top-1 expert at one MoE layer goes with its top-1 expert at the next, and the most
frequent full paths through every MoE layer), `Coactivation` (which experts one layer chooses together for a
token) and `RoutingPrediction` (how well a linear probe on the residual stream predicts later routing). Each
checks its own counts; each carries the baseline a reader needs to tell structure from chance.

Axis names: ``expert`` (0 .. n_experts - 1), ``source`` / ``target`` (the expert at the earlier / later
layer of a transition), ``layer`` (the model's own layer numbers, MoE layers only where said).

Examples:
    >>> t = Transition(source_layer=0, target_layer=1, counts=[[3, 1], [0, 0]], probability=[[0.75, 0.25], [0, 0]],
    ...                mutual_information=0.0)
    >>> t.lift(0, 0)  # P(target 0 | source 0) = 0.75 over P(target 0) = 0.75: no structure
    1.0
"""

from __future__ import annotations

import math

from pydantic import BaseModel, model_validator

from mechscope.errors import InputError


def _rows_are_distributions(rows: list[list[float]], total: float, what: str) -> None:
    """Each row sums to ``total``, or is all zeros (a row whose condition never happened)."""
    for i, row in enumerate(rows):
        mass = sum(row)
        if mass != 0 and not math.isclose(mass, total, rel_tol=1e-6, abs_tol=1e-9):
            raise ValueError(f"{what}: row {i} sums to {mass}, not {total} (or 0 where it never happened)")


class Transition(BaseModel):
    """Top-1 experts of the same tokens at two consecutive MoE layers (dense layers between are skipped).

    Attributes:
        source_layer, target_layer: the earlier and the later MoE layer.
        counts: ``[source][target]`` tokens whose top-1 expert is ``source`` at the earlier layer and
            ``target`` at the later one; the counts sum to the corpus's tokens.
        probability: ``[source][target]`` ``P(target | source) = counts[s][t] / sum_t counts[s][t]``; each row
            sums to 1, or is all 0 where the source expert was never anyone's top-1.
        mutual_information: ``I(source; target)`` in nats, from the counts: 0 when the two layers' choices are
            independent, at most ``ln n_experts``.
    """

    source_layer: int
    target_layer: int
    counts: list[list[int]]
    probability: list[list[float]]
    mutual_information: float

    @model_validator(mode="after")
    def _rows(self) -> Transition:
        n = len(self.counts)
        widths = [len(r) for r in self.counts] + [len(r) for r in self.probability]
        if len(self.probability) != n or any(w != n for w in widths):
            raise ValueError(f"transition {self.source_layer}->{self.target_layer}: matrices must be square")
        _rows_are_distributions(self.probability, 1.0, f"transition {self.source_layer}->{self.target_layer}")
        return self

    @property
    def target_share(self) -> list[float]:
        """``[target]`` ``P(target)``: each expert's share of top-1 choices at the later layer."""
        total = sum(map(sum, self.counts))
        return [sum(row[t] for row in self.counts) / total if total else 0.0 for t in range(len(self.counts))]

    def lift(self, source: int, target: int) -> float:
        """``P(target | source) / P(target)``: 1 is what independent layers give; nan where undefined."""
        expected = self.target_share[target]
        if expected == 0 or sum(self.counts[source]) == 0:
            return math.nan
        return self.probability[source][target] / expected


class ExpertPath(BaseModel):
    """One full path: a token's top-1 expert at every MoE layer, and how often it occurs.

    Attributes:
        experts: the top-1 expert per MoE layer, in layer order (`Pipeline.layers`).
        count, share: tokens that take this path, and their fraction of all tokens.
        independent_share: the share expected if the layers chose independently: the product over layers of
            each expert's top-1 share there (the chance baseline).
        markov_share: the share expected if each layer depended only on the one before:
            ``P(e_first) * prod P(e_next | e_prev)`` from the transitions (full-path structure beyond that
            shows as ``share`` far from this).
    """

    experts: list[int]
    count: int
    share: float
    independent_share: float
    markov_share: float

    @property
    def lift(self) -> float:
        """``share / independent_share``: how much more often the path occurs than chance (1 = chance)."""
        return self.share / self.independent_share if self.independent_share else math.inf


class Pipeline(BaseModel):
    """Expert pipelines over a corpus: transitions between consecutive MoE layers and the frequent full paths.

    Only each token's top-1 expert (the router's first choice, its highest score) is followed.

    Attributes:
        layers: the MoE layers, in order (the path's positions).
        prompts, tokens: how many prompts ran, and their real (non-padding) tokens.
        top1_counts: ``[layer row][expert]`` tokens whose top-1 expert is that expert, per MoE layer.
        transitions: one per pair of consecutive MoE layers.
        distinct_paths: how many different full paths the corpus's tokens took (of ``n_experts ** layers``).
        paths: the most frequent full paths, most frequent first (ties: in expert order).
    """

    model: str
    family: str
    n_experts: int
    top_k: int
    layers: list[int]
    prompts: int
    tokens: int
    top1_counts: list[list[int]]
    transitions: list[Transition]
    distinct_paths: int
    paths: list[ExpertPath]

    @model_validator(mode="after")
    def _counts_add_up(self) -> Pipeline:
        if len(self.top1_counts) != len(self.layers) or len(self.transitions) != max(0, len(self.layers) - 1):
            raise ValueError("a pipeline needs top-1 counts per MoE layer and a transition per consecutive pair")
        if any(len(row) != self.n_experts or sum(row) != self.tokens for row in self.top1_counts):
            raise ValueError(f"top-1 counts need {self.n_experts} experts per layer, summing to {self.tokens} tokens")
        for t in self.transitions:
            if len(t.counts) != self.n_experts or sum(map(sum, t.counts)) != self.tokens:
                raise ValueError(f"transition {t.source_layer}->{t.target_layer}: counts must sum to {self.tokens}")
        if (
            any(len(p.experts) != len(self.layers) for p in self.paths)
            or sum(p.count for p in self.paths) > self.tokens
        ):
            raise ValueError("paths need one expert per MoE layer and cannot hold more tokens than the corpus")
        return self

    def top1_share(self, layer: int) -> list[float]:
        """``[expert]`` each expert's share of top-1 choices at MoE layer ``layer`` (sums to 1)."""
        row = self.top1_counts[self._row(layer)]
        return [c / self.tokens if self.tokens else 0.0 for c in row]

    def transition(self, source_layer: int) -> Transition:
        """The transition from MoE layer ``source_layer`` to the next MoE layer.

        Raises:
            InputError: ``source_layer`` is not an MoE layer with a later one.
        """
        for t in self.transitions:
            if t.source_layer == source_layer:
                return t
        starts = [t.source_layer for t in self.transitions]
        raise InputError(f"no transition from layer {source_layer}; transitions start at layers {starts}")

    def _row(self, layer: int) -> int:
        if layer not in self.layers:
            raise InputError(f"layer {layer} is not an MoE layer of the pipeline; it covers {self.layers}")
        return self.layers.index(layer)


class Coactivation(BaseModel):
    """Which experts one MoE layer chooses together for a token, over every pair of its top-k experts.

    Attributes:
        counts: ``[expert]`` ``N(i)``: tokens whose top-k contains expert i (sums to ``tokens * top_k``).
        pair_counts: ``[i][j]`` ``N(i, j)``: tokens whose top-k contains both i and j (i ≠ j; the diagonal is
            0). Every pair of chosen experts counts, whatever their ranks, so it is symmetric and row i sums
            to ``(top_k - 1) * N(i)``.
        probability: ``[i][j]`` ``P(j | i) = N(i, j) / N(i)``: of the tokens routed to i, the share also routed
            to j. A row sums to ``top_k - 1`` (the other slots), or is all 0 where i was never chosen.
        expected: ``[i][j]`` the same probability if the other ``top_k - 1`` slots were filled independently
            of i, in proportion to the other experts' overall counts:
            ``(top_k - 1) * N(j) / (tokens * top_k - N(i))``. Rows sum to ``top_k - 1`` as well.
    """

    model: str
    family: str
    layer: int
    n_experts: int
    top_k: int
    prompts: int
    tokens: int
    counts: list[int]
    pair_counts: list[list[int]]
    probability: list[list[float]]
    expected: list[list[float]]

    @model_validator(mode="after")
    def _counts_add_up(self) -> Coactivation:
        n, k = self.n_experts, self.top_k
        square = (self.pair_counts, self.probability, self.expected)
        if len(self.counts) != n or any(len(m) != n or any(len(r) != n for r in m) for m in square):
            raise ValueError(f"co-activation needs {n} experts in every row and column")
        if sum(self.counts) != self.tokens * k:
            raise ValueError(f"counts must sum to tokens x top_k = {self.tokens * k}")
        for i, row in enumerate(self.pair_counts):
            if row[i] != 0 or sum(row) != (k - 1) * self.counts[i]:
                raise ValueError(f"expert {i}: pair counts must sum to (top_k - 1) x N(i) with a 0 diagonal")
        _rows_are_distributions(self.probability, k - 1, "P(j | i)")
        _rows_are_distributions(self.expected, k - 1, "expected P(j | i)")
        return self

    def lift(self, i: int, j: int) -> float:
        """``P(j | i) / expected``: 1 is chance, above 1 the pair is chosen together more often; nan if undefined."""
        if i == j or self.expected[i][j] == 0:
            return math.nan
        return self.probability[i][j] / self.expected[i][j]

    def top_pairs(self, count: int = 10) -> list[tuple[int, int]]:
        """The ``(i, j)`` pairs (i < j) chosen together most often, most first."""
        pairs = [(i, j) for i in range(self.n_experts) for j in range(i + 1, self.n_experts)]
        return sorted(pairs, key=lambda p: (-self.pair_counts[p[0]][p[1]], p))[:count]


class ProbeScore(BaseModel):
    """How well the residual at one layer's input predicts the top-1 expert at one later MoE layer.

    Attributes:
        from_layer: the probe reads ``resid_pre.<from_layer>`` (the residual stream entering that layer).
        to_layer: the MoE layer whose top-1 expert is the target (at or after ``from_layer``).
        accuracy: the probe's accuracy on the held-out prompts' tokens.
        train_accuracy: its accuracy on the training tokens (far above ``accuracy`` means it overfits).
        majority: the held-out accuracy of always answering ``majority_expert``, the most frequent top-1
            expert of the training tokens (the baseline to beat).
        chance: ``1 / n_experts``.
        classes: how many distinct top-1 experts the training tokens have (1: the probe is that constant).
        converged: whether the solver converged within its iteration limit.
    """

    from_layer: int
    to_layer: int
    accuracy: float
    train_accuracy: float
    majority: float
    majority_expert: int
    chance: float
    classes: int
    converged: bool


class RoutingPrediction(BaseModel):
    """Linear probes from the residual stream to later routing, per (from, to) layer pair, with baselines.

    Attributes:
        site: the residual site the probes read (``resid_pre``: the input of ``from_layer``).
        probe: the probe in words (model, regularisation, scaling).
        prompts: prompts used (after the ``max_examples`` cap); ``train_prompts`` + ``test_prompts``.
        train_tokens, test_tokens: real tokens of the training and held-out prompts.
        test_share, seed: the share of prompts held out, and the seed of the split (split by prompt, never
            by token, so a prompt's tokens are all on one side).
        max_examples, capped: the token cap, and whether it left prompts of the corpus out.
        scores: one per (from, to) pair, from layer then to layer ascending.
    """

    model: str
    family: str
    n_experts: int
    top_k: int
    site: str
    probe: str
    prompts: int
    train_prompts: int
    test_prompts: int
    train_tokens: int
    test_tokens: int
    test_share: float
    seed: int
    max_examples: int | None
    capped: bool
    scores: list[ProbeScore]

    @model_validator(mode="after")
    def _split_adds_up(self) -> RoutingPrediction:
        if self.train_prompts + self.test_prompts != self.prompts or min(self.train_prompts, self.test_prompts) < 1:
            raise ValueError("train and test prompts must both be non-empty and add up to the prompts used")
        return self

    def score(self, from_layer: int, to_layer: int) -> ProbeScore:
        """The probe from ``resid_pre.<from_layer>`` to the routing of MoE layer ``to_layer``.

        Raises:
            InputError: no probe was fitted for that pair.
        """
        for s in self.scores:
            if (s.from_layer, s.to_layer) == (from_layer, to_layer):
                return s
        pairs = [(s.from_layer, s.to_layer) for s in self.scores]
        raise InputError(f"no probe from layer {from_layer} to layer {to_layer}; the result has {pairs}")
