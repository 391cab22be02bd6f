"""mechscope: look inside any Hugging Face language model and change it.

The public API, curated here. Names load on first use, so ``import mechscope`` stays fast and imports
neither torch nor transformers until a model is needed.

>>> import mechscope as ms
>>> lm = ms.load("toy")
>>> with lm.capture(["resid_post.*"], positions="last") as cache:
...     _ = lm.forward("The capital of France is")
>>> cache["resid_post.0"].shape == (1, lm.arch.d_model)
True
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mechscope.errors import (
    ArchitectureError,
    HookNotFiredError,
    InputError,
    InterventionError,
    MechscopeError,
    ModelLoadError,
    PositionError,
    SiteError,
)

if TYPE_CHECKING:
    from mechscope import moe, sae
    from mechscope.api.analyzer import Analyzer, AsyncAnalyzer
    from mechscope.api.expert_router import ExpertRouter
    from mechscope.api.model_analyzer import AnalysisConfig, ModelAnalyzer
    from mechscope.core import ops
    from mechscope.core.cache import Cache
    from mechscope.core.layers import LayerStrategy
    from mechscope.core.lm import LanguageModel, load, wrap
    from mechscope.core.positions import PassInfo
    from mechscope.core.sites import SITE_KINDS, Site
    from mechscope.lens.logit import LogitLens
    from mechscope.lens.results import LensResult
    from mechscope.models.archmap import ModelMap
    from mechscope.models.registry import list_organisms, register_organism

__version__ = "0.1.0.dev0"

#: public name -> the module it is (imported on first access).
_MODULES = {
    "ops": "mechscope.core.ops",
    "moe": "mechscope.moe",
    "sae": "mechscope.sae",
    "steering": "mechscope.steering",
}
#: public name -> the module that defines it (imported on first access).
_LAZY = {
    "Analyzer": "mechscope.api.analyzer",
    "AsyncAnalyzer": "mechscope.api.analyzer",
    "ExpertRouter": "mechscope.api.expert_router",
    "AnalysisConfig": "mechscope.api.model_analyzer",
    "ModelAnalyzer": "mechscope.api.model_analyzer",
    "Cache": "mechscope.core.cache",
    "LayerStrategy": "mechscope.core.layers",
    "LanguageModel": "mechscope.core.lm",
    "load": "mechscope.core.lm",
    "wrap": "mechscope.core.lm",
    "PassInfo": "mechscope.core.positions",
    "SITE_KINDS": "mechscope.core.sites",
    "Site": "mechscope.core.sites",
    "LogitLens": "mechscope.lens.logit",
    "LensResult": "mechscope.lens.results",
    "ModelMap": "mechscope.models.archmap",
    "list_organisms": "mechscope.models.registry",
    "register_organism": "mechscope.models.registry",
}

__all__ = [
    "SITE_KINDS",
    "AnalysisConfig",
    "Analyzer",
    "ArchitectureError",
    "AsyncAnalyzer",
    "Cache",
    "ExpertRouter",
    "HookNotFiredError",
    "InputError",
    "InterventionError",
    "LanguageModel",
    "LayerStrategy",
    "LensResult",
    "LogitLens",
    "MechscopeError",
    "ModelAnalyzer",
    "ModelLoadError",
    "ModelMap",
    "PassInfo",
    "PositionError",
    "Site",
    "SiteError",
    "__version__",
    "list_organisms",
    "load",
    "moe",
    "ops",
    "register_organism",
    "sae",
    "steering",
    "wrap",
]


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return importlib.import_module(_MODULES[name])
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mechscope' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
