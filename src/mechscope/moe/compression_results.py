"""The result of the compression analysis (`mechscope.moe.compression`): plain values, no torch.

`Compression` holds one MoE layer's expert similarity (weights raw and after aligning hidden units, outputs
on a corpus), its merge candidates and cold experts, the SVD overlay by rank, and the edits (`Merge`,
`Overlay`) applied and measured on the corpus (`EditCheck`). It checks its own values.

Examples:
    >>> edit = Overlay(rank=2)
    >>> edit.label(), Merge(experts=(1, 3)).label()
    ('overlay rank 2', 'merge 1+3')
    >>> Merge(experts=(2, 2))
    Traceback (most recent call last):
    ...
    pydantic_core._pydantic_core.ValidationError: 1 validation error for Merge
    ...
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, model_validator

from mechscope.errors import InputError


class Merge(BaseModel):
    """Merge two experts: ``experts[1]``'s hidden units aligned to ``experts[0]``'s, averaged, used for both.

    Both experts' weights become ``(W_a + P W_b) / 2`` (``P`` the alignment permutation, `mechscope.moe.packed.align`;
    biases averaged the same way); the router is unchanged, so the tokens it sends to either expert now meet
    the merged one (a token routed to both gets it with the sum of its two weights).
    """

    kind: Literal["merge"] = "merge"
    experts: tuple[int, int]

    @model_validator(mode="after")
    def _two_experts(self) -> Merge:
        if self.experts[0] == self.experts[1] or min(self.experts) < 0:
            raise ValueError(f"a merge needs two different experts, got {self.experts}")
        return self

    def label(self) -> str:
        """A short name: ``merge a+b``."""
        return f"merge {self.experts[0]}+{self.experts[1]}"


class Overlay(BaseModel):
    """Replace every expert's matrices by the shared base plus its residual truncated to rank ``rank``."""

    kind: Literal["overlay"] = "overlay"
    rank: int = Field(ge=1)

    def label(self) -> str:
        """A short name: ``overlay rank r``."""
        return f"overlay rank {self.rank}"


Edit = Annotated[Merge | Overlay, Field(discriminator="kind")]


class PairSimilarity(BaseModel):
    """How alike two experts ``a < b`` of one layer are.

    Attributes:
        raw_cosine: cosine of the two experts' weight vectors, hidden units in stored order (the naive baseline).
        aligned_cosine: the same after permuting ``b``'s hidden units to best match ``a``'s (never below
            ``raw_cosine``: the stored order is one of the permutations searched).
        output_cosine: ``<O_a, O_b>_F / (|O_a|_F |O_b|_F)`` over the corpus tokens routed to ``a`` or ``b``,
            where ``O_e`` stacks expert e's own (unweighted) outputs on those tokens (None: no corpus, or no
            token reached either expert).
        tokens: how many tokens ``output_cosine`` is taken over.
    """

    a: int
    b: int
    raw_cosine: float
    aligned_cosine: float
    output_cosine: float | None = None
    tokens: int = 0


class OverlayRank(BaseModel):
    """The SVD overlay at one rank: error and size.

    Attributes:
        relative_error: ``sqrt(sum_e sum_M ||M_e - M_e^(r)||^2 / sum_e sum_M ||M_e||^2)`` over the matrices M
            (gate, up, down) of every expert e, for the overlay applied (base from aligned experts).
        unaligned_error: the same with the base averaged over the experts as stored (no alignment).
        max_expert_error: the largest per-expert relative error (aligned base).
        parameters: matrix parameters the overlay stores (base + factors); ``savings = 1 - parameters /
            original``, negative when the overlay is larger than the experts.
    """

    rank: int
    relative_error: float
    unaligned_error: float
    max_expert_error: float
    parameters: int
    savings: float


class EditCheck(BaseModel):
    """An edit applied to one layer (in place, restored after) and measured on a corpus.

    Attributes:
        base_loss, edited_loss: mean next-token NLL (nats) over the corpus, unedited and edited, in the same
            process on the same batches; ``loss_change = edited_loss - base_loss``.
        top1_agreement: share of real token positions where the edited model's top-1 token equals the
            unedited one's.
        kl: mean over the same positions of KL(unedited || edited) of the next-token distributions (nats).
        predictions: token positions compared; ``targets``: next tokens scored (the loss).
    """

    edit: Edit
    base_loss: float
    edited_loss: float
    loss_change: float
    top1_agreement: float
    kl: float
    predictions: int
    targets: int


class Compression(BaseModel):
    """Compression opportunities of one MoE layer, measured.

    Attributes:
        full_rank: ``min(hidden, d_model)``, the largest overlay rank.
        original_parameters: the layer's expert matrix parameters (biases are left out of every count).
        aligned_cosine_null: what alignment alone gives two unrelated experts: the aligned cosine of expert 0
            and expert 1 after a fixed random permutation of expert 1's model dimension (same weight
            statistics, no shared function). Aligned cosines near it mean nothing (None: one expert only).
        merge_candidates: pairs ``(a, b)`` whose aligned weight cosine and output cosine both reach their
            thresholds, the most similar first (the smaller of the two cosines, descending); None without a
            corpus (output similarity was not measured).
        share, cold: each expert's share of the corpus tokens (summing to top-k) and the experts below
            ``cold_threshold``, as `mechscope.moe.utilization` counts them (None without a corpus).
        base_error, unaligned_base_error: the overlay's relative error at rank 0 (every expert replaced by
            the base), with and without alignment.
        overlay: the overlay at each rank asked for.
        verified: the edits applied and measured (``verify``).
    """

    model: str
    family: str
    layer: int
    n_experts: int
    top_k: int
    hidden: int
    d_model: int
    full_rank: int
    weight_threshold: float
    output_threshold: float
    cold_threshold: float
    prompts: int
    tokens: int
    pairs: list[PairSimilarity]
    aligned_cosine_null: float | None
    merge_candidates: list[tuple[int, int]] | None = None
    share: list[float] | None = None
    cold: list[int] | None = None
    original_parameters: int
    base_error: float
    unaligned_base_error: float
    overlay: list[OverlayRank]
    verified: list[EditCheck] = []

    @model_validator(mode="after")
    def _consistent(self) -> Compression:
        expected = self.n_experts * (self.n_experts - 1) // 2
        if len(self.pairs) != expected:
            raise ValueError(f"need all {expected} expert pairs, got {len(self.pairs)}")
        if any(not 1 <= r.rank <= self.full_rank for r in self.overlay):
            raise ValueError(f"overlay ranks must be in 1..{self.full_rank}")
        if self.share is not None and len(self.share) != self.n_experts:
            raise ValueError(f"need a share for each of the {self.n_experts} experts, got {len(self.share)}")
        return self

    def pair(self, a: int, b: int) -> PairSimilarity:
        """The similarity of experts ``a`` and ``b`` (either order).

        Raises:
            InputError: no such pair.
        """
        low, high = sorted((a, b))
        for pair in self.pairs:
            if (pair.a, pair.b) == (low, high):
                return pair
        raise InputError(f"no pair ({a}, {b}); layer {self.layer} has experts 0..{self.n_experts - 1}")

    def matrix(self, what: Literal["raw", "aligned", "output"]) -> list[list[float | None]]:
        """``[expert][expert]`` cosines of one kind (1 on the diagonal, None where not measured).

        Examples:
            >>> pairs = [PairSimilarity(a=0, b=1, raw_cosine=0.1, aligned_cosine=0.5)]
            >>> result = Compression(
            ...     model="m", family="mixtral", layer=0, n_experts=2, top_k=1, hidden=4, d_model=2, full_rank=2,
            ...     weight_threshold=0.8, output_threshold=0.8, cold_threshold=0.01, prompts=0, tokens=0,
            ...     pairs=pairs, aligned_cosine_null=0.2, original_parameters=48, base_error=0.5,
            ...     unaligned_base_error=0.6, overlay=[])
            >>> result.matrix("aligned")
            [[1.0, 0.5], [0.5, 1.0]]
        """
        n = self.n_experts
        grid: list[list[float | None]] = [[1.0 if i == j else None for j in range(n)] for i in range(n)]
        for p in self.pairs:
            value = {"raw": p.raw_cosine, "aligned": p.aligned_cosine, "output": p.output_cosine}[what]
            grid[p.a][p.b] = grid[p.b][p.a] = value
        if what == "output" and all(p.output_cosine is None for p in self.pairs):
            grid = [[None] * n for _ in range(n)]
        return grid
