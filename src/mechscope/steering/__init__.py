"""Activation steering: directions from contrast sets, trained vectors, steered generation and evaluation.

``train`` fits one steering vector on the language-model loss of target completions with the model frozen
(`TrainResult`, a compact `SteeringVector` checkpoint; ``lr_sweep`` over learning rates); ``rollouts``
generates with several vectors and scales next to the vanilla and the prompted model, and
``score_rollouts`` scores them (classifier, fluency, bootstrap intervals); ``compare_vectors`` sets a trained
vector against the difference of means, ``search`` picks the layer and scale. Directions from contrast sets are
in `mechscope.steering.directions`, steered generation in `mechscope.steering.generate`.

The names are loaded on first use, so that the results modules (``train_results``, ``rollout_results``)
import without torch, for the HTML reports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the lazy names are, for type checkers and the docs (griffe)
    from mechscope.core.direction import Direction
    from mechscope.steering.compare_results import VectorComparison
    from mechscope.steering.comparison import compare_vectors
    from mechscope.steering.directions import diff_of_means
    from mechscope.steering.layer_search import search
    from mechscope.steering.rollout import rollouts
    from mechscope.steering.rollout_results import RolloutEvaluation, Rollouts
    from mechscope.steering.scoring import HttpJudge, score_rollouts
    from mechscope.steering.search_results import SteeringSearch, rank_candidates
    from mechscope.steering.train_results import LRSweep, TrainResult
    from mechscope.steering.trainer import lr_sweep, train
    from mechscope.steering.vector import SteeringVector

#: Public name -> the module that defines it.
_NAMES = {
    "Direction": "mechscope.steering.directions",
    "diff_of_means": "mechscope.steering.directions",
    "train": "mechscope.steering.trainer",
    "lr_sweep": "mechscope.steering.trainer",
    "TrainResult": "mechscope.steering.train_results",
    "LRSweep": "mechscope.steering.train_results",
    "SteeringVector": "mechscope.steering.vector",
    "rollouts": "mechscope.steering.rollout",
    "Rollouts": "mechscope.steering.rollout_results",
    "RolloutEvaluation": "mechscope.steering.rollout_results",
    "score_rollouts": "mechscope.steering.scoring",
    "HttpJudge": "mechscope.steering.scoring",
    "compare_vectors": "mechscope.steering.comparison",
    "VectorComparison": "mechscope.steering.compare_results",
    "search": "mechscope.steering.layer_search",
    "SteeringSearch": "mechscope.steering.search_results",
    "rank_candidates": "mechscope.steering.search_results",
}

__all__ = [
    "Direction",
    "HttpJudge",
    "LRSweep",
    "RolloutEvaluation",
    "Rollouts",
    "SteeringSearch",
    "SteeringVector",
    "TrainResult",
    "VectorComparison",
    "compare_vectors",
    "diff_of_means",
    "lr_sweep",
    "rank_candidates",
    "rollouts",
    "score_rollouts",
    "search",
    "train",
]


def __getattr__(name: str) -> Any:
    module = _NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'mechscope.steering' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value
