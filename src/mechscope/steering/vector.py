"""`SteeringVector`: a trained steering vector and its compact checkpoint (the vector and a JSON config only).

A run folder holds ``vector.safetensors`` (one float32 tensor ``vector`` of shape ``[d_model]``) and
``config.json`` (``kind`` ``trained_steering_vector``, schema 1: model and revision, family, layer, site,
positions, d_model, dtype, norm, the training arguments, the data hash and the metrics). It never holds model
weights. ``direction`` turns the vector into a `Direction` for `steering_ops` / `generate_with_steering`.

Examples:
    >>> import tempfile, torch
    >>> import mechscope as ms
    >>> lm = ms.load("toy")
    >>> vector = SteeringVector(torch.ones(lm.arch.d_model), layer=1, config=checkpoint_config(lm, 1))
    >>> folder = vector.save(tempfile.mkdtemp())
    >>> loaded = SteeringVector.from_pretrained(folder, lm)
    >>> torch.equal(loaded.vector, vector.vector), loaded.direction.site_name
    (True, 'resid_post.1')
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mechscope.core.direction import Direction
from mechscope.core.lm import LanguageModel
from mechscope.errors import ModelLoadError
from mechscope.storage.atomic import atomic_write_text
from mechscope.storage.tensors import load_tensors, save_tensors

KIND = "trained_steering_vector"
SCHEMA = 1
VECTOR_FILE = "vector.safetensors"
CONFIG_FILE = "config.json"


def model_revision(lm: LanguageModel) -> str | None:
    """The commit hash the model was loaded at, when transformers recorded one."""
    value = getattr(lm.model.config, "_commit_hash", None)
    return str(value) if value else None


def checkpoint_config(
    lm: LanguageModel, layer: int, *, site: str = "resid_post", positions: str = "all"
) -> dict[str, Any]:
    """The model-describing part of a checkpoint's ``config.json`` (training fields are added by the trainer)."""
    return {
        "kind": KIND,
        "schema": SCHEMA,
        "model": lm.source,
        "revision": model_revision(lm),
        "family": lm.arch.family,
        "layer": layer,
        "site": site,
        "positions": positions,
        "d_model": lm.arch.d_model,
        "dtype": "float32",
        "norm": None,
        "training": {},
        "data_hash": None,
        "metrics": {},
    }


@dataclass
class SteeringVector:
    """A trained vector for one layer's ``resid_post``, with the config of the run that trained it.

    Examples:
        `mechscope.steering.trainer.train` makes one (``result.steering_vector()``), but any ``[d_model]``
        tensor can be wrapped; its `direction` steers generation, and `check` says in one line why a vector
        does not fit a model:

        >>> import torch, mechscope as ms
        >>> from mechscope.steering.directions import diff_of_means
        >>> from mechscope.steering.generate import generate_with_steering
        >>> lm = ms.load("toy")
        >>> topics = ["the sea", "the ship", "the weather", "the town"]
        >>> towards = diff_of_means(lm, [f"<pirate> Tell me about {t}." for t in topics],
        ...                         [f"<formal> Tell me about {t}." for t in topics], layers=[1])[1]
        >>> vector = SteeringVector(2 * towards.vector, layer=1)
        >>> vector.direction.site_name, round(vector.norm, 2)
        ('resid_post.1', 21.79)
        >>> generate_with_steering(lm, "<formal> Tell me about the sea.", vector.direction, 1.0, max_new_tokens=8)
        [' Ahoy! the sea be full Ahoy?']
        >>> SteeringVector(torch.ones(64), layer=1).check(lm)
        Traceback (most recent call last):
        ...
        mechscope.errors.ModelLoadError: the vector is for d_model 64, this model has 128
    """

    vector: Tensor
    layer: int
    site: str = "resid_post"
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def norm(self) -> float:
        """The vector's L2 norm (the learned scale)."""
        return float(self.vector.detach().float().norm())

    @property
    def direction(self) -> Direction:
        """The vector as a `Direction` (method ``trained``), for `steering_ops` and `generate_with_steering`."""
        meta = {"norm": self.norm, "run_dir": self.config.get("run_dir")}
        return Direction(
            vector=self.vector.detach().float().cpu(),
            layer=self.layer,
            site=self.site,
            model=str(self.config.get("model", "")),
            method="trained",
            meta=meta,
        )

    def save(self, folder: str | Path) -> Path:
        """Write ``vector.safetensors`` and ``config.json`` into ``folder`` (created), each atomically."""
        target = Path(folder)
        target.mkdir(parents=True, exist_ok=True)
        vector = self.vector.detach().float().cpu().contiguous()
        config = {**self.config, "kind": KIND, "schema": SCHEMA, "layer": self.layer, "site": self.site}
        config.update({"d_model": int(vector.shape[-1]), "dtype": "float32", "norm": self.norm})
        config.pop("run_dir", None)
        save_tensors(target / VECTOR_FILE, {"vector": vector}, kind=KIND, schema_version=SCHEMA)
        atomic_write_text(target / CONFIG_FILE, json.dumps(config, indent=2, sort_keys=True) + "\n")
        return target

    @classmethod
    def from_pretrained(cls, path: str | Path, lm: LanguageModel | None = None) -> SteeringVector:
        """Read a run folder (or its ``vector.safetensors``); with ``lm``, check that the vector fits it.

        Raises:
            ModelLoadError: no checkpoint there, or (one line) what differs between the vector and ``lm``.
        """
        folder = Path(path)
        if folder.is_file():
            folder = folder.parent
        config_path = folder / CONFIG_FILE
        if not config_path.is_file() or not (folder / VECTOR_FILE).is_file():
            raise ModelLoadError(f"no trained steering vector in '{folder}' (it needs {VECTOR_FILE} and {CONFIG_FILE})")
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ModelLoadError(f"'{config_path}' is not valid JSON; the checkpoint is damaged") from None
        if not isinstance(config, dict) or config.get("kind") != KIND:
            raise ModelLoadError(f"'{folder}' is not a trained steering vector (its config names no kind {KIND!r})")
        if int(config.get("schema", 0)) > SCHEMA:
            raise ModelLoadError(f"'{folder}' has schema {config['schema']}; this mechscope reads up to {SCHEMA}")
        stored = load_tensors(folder / VECTOR_FILE, kind=KIND, what="trained steering vector")
        if "vector" not in stored.tensors:
            raise ModelLoadError(f"'{folder / VECTOR_FILE}' holds no 'vector' tensor")
        config["run_dir"] = str(folder)
        vector = cls(stored.tensors["vector"], int(config["layer"]), str(config.get("site", "resid_post")), config)
        if lm is not None:
            vector.check(lm)
        return vector

    def check(self, lm: LanguageModel) -> None:
        """Raise `ModelLoadError` (one line saying what differs) if this vector does not fit ``lm``."""
        width = int(self.vector.shape[-1])
        family = self.config.get("family")
        if width != lm.arch.d_model:
            raise ModelLoadError(f"the vector is for d_model {width}, this model has {lm.arch.d_model}")
        if family and family != lm.arch.family:
            raise ModelLoadError(f"the vector was trained on a {family} model, this model is {lm.arch.family}")
        if not 0 <= self.layer < lm.arch.n_layers:
            raise ModelLoadError(f"the vector is for layer {self.layer}, this model has {lm.arch.n_layers} layers")
        if not torch.isfinite(self.vector).all():
            raise ModelLoadError("the vector holds NaN or infinite values; the training diverged")
