"""Expert co-activation at one MoE layer: which experts the router chooses together for a token.

``N(i)`` counts the tokens whose top-k contains expert i, ``N(i, j)`` those whose top-k contains both i and j
(i ≠ j), and ``P(j | i) = N(i, j) / N(i)``. Every pair of a token's chosen experts counts, whatever their
ranks (with top-3, the first and the third choice are a pair too), so the counts are symmetric and a row of
``P(j | i)`` sums to ``top_k - 1``. The baseline fills a token's other ``top_k - 1`` slots independently of i,
in proportion to the other experts' overall counts (see `Coactivation.expected`).

Counts are accumulated batch by batch from `mechscope.moe.routing.routing` (one batch of routing in memory).

Examples:
    >>> import mechscope as ms
    >>> lm = ms.load("toy-moe")
    >>> result = coactivation(lm, ["The capital of France is", "Two plus two is"], layer=1)
    >>> result.layer, sum(result.counts) == result.tokens * result.top_k
    (1, True)
    >>> [round(sum(row), 6) for row in result.probability if sum(row)]  # top-2: one other expert per token
    [1.0, 1.0, 1.0, 1.0]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mechscope.errors import InputError
from mechscope.moe.info import moe_layers
from mechscope.moe.path_results import Coactivation
from mechscope.moe.routing import routing

if TYPE_CHECKING:
    import numpy as np

    from mechscope.core.lm import LanguageModel


def coactivation(
    lm: LanguageModel,
    prompts: Sequence[str],
    *,
    layer: int,
    batch_size: int = 32,
    max_tokens: int | None = None,
    progress: bool = False,
) -> Coactivation:
    """Count, at MoE layer ``layer``, how often each pair of experts is chosen for the same token.

    Args:
        layer: the MoE layer (negative counts from the end of the model).
        batch_size, max_tokens: at most this many prompts, and padded tokens, per forward pass.
        progress: a progress bar on stderr (only on a terminal).

    Examples:
        >>> import mechscope as ms
        >>> lm = ms.load("toy-moe")
        >>> calls = [
        ...     "<user> Tell me the local time in Bern. <assistant> <call>time(city=Bern)</call>",
        ...     "<user> Look up hotels in Ankara. <assistant> <call>search(query=hotels Ankara)</call>",
        ... ]
        >>> result = coactivation(lm, calls, layer=1)
        >>> result.counts, result.top_pairs(2)  # tokens choosing each expert; the pairs chosen together most
        ([13, 18, 26, 19], [(2, 3), (0, 2)])
        >>> result.pair_counts[2][3], round(result.probability[2][3], 3), round(result.lift(2, 3), 3)  # > 1: not chance
        (12, 0.462, 1.215)

    Raises:
        MoEError: the model has no experts.
        SiteError: ``layer`` is outside the model or has no router (the message lists the MoE layers).
        InputError: the corpus is empty, or a prompt is empty or too long.
    """
    import numpy as np

    (chosen,) = moe_layers(lm, [layer])
    if isinstance(prompts, str):
        raise InputError("coactivation takes a list of prompts (a corpus), not one string")
    if len(prompts) == 0:
        raise InputError("the corpus is empty; give at least one prompt (one per line of the prompts file)")
    n, k = lm.arch.n_experts, lm.arch.top_k
    single = np.zeros(n, dtype=np.int64)
    pairs = np.zeros((n, n), dtype=np.int64)
    tokens = 0
    for batch in routing(lm, prompts, batch_size=batch_size, max_tokens=max_tokens, layers=[chosen], progress=progress):
        here, both = coactivation_counts(batch.expert_index[chosen].cpu().numpy(), n)
        single += here
        pairs += both
        tokens += batch.tokens
    return Coactivation(
        model=lm.source,
        family=lm.arch.family,
        layer=chosen,
        n_experts=n,
        top_k=k,
        prompts=len(prompts),
        tokens=tokens,
        counts=single.tolist(),
        pair_counts=pairs.tolist(),
        probability=conditional(pairs, single),
        expected=independent(single, tokens, k),
    )


def coactivation_counts(
    index: np.ndarray[Any, Any], n_experts: int
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """``(N, pairs)`` from ``index[token, slot]``, the experts chosen per token (each token's distinct).

    ``N[i]`` counts the tokens that chose i; ``pairs[i, j]`` (i ≠ j) those that chose both, over every pair of
    slots, not only neighbouring ranks; the diagonal is 0.

    Examples:
        >>> import numpy as np
        >>> single, pairs = coactivation_counts(np.array([[0, 1, 2], [2, 3, 0]]), 4)
        >>> single.tolist(), pairs[0].tolist()  # expert 0 and 2 share both tokens, from slots 0 and 2
        ([2, 1, 2, 1], [0, 1, 2, 1])
    """
    import numpy as np

    index = np.asarray(index, dtype=np.int64)
    chose = np.zeros((index.shape[0], n_experts), dtype=np.int64)
    chose[np.arange(index.shape[0])[:, None], index] = 1
    # chose.T @ chose counts, for each (i, j), the tokens whose set holds both: all pairs at once.
    joint = chose.T @ chose
    single = np.diag(joint).copy()
    np.fill_diagonal(joint, 0)
    return single, joint


def conditional(pairs: np.ndarray[Any, Any], single: np.ndarray[Any, Any]) -> list[list[float]]:
    """``P(j | i) = pairs[i, j] / single[i]``; an expert never chosen gets a row of 0."""
    safe = single + (single == 0)
    return [[float(v) for v in row] for row in pairs / safe[:, None]]


def independent(single: np.ndarray[Any, Any], tokens: int, top_k: int) -> list[list[float]]:
    """The baseline ``P(j | i) = (top_k - 1) * N(j) / (tokens * top_k - N(i))`` (0 on the diagonal).

    It is the chance of j filling one of i's ``top_k - 1`` companion slots if those were drawn in proportion to
    the other experts' counts, so each row sums to ``top_k - 1``, as the measured one does.

    >>> import numpy as np
    >>> [[round(p, 4) for p in row] for row in independent(np.array([2, 1, 1]), tokens=2, top_k=2)]
    [[0.0, 0.5, 0.5], [0.6667, 0.0, 0.3333], [0.6667, 0.3333, 0.0]]
    """
    n = len(single)
    rows = []
    for i in range(n):
        rest = tokens * top_k - int(single[i])
        rows.append([0.0 if j == i or rest <= 0 else (top_k - 1) * int(single[j]) / rest for j in range(n)])
    return rows
