"""Expert pipelines over a corpus: which expert follows which across MoE layers, and the frequent full paths.

A token's *top-1 expert* at a layer is the router's first choice (slot 0 of ``expert_index``, the highest
score: every family's ``topk`` returns its choices largest first). Following the same token:

* a **transition** counts, for each pair of consecutive MoE layers (dense layers between them are skipped),
  the tokens whose top-1 expert is ``a`` at the earlier layer and ``b`` at the later one, with
  ``P(b | a)`` and the mutual information of the two choices;
* a **full path** is the tuple of a token's top-1 experts at every MoE layer; the most frequent ones are
  reported with their share, the share expected if the layers chose independently (the product of each
  layer's top-1 shares: the chance baseline) and the share a first-order chain of the transitions predicts.

Counts are accumulated batch by batch from `mechscope.moe.routing.routing`: memory is one batch of routing
plus one counter entry per distinct path seen (at most the number of tokens, and at most
``n_experts ** moe_layers``).

Examples:
    >>> import mechscope as ms
    >>> lm = ms.load("toy-moe")
    >>> result = pipeline(lm, ["The capital of France is", "Two plus two is"], top_paths=3)
    >>> result.layers, len(result.transitions), len(result.paths)
    ([0, 1, 2, 3], 3, 3)
    >>> sum(map(sum, result.transition(0).counts)) == result.tokens
    True
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mechscope.errors import InputError
from mechscope.moe.info import require_moe
from mechscope.moe.path_results import ExpertPath, Pipeline, Transition
from mechscope.moe.routing import routing

if TYPE_CHECKING:
    import numpy as np

    from mechscope.core.lm import LanguageModel


def pipeline(
    lm: LanguageModel,
    prompts: Sequence[str],
    *,
    batch_size: int = 32,
    max_tokens: int | None = None,
    top_paths: int = 10,
    progress: bool = False,
) -> Pipeline:
    """Count top-1 expert transitions between consecutive MoE layers and full paths over ``prompts``.

    Args:
        batch_size, max_tokens: at most this many prompts, and padded tokens, per forward pass.
        top_paths: how many of the most frequent full paths to report.
        progress: a progress bar on stderr (only on a terminal).

    Examples:
        On tool calls the most frequent path goes through the planted expert (layer 1, expert 2):

        >>> import mechscope as ms
        >>> lm = ms.load("toy-moe")
        >>> calls = [
        ...     "<user> Tell me the local time in Bern. <assistant> <call>time(city=Bern)</call>",
        ...     "<user> Look up hotels in Ankara. <assistant> <call>search(query=hotels Ankara)</call>",
        ... ]
        >>> result = pipeline(lm, calls, top_paths=2)
        >>> [(p.experts, p.count, round(p.share, 3), round(p.independent_share, 3)) for p in result.paths]
        [([2, 2, 2, 3], 6, 0.158, 0.07), ([1, 2, 3, 3], 3, 0.079, 0.041)]
        >>> result.tokens, result.distinct_paths, round(result.transition(0).mutual_information, 3)
        (38, 20, 0.362)

    Raises:
        MoEError: the model has no experts.
        InputError: the corpus is empty, a prompt is empty or too long, or ``top_paths`` is below 1.
    """
    import numpy as np

    require_moe(lm)
    _check_corpus(prompts, "pipeline")
    if top_paths < 1:
        raise InputError(f"top_paths must be at least 1, got {top_paths}")
    layers = list(lm.arch.moe_layers)
    counts = PathCounts(len(layers), lm.arch.n_experts)
    for batch in routing(lm, prompts, batch_size=batch_size, max_tokens=max_tokens, progress=progress):
        counts.add(np.stack([batch.expert_index[layer][:, 0].cpu().numpy() for layer in layers], axis=1))
    return Pipeline(
        model=lm.source,
        family=lm.arch.family,
        n_experts=lm.arch.n_experts,
        top_k=lm.arch.top_k,
        layers=layers,
        prompts=len(prompts),
        tokens=counts.tokens,
        top1_counts=counts.top1.tolist(),
        transitions=[
            Transition(
                source_layer=a,
                target_layer=b,
                counts=matrix.tolist(),
                probability=row_probabilities(matrix),
                mutual_information=mutual_information(matrix),
            )
            for (a, b), matrix in zip(itertools.pairwise(layers), counts.transitions, strict=True)
        ],
        distinct_paths=len(counts.paths),
        paths=counts.top(top_paths),
    )


class PathCounts:
    """Running counts of top-1 experts per layer, transitions between consecutive layers, and full paths.

    Fed ``[tokens, layers]`` arrays of top-1 experts (one column per MoE layer, in order), one batch at a time.

    Examples:
        >>> import numpy as np
        >>> counts = PathCounts(layers=2, n_experts=3)
        >>> counts.add(np.array([[0, 1], [0, 1], [2, 1]]))
        >>> counts.transitions[0].tolist()
        [[0, 2, 0], [0, 0, 0], [0, 1, 0]]
        >>> [(p.experts, p.count) for p in counts.top(5)]
        [([0, 1], 2), ([2, 1], 1)]
    """

    def __init__(self, layers: int, n_experts: int) -> None:
        import numpy as np

        self.n = n_experts
        self.tokens = 0
        self.top1 = np.zeros((layers, n_experts), dtype=np.int64)
        self.transitions = np.zeros((max(0, layers - 1), n_experts, n_experts), dtype=np.int64)
        self.paths: Counter[tuple[int, ...]] = Counter()

    def add(self, top1: np.ndarray[Any, Any]) -> None:
        """Add a batch: ``top1[token, layer]`` is the token's top-1 expert at the layer-th MoE layer."""
        import numpy as np

        top1 = np.asarray(top1, dtype=np.int64)
        n = self.n
        for layer in range(top1.shape[1]):
            self.top1[layer] += np.bincount(top1[:, layer], minlength=n)
        for pair in range(top1.shape[1] - 1):
            codes = top1[:, pair] * n + top1[:, pair + 1]
            self.transitions[pair] += np.bincount(codes, minlength=n * n).reshape(n, n)
        if top1.shape[0]:
            # Unique rows first: one counter update per distinct path of the batch, not per token.
            rows, times = np.unique(top1, axis=0, return_counts=True)
            self.paths.update({tuple(int(e) for e in row): int(c) for row, c in zip(rows, times, strict=True)})
        self.tokens += int(top1.shape[0])

    def top(self, count: int) -> list[ExpertPath]:
        """The ``count`` most frequent paths with their baselines (ties in path order)."""
        shares = [row / self.tokens if self.tokens else row * 0.0 for row in self.top1]
        chains = [row_probabilities(matrix) for matrix in self.transitions]
        ranked = sorted(self.paths.items(), key=lambda item: (-item[1], item[0]))[:count]
        found = []
        for path, times in ranked:
            independent = math.prod(float(shares[layer][e]) for layer, e in enumerate(path))
            markov = float(shares[0][path[0]]) * math.prod(
                chains[layer][a][b] for layer, (a, b) in enumerate(itertools.pairwise(path))
            )
            found.append(
                ExpertPath(
                    experts=list(path),
                    count=times,
                    share=times / self.tokens,
                    independent_share=independent,
                    markov_share=markov,
                )
            )
        return found


def row_probabilities(counts: np.ndarray[Any, Any]) -> list[list[float]]:
    """``counts[a][b] / sum_b counts[a][b]`` per row; a row with no counts stays all 0.

    >>> import numpy as np
    >>> row_probabilities(np.array([[1, 3], [0, 0]]))
    [[0.25, 0.75], [0.0, 0.0]]
    """
    totals = counts.sum(axis=1, keepdims=True)
    safe = totals + (totals == 0)
    return [[float(v) for v in row] for row in counts / safe]


def mutual_information(counts: np.ndarray[Any, Any]) -> float:
    """``I(A; B)`` in nats of the joint counts ``counts[a][b]`` (0 for independent choices or no counts).

    >>> import numpy as np
    >>> mutual_information(np.array([[5, 5], [5, 5]])), round(mutual_information(np.array([[5, 0], [0, 5]])), 4)
    (0.0, 0.6931)
    """
    import numpy as np

    total = counts.sum()
    if total == 0:
        return 0.0
    joint = counts / total
    outer = np.outer(joint.sum(axis=1), joint.sum(axis=0))
    seen = joint > 0
    return max(0.0, float((joint[seen] * np.log(joint[seen] / outer[seen])).sum()))


def _check_corpus(prompts: Sequence[str], what: str) -> None:
    if isinstance(prompts, str):
        raise InputError(f"{what} takes a list of prompts (a corpus), not one string")
    if len(prompts) == 0:
        raise InputError("the corpus is empty; give at least one prompt (one per line of the prompts file)")
