"""mechscope: look inside any Hugging Face language model and change it.

The public API, curated here:

>>> import mechscope as ms
>>> lm = ms.load("toy")  # doctest: +SKIP
>>> with lm.capture(["resid_post.*"], positions="last") as cache:  # doctest: +SKIP
...     lm.forward("The capital of France is")
"""

from mechscope.core import ops
from mechscope.core.cache import Cache
from mechscope.core.lm import LanguageModel, load
from mechscope.core.positions import PassInfo
from mechscope.core.sites import SITE_KINDS, Site
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
from mechscope.lens.analyzer import AnalysisConfig, ModelAnalyzer
from mechscope.lens.logit import LogitLens
from mechscope.lens.results import LensResult
from mechscope.lens.strategy import LayerStrategy
from mechscope.models.archmap import ModelMap
from mechscope.models.registry import list_organisms, register_organism

__version__ = "0.1.0.dev0"

__all__ = [
    "SITE_KINDS",
    "AnalysisConfig",
    "ArchitectureError",
    "Cache",
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
    "ops",
    "register_organism",
]
