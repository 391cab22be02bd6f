"""Models: loading and the architecture map (the only place that knows model families)."""

from mechscope.models.archmap import ModelMap, build_map
from mechscope.models.families import FAMILIES, FamilySpec
from mechscope.models.loading import LoadedModel, load_model
from mechscope.models.registry import list_organisms, register_organism

__all__ = [
    "FAMILIES",
    "FamilySpec",
    "LoadedModel",
    "ModelMap",
    "build_map",
    "list_organisms",
    "load_model",
    "register_organism",
]
