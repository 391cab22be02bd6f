"""The concept interpreter: a small transformer that reads pooled activations back into concepts.

A sample is a language model's pooled activations at a few captured layers, ``[n_layers, d]``. The
interpreter standardises every feature (the training rows' mean and standard deviation, kept as buffers),
projects each captured layer to ``d_model`` with its own linear map, adds a learned layer-position
embedding, and lets a pre-norm `torch.nn.TransformerEncoder` attend across the layers (one token per
captured layer; a single layer makes a sequence of length 1). The tokens' mean goes through a linear layer
to K concept logits.

The hierarchical variant adds a category head (C categories) on the same pooled vector; its concept
log-probabilities are the exact two-level factorisation
``log p(c) = log p(cat(c)) + log softmax_{c' ∈ cat(c)} (concept logits)``, so the category probabilities
are both the head's softmax and the sum of the concept probabilities per category.

A checkpoint folder holds ``interpreter.safetensors`` (the state dict) and ``interpreter.json`` (config,
shapes, layer indices, concepts and their categories, training log, ``format_version``). Training lives in
`mechscope.concepts.interpreter_train`.

Examples:
    >>> import tempfile, torch
    >>> model = Interpreter(d=8, n_layers=2, concept_ids=["a", "b", "c"], category=["x", "y", "x"],
    ...                     config=InterpreterConfig(d_model=16, heads=2), layers=[3, 5])
    >>> probs = model.probabilities(torch.randn(4, 2, 8))
    >>> probs.shape, model.categories, model.concept_category
    (torch.Size([4, 3]), ['x', 'y'], [0, 1, 0])
    >>> again = Interpreter.load(model.save(tempfile.mkdtemp()))
    >>> x = torch.randn(5, 2, 8)
    >>> torch.equal(again.probabilities(x), model.probabilities(x))
    True
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import Tensor, nn

from mechscope.concepts.interpreter_results import TrainingLog
from mechscope.errors import InputError
from mechscope.storage.atomic import atomic_write_text
from mechscope.storage.tensors import StoredFileError, load_tensors, save_tensors

FORMAT_VERSION = 1
KIND = "concept_interpreter"
TENSORS_FILE = "interpreter.safetensors"
META_FILE = "interpreter.json"


@dataclass
class InterpreterConfig:
    """The interpreter's shape and how it is trained.

    Attributes:
        d_model: the encoder's width.
        n_layers_encoder: transformer encoder layers.
        heads: attention heads (must divide ``d_model``).
        dim_feedforward: the encoder's feed-forward width (None: ``4·d_model``).
        dropout: dropout in the encoder.
        epochs, batch_size, lr, weight_decay: AdamW with a cosine-annealed learning rate over all steps.
        hierarchical: add a category head and factorise the concept probabilities through it.
        augment: synthetic samples per rare concept, drawn from ``N(mean, variance)`` of the concept's running
            statistics, for concepts with fewer than ``augment_below`` samples (None: 4 when statistics are
            given, else 0).
        augment_below: the sample count under which a concept is augmented.
        seed: seeds initialisation, dropout, augmentation and batch order.
        label_smoothing: cross-entropy label smoothing.

    Examples:
        >>> from dataclasses import asdict
        >>> config = InterpreterConfig(d_model=16, heads=2, epochs=3).check()
        >>> config.feedforward, InterpreterConfig.from_dict(asdict(config)) == config  # as interpreter.json keeps it
        (64, True)
        >>> InterpreterConfig(d_model=16, heads=3).check()
        Traceback (most recent call last):
        mechscope.errors.InputError: d_model (16) must be a positive multiple of heads (3)
    """

    d_model: int = 256
    n_layers_encoder: int = 2
    heads: int = 4
    dim_feedforward: int | None = None
    dropout: float = 0.1
    epochs: int = 10
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.01
    hierarchical: bool = False
    augment: int | None = None
    augment_below: int = 3
    seed: int = 0
    label_smoothing: float = 0.0

    def check(self) -> InterpreterConfig:
        """This config, once its values are usable (else `InputError`, one line)."""
        if self.d_model < 1 or self.heads < 1 or self.d_model % self.heads:
            raise InputError(f"d_model ({self.d_model}) must be a positive multiple of heads ({self.heads})")
        if self.n_layers_encoder < 1 or (self.dim_feedforward is not None and self.dim_feedforward < 1):
            raise InputError("n_layers_encoder and dim_feedforward must be at least 1")
        if not 0.0 <= self.dropout < 1.0 or not 0.0 <= self.label_smoothing < 1.0:
            raise InputError("dropout and label_smoothing must lie in [0, 1)")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.weight_decay < 0:
            raise InputError("epochs, batch_size and lr must be positive and weight_decay >= 0")
        if (self.augment is not None and self.augment < 0) or self.augment_below < 0:
            raise InputError("augment and augment_below must be >= 0")
        return self

    @property
    def feedforward(self) -> int:
        """The feed-forward width actually used."""
        return self.dim_feedforward or 4 * self.d_model

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> InterpreterConfig:
        """A config from `dataclasses.asdict` output (unknown keys are refused)."""
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"unknown interpreter config keys {unknown}; it was written by another mechscope")
        return cls(**values).check()


def within_category_log_softmax(logits: Tensor, group: Tensor, n_groups: int) -> Tensor:
    """``log softmax`` of ``logits`` ``[m, K]`` over each class's group (``group`` ``[K]`` in 0..n_groups-1).

    Every group must hold at least one class.

    Examples:
        Classes 0 and 1 form group 0, class 2 is alone in group 1 (its log-probability within it is 0):

        >>> import torch
        >>> logits = torch.tensor([[1.0, 1.0, 5.0], [0.0, 2.0, -3.0]])
        >>> within = within_category_log_softmax(logits, torch.tensor([0, 0, 1]), n_groups=2)
        >>> within.exp().round(decimals=3)
        tensor([[0.5000, 0.5000, 1.0000],
                [0.1190, 0.8810, 1.0000]])
    """
    index = group.unsqueeze(0).expand_as(logits)
    floor = logits.new_full((logits.shape[0], n_groups), -math.inf)
    peak = floor.scatter_reduce(1, index, logits, reduce="amax", include_self=True).detach()
    shifted = logits - peak.gather(1, index)
    totals = logits.new_zeros(logits.shape[0], n_groups).scatter_add(1, index, shifted.exp())
    return shifted - totals.log().gather(1, index)


class Interpreter(nn.Module):
    """Reads ``[m, n_layers, d]`` pooled activations into probabilities over K concepts (and C categories).

    Args:
        d: the activations' width.
        n_layers: captured layers per sample.
        concept_ids: the K concepts, in logit order.
        category: each concept's category (e.g. a WordNet lexicographer name, ``noun.animal``).
        config: the architecture (and training settings, stored with it).
        layers: the captured layers' indices in the language model (metadata).

    Examples:
        A hierarchical interpreter of three concepts in two categories, reading layers 2 and 3 (width 8):

        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> config = InterpreterConfig(d_model=16, heads=2, hierarchical=True)
        >>> model = Interpreter(8, 2, ["dog", "cat", "red"], ["animal", "animal", "colour"], config, layers=[2, 3])
        >>> x = torch.randn(4, 2, 8)
        >>> model.probabilities(x).shape, model.category_probabilities(x).shape, model.predict(x).shape
        (torch.Size([4, 3]), torch.Size([4, 2]), torch.Size([4]))
        >>> bool(torch.allclose(model.probabilities(x).sum(1), torch.ones(4)))
        True
        >>> model.categories, model.concept_categories, model.concept_category, model.layers
        (['animal', 'colour'], ['animal', 'animal', 'colour'], [0, 0, 1], [2, 3])
    """

    feature_mean: Tensor
    feature_std: Tensor
    concept_category_index: Tensor

    def __init__(
        self,
        d: int,
        n_layers: int,
        concept_ids: Sequence[str],
        category: Sequence[str],
        config: InterpreterConfig | None = None,
        layers: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.config = (config or InterpreterConfig()).check()
        if d < 1 or n_layers < 1:
            raise InputError(f"d and n_layers must be at least 1; got d = {d}, n_layers = {n_layers}")
        if len(concept_ids) < 2:
            raise InputError(f"an interpreter needs K >= 2 concepts; got K = {len(concept_ids)}")
        if len(category) != len(concept_ids):
            raise InputError(f"one category per concept: got {len(category)} categories for {len(concept_ids)}")
        if layers is not None and len(layers) != n_layers:
            raise InputError(f"{len(layers)} layer indices for {n_layers} captured layers")
        self.d, self.n_layers = d, n_layers
        self.layers = list(layers) if layers is not None else list(range(n_layers))
        self._concept_ids = [str(concept) for concept in concept_ids]
        self._category = [str(name) for name in category]
        self._categories = sorted(set(self._category))
        position = {name: index for index, name in enumerate(self._categories)}
        self.training_log: TrainingLog | None = None
        cfg = self.config
        self.register_buffer("feature_mean", torch.zeros(n_layers, d))
        self.register_buffer("feature_std", torch.ones(n_layers, d))
        index = torch.tensor([position[name] for name in self._category], dtype=torch.long)
        self.register_buffer("concept_category_index", index)
        self.project = nn.ModuleList(nn.Linear(d, cfg.d_model) for _ in range(n_layers))
        self.position = nn.Parameter(torch.randn(n_layers, cfg.d_model) * 0.02)
        block = nn.TransformerEncoderLayer(
            cfg.d_model, cfg.heads, cfg.feedforward, cfg.dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(
            block, cfg.n_layers_encoder, norm=nn.LayerNorm(cfg.d_model), enable_nested_tensor=False
        )
        self.concept_head = nn.Linear(cfg.d_model, len(self._concept_ids))
        self.category_head = nn.Linear(cfg.d_model, len(self._categories)) if cfg.hierarchical else None

    @property
    def concept_ids(self) -> list[str]:
        """The K concepts, in logit order."""
        return list(self._concept_ids)

    @property
    def concept_categories(self) -> list[str]:
        """Each concept's category name."""
        return list(self._category)

    @property
    def categories(self) -> list[str]:
        """The C categories, sorted (the columns of `category_probabilities`)."""
        return list(self._categories)

    @property
    def concept_category(self) -> list[int]:
        """Each concept's category, as an index into `categories`."""
        return [int(index) for index in self.concept_category_index.tolist()]

    @property
    def device(self) -> torch.device:
        """Where the parameters live."""
        return self.feature_mean.device

    def set_standardization(self, mean: Tensor, std: Tensor) -> None:
        """Store the per-feature ``[n_layers, d]`` mean and standard deviation applied to every input."""
        shape = (self.n_layers, self.d)
        if tuple(mean.shape) != shape or tuple(std.shape) != shape:
            raise InputError(f"standardisation must be {list(shape)}; got {list(mean.shape)} and {list(std.shape)}")
        if not bool((std > 0).all()):
            raise InputError("standard deviations must be positive")
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(std)

    def check_input(self, x: Tensor) -> Tensor:
        """``x`` as ``[m, n_layers, d]`` float32 (``[m, d]`` is accepted when n_layers is 1)."""
        if x.ndim == 2 and self.n_layers == 1:
            x = x.unsqueeze(1)
        if x.ndim != 3 or tuple(x.shape[1:]) != (self.n_layers, self.d):
            raise InputError(f"the interpreter reads [m, {self.n_layers}, {self.d}] activations; got {list(x.shape)}")
        return x.float()

    def heads(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Concept log-probabilities ``[m, K]`` (float32) and the category logits ``[m, C]`` (None when flat)."""
        z = (x.to(self.device) - self.feature_mean) / self.feature_std
        tokens = torch.stack([project(z[:, i]) for i, project in enumerate(self.project)], dim=1) + self.position
        pooled = self.encoder(tokens).mean(dim=1)
        logits = self.concept_head(pooled).float()
        if self.category_head is None:
            return F.log_softmax(logits, dim=-1), None
        category_logits = self.category_head(pooled).float()
        index = self.concept_category_index
        within = within_category_log_softmax(logits, index, len(self._categories))
        return F.log_softmax(category_logits, dim=-1)[:, index] + within, category_logits

    def forward(self, x: Tensor) -> Tensor:
        """Concept log-probabilities ``[m, K]`` of raw (unstandardised) activations ``[m, n_layers, d]``."""
        return self.heads(x)[0]

    @torch.no_grad()
    def _batched(self, x: Tensor, batch_size: int, categories: bool) -> Tensor:
        x = self.check_input(x)
        was_training = self.training
        self.eval()
        parts: list[Tensor] = []
        try:
            for start in range(0, x.shape[0], batch_size):
                log_probs, category_logits = self.heads(x[start : start + batch_size])
                if not categories:
                    parts.append(log_probs.exp().cpu())
                elif category_logits is not None:
                    parts.append(torch.softmax(category_logits, dim=-1).cpu())
                else:
                    probs = log_probs.exp()
                    summed = probs.new_zeros(probs.shape[0], len(self._categories))
                    parts.append(summed.index_add_(1, self.concept_category_index, probs).cpu())
        finally:
            self.train(was_training)
        width = len(self._categories) if categories else len(self._concept_ids)
        return torch.cat(parts) if parts else torch.zeros(0, width)

    def probabilities(self, x: Tensor, batch_size: int = 1024) -> Tensor:
        """``[m, K]`` concept probabilities (eval mode, no gradients, in batches; on the CPU)."""
        return self._batched(x, batch_size, categories=False)

    def category_probabilities(self, x: Tensor, batch_size: int = 1024) -> Tensor:
        """``[m, C]`` category probabilities: the category head's softmax, or (flat) concept mass per category."""
        return self._batched(x, batch_size, categories=True)

    def predict_category(self, x: Tensor, batch_size: int = 1024) -> Tensor:
        """``[m, C]`` category probabilities (the same as `category_probabilities`)."""
        return self.category_probabilities(x, batch_size)

    def predict(self, x: Tensor, batch_size: int = 1024) -> Tensor:
        """``[m]`` the most probable concept of each sample."""
        return self.probabilities(x, batch_size).argmax(dim=1)

    def metadata(self) -> dict[str, Any]:
        """What ``interpreter.json`` holds."""
        log = self.training_log.model_dump() if self.training_log is not None else None
        return {
            "format_version": FORMAT_VERSION,
            "kind": KIND,
            "config": asdict(self.config),
            "d": self.d,
            "n_layers": self.n_layers,
            "layers": self.layers,
            "concept_ids": self._concept_ids,
            "category": self._category,
            "training_log": log,
        }

    def save(self, directory: str | Path) -> Path:
        """Write ``interpreter.safetensors`` and ``interpreter.json`` into ``directory`` (created), atomically."""
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        state = {name: value.detach() for name, value in self.state_dict().items()}
        save_tensors(folder / TENSORS_FILE, state, kind=KIND, schema_version=FORMAT_VERSION)
        atomic_write_text(folder / META_FILE, json.dumps(self.metadata(), indent=1) + "\n")
        return folder

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> Interpreter:
        """Read a folder written by `save` (safetensors only, never pickle) onto ``device``, in eval mode.

        Raises:
            InputError: a file is missing, corrupt, of a newer format or does not match the other.
        """
        folder = Path(directory)
        meta_path, tensors_path = folder / META_FILE, folder / TENSORS_FILE
        fix = "retrain it or give the folder an interpreter was saved to"
        for path in (meta_path, tensors_path):
            if not path.is_file():
                raise InputError(f"no interpreter checkpoint file '{path}'; {fix}")
        meta = _read_meta(meta_path, fix)
        try:
            stored = load_tensors(tensors_path, kind=KIND, what="interpreter checkpoint")
        except StoredFileError as error:
            raise InputError(f"'{tensors_path}' is corrupt or not an interpreter ({error}); {fix}") from None
        except Exception as error:  # safetensors raises its own error type on truncated data
            raise InputError(f"'{tensors_path}' is corrupt ({type(error).__name__}); {fix}") from None
        if stored.schema_version > FORMAT_VERSION:
            raise InputError(f"'{tensors_path}' has format {stored.schema_version}; upgrade mechscope to read it")
        try:
            model = cls(
                d=int(meta["d"]),
                n_layers=int(meta["n_layers"]),
                concept_ids=list(meta["concept_ids"]),
                category=list(meta["category"]),
                config=InterpreterConfig.from_dict(dict(meta["config"])),
                layers=[int(layer) for layer in meta["layers"]],
            )
            log = meta.get("training_log")
            model.training_log = TrainingLog.model_validate(log) if log is not None else None
        except (KeyError, TypeError, ValueError, ValidationError) as error:
            raise InputError(f"'{meta_path}' is incomplete or malformed ({type(error).__name__}); {fix}") from None
        state = dict(stored.tensors)
        expected = model.state_dict()
        if set(state) != set(expected) or any(state[k].shape != expected[k].shape for k in expected):
            raise InputError(f"'{tensors_path}' does not match '{meta_path}' (other tensors or shapes); {fix}")
        state["concept_category_index"] = state["concept_category_index"].long()
        if not torch.equal(state["concept_category_index"], model.concept_category_index):
            raise InputError(f"the concept categories in '{tensors_path}' and '{meta_path}' differ; {fix}")
        model.load_state_dict(state)
        return model.to(device).eval()


def _read_meta(path: Path, fix: str) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InputError(f"'{path}' is not valid JSON; the checkpoint is damaged: {fix}") from None
    if not isinstance(meta, dict) or meta.get("kind") != KIND:
        raise InputError(f"'{path}' is not an interpreter's metadata (no kind {KIND!r}); {fix}")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise InputError(f"'{path}' has format {meta['format_version']}; upgrade mechscope to read it")
    return meta
