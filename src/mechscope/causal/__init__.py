"""Causal tools: ablation sweeps, activation and attribution patching, circuit graphs.

The names below are importable from ``mechscope.causal`` directly; they load on first use, so importing
`mechscope.causal.results` (as the HTML reports do) does not import torch.

Examples:
    >>> import mechscope as ms
    >>> from mechscope.causal import LogitDiff, activation_patching
    >>> lm = ms.load("toy")
    >>> metric = LogitDiff(lm, correct=" Paris", wrong=" Tokyo")
    >>> result = activation_patching(lm, "The capital of France is", "The capital of Japan is", metric)
    >>> result.effects[-1][-1] > 0.9  # the last layer at the last token carries the answer
    True
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mechscope.causal.ablation import contains, function_call, grid, parse_criterion, regex, sweep
    from mechscope.causal.metrics import KLToClean, LogitDiff, Metric, TargetProb
    from mechscope.causal.patching import activation_patching, attribution_patching, correlation
    from mechscope.causal.results import (
        AblationEffect,
        AblationResult,
        AttributionResult,
        CircuitGraph,
        PatchingResult,
    )

_EXPORTS = {
    "Metric": "metrics",
    "LogitDiff": "metrics",
    "TargetProb": "metrics",
    "KLToClean": "metrics",
    "PatchingResult": "results",
    "AttributionResult": "results",
    "AblationEffect": "results",
    "AblationResult": "results",
    "CircuitGraph": "results",
    "activation_patching": "patching",
    "attribution_patching": "patching",
    "correlation": "patching",
    "sweep": "ablation",
    "grid": "ablation",
    "parse_criterion": "ablation",
    "contains": "ablation",
    "regex": "ablation",
    "function_call": "ablation",
}

__all__ = [
    "AblationEffect",
    "AblationResult",
    "AttributionResult",
    "CircuitGraph",
    "KLToClean",
    "LogitDiff",
    "Metric",
    "PatchingResult",
    "TargetProb",
    "activation_patching",
    "attribution_patching",
    "contains",
    "correlation",
    "function_call",
    "grid",
    "parse_criterion",
    "regex",
    "sweep",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mechscope.causal' has no attribute '{name}'")
    return getattr(importlib.import_module(f"mechscope.causal.{_EXPORTS[name]}"), name)
