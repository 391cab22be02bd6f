"""Mixture-of-experts introspection: how a model routes, what its experts do, and changing both.

Routing: ``info`` describes the model's routing (`MoEInfo`), ``trace`` one prompt's routing token by token
(`RoutingTrace`, bit for bit the router's own outputs), ``routing`` streams a corpus's routing batch by
batch (`RoutingBatch`), ``utilization`` counts each expert's tokens with the family's load-balancing loss.
Corpus statistics: ``specialization`` (domains, vocabulary and token types, OLMoE's definitions),
``context`` (one token across its contexts), ``pipeline`` and ``coactivation`` (routes through the layers,
experts chosen together), ``predict`` (linear probes from the residual to later routing). Experts: ``vocab``
(tokens each expert promotes), ``compression`` (similarity, merges, SVD overlay, measured). Changes:
``override`` (zero, force, forbid), ``expert_ablation`` (for `mechscope.causal.sweep`), ``reroute`` and
``compare`` (two checkpoints). A dense model raises `mechscope.errors.MoEError`.

The functions share their modules' names (``mechscope.moe.trace`` is both), so they are bound here, after
their modules are imported; those modules import torch only when a function runs, so that this package and
its ``results`` import without torch (for the HTML reports).

Examples:
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

from mechscope.moe.coactivation import coactivation as _coactivation
from mechscope.moe.compare import compare as _compare
from mechscope.moe.compression import compression as _compression
from mechscope.moe.compression import edited, verify_edits
from mechscope.moe.compression_results import Compression, EditCheck, Merge, Overlay, OverlayRank, PairSimilarity
from mechscope.moe.context import context as _context
from mechscope.moe.domain_sets import Domain, default_domains, load_domains
from mechscope.moe.info import moe_info
from mechscope.moe.intervention_results import LayerComparison, RouteResult, RoutingComparison
from mechscope.moe.interventions import (
    ExpertAblation,
    LayerEdit,
    RoutingOverride,
    expert_ablation,
    override,
)
from mechscope.moe.path_results import (
    Coactivation,
    ExpertPath,
    Pipeline,
    ProbeScore,
    RoutingPrediction,
    Transition,
)
from mechscope.moe.pipeline import pipeline as _pipeline
from mechscope.moe.predict import predict as _predict
from mechscope.moe.results import LayerRouting, LayerUtilization, MoEInfo, RoutingTrace, Utilization
from mechscope.moe.route import reroute
from mechscope.moe.routing import RoutingBatch
from mechscope.moe.routing import routing as _routing
from mechscope.moe.specialization import specialization as _specialization
from mechscope.moe.specialization_results import (
    ContextRouting,
    ExpertProfile,
    ExpertShares,
    LayerAgreement,
    LayerSpecialization,
    Specialization,
)
from mechscope.moe.token_types import TOKEN_TYPES, token_type
from mechscope.moe.trace import trace as _trace
from mechscope.moe.utilization import utilization as _utilization
from mechscope.moe.vocab import vocab as _vocab
from mechscope.moe.vocab_results import ExpertVocab, LayerVocab, VocabContribution, VocabReadout, VocabToken

info = moe_info
coactivation = _coactivation
compare = _compare
compression = _compression
context = _context
pipeline = _pipeline
predict = _predict
routing = _routing
specialization = _specialization
trace = _trace
utilization = _utilization
vocab = _vocab

__all__ = [
    "TOKEN_TYPES",
    "Coactivation",
    "Compression",
    "ContextRouting",
    "Domain",
    "EditCheck",
    "ExpertAblation",
    "ExpertPath",
    "ExpertProfile",
    "ExpertShares",
    "ExpertVocab",
    "LayerAgreement",
    "LayerComparison",
    "LayerEdit",
    "LayerRouting",
    "LayerSpecialization",
    "LayerUtilization",
    "LayerVocab",
    "Merge",
    "MoEInfo",
    "Overlay",
    "OverlayRank",
    "PairSimilarity",
    "Pipeline",
    "ProbeScore",
    "RouteResult",
    "RoutingBatch",
    "RoutingComparison",
    "RoutingOverride",
    "RoutingPrediction",
    "RoutingTrace",
    "Specialization",
    "Transition",
    "Utilization",
    "VocabContribution",
    "VocabReadout",
    "VocabToken",
    "coactivation",
    "compare",
    "compression",
    "context",
    "default_domains",
    "edited",
    "expert_ablation",
    "info",
    "load_domains",
    "moe_info",
    "override",
    "pipeline",
    "predict",
    "reroute",
    "routing",
    "specialization",
    "token_type",
    "trace",
    "utilization",
    "verify_edits",
    "vocab",
]
