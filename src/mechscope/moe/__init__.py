"""Mixture-of-experts introspection: how a model routes, one prompt's routing, expert utilization.

``info`` describes the model's routing (`MoEInfo`), ``trace`` one prompt's routing token by token
(`RoutingTrace`, bit for bit the router's own outputs), ``routing`` streams a corpus's routing batch by
batch (`RoutingBatch`), and ``utilization`` counts each expert's tokens with the family's load-balancing
loss (`Utilization`). A dense model raises `mechscope.errors.MoEError`.

The functions share their modules' names (``mechscope.moe.trace`` is both), so they are bound here, after
their modules are imported; those modules import torch only when a function runs, so that this package and
its ``results`` import without torch (for the HTML reports).

Example:
    >>> import mechscope as ms
    >>> lm = ms.load("toy-moe")
    >>> ms.moe.info(lm).top_k
    2
    >>> step = ms.moe.trace(lm, "The capital of France is").layer(0)
    >>> len(step.experts) == len(step.weights) == len(step.entropy)
    True
    >>> usage = ms.moe.utilization(lm, ["The capital of France is", "Two plus two is"])
    >>> round(sum(usage.layer(3).share), 6)
    2.0
"""

from __future__ import annotations

from mechscope.moe.compare import compare as _compare
from mechscope.moe.info import moe_info
from mechscope.moe.intervention_results import LayerComparison, RouteResult, RoutingComparison
from mechscope.moe.interventions import (
    ExpertAblation,
    LayerEdit,
    RoutingOverride,
    expert_ablation,
    override,
)
from mechscope.moe.results import LayerRouting, LayerUtilization, MoEInfo, RoutingTrace, Utilization
from mechscope.moe.route import reroute
from mechscope.moe.routing import RoutingBatch
from mechscope.moe.routing import routing as _routing
from mechscope.moe.trace import trace as _trace
from mechscope.moe.utilization import utilization as _utilization

info = moe_info
compare = _compare
routing = _routing
trace = _trace
utilization = _utilization

__all__ = [
    "ExpertAblation",
    "LayerComparison",
    "LayerEdit",
    "LayerRouting",
    "LayerUtilization",
    "MoEInfo",
    "RouteResult",
    "RoutingBatch",
    "RoutingComparison",
    "RoutingOverride",
    "RoutingTrace",
    "Utilization",
    "compare",
    "expert_ablation",
    "info",
    "moe_info",
    "override",
    "reroute",
    "routing",
    "trace",
    "utilization",
]
