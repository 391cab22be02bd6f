"""The tuned lens: one learned affine translator per layer before the model's own read-out.

Layer L's residual ``h`` becomes ``h + W_L h + b_L`` (``W_L`` and ``b_L`` start at zero, so an untrained
tuned lens is the logit lens) and is then read out by ``arch.logits``. The translators are trained to
minimise the KL divergence from the model's final distribution on text the user gives; the model itself is
frozen. The last layer has no translator: its read-out is the model's output.

Example (a few steps on a few texts, to keep it quick; the default is 300 steps):
    >>> import tempfile
    >>> import mechscope as ms
    >>> lm = ms.load("toy")
    >>> texts = ["The capital of France is Paris.", "Two plus two is four.", "<pirate> Tell me about the sea."]
    >>> lens = TunedLens.fit(lm, texts, steps=5)
    >>> tuned, logit = layer_kl(lm, texts, lens), layer_kl(lm, texts)
    >>> all(t < k for t, k in zip(tuned[:-1], logit[:-1]))  # closer to the final distribution at every layer
    True
    >>> tuned[-1] == logit[-1]  # the last layer has no translator
    True
    >>> path = lens.save(Path(tempfile.mkdtemp()) / "toy.tuned.safetensors")
    >>> TunedLens.load(path, lm).n_layers == lm.arch.n_layers
    True
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from mechscope.core.lm import LanguageModel
from mechscope.errors import InputError, ModelLoadError
from mechscope.models.registry import check_provenance
from mechscope.progress import track
from mechscope.storage.tensors import load_tensors, save_tensors

SCHEMA_VERSION = 1
KIND = "tuned_lens"


class TunedLens(nn.Module):
    """Per-layer affine translators for a model with ``n_layers`` layers of width ``d_model``.

    Examples:
        >>> import tempfile, torch, mechscope as ms
        >>> lm = ms.load("toy")
        >>> texts = ["The capital of France is Paris.", "Two plus two is four."]
        >>> untrained = TunedLens(lm.arch.n_layers, lm.arch.d_model)  # zero translators: the logit lens
        >>> len(untrained.translators), layer_kl(lm, texts, untrained) == layer_kl(lm, texts)
        (3, True)
        >>> lens = TunedLens.fit(lm, texts, steps=10)
        >>> with lm.capture(["resid_post.1"]) as cache:
        ...     _ = lm.forward(texts[0])
        >>> lens.readout(lm, 1, cache["resid_post.1"]).shape  # [batch, pos, vocab]: layer 1 read out
        torch.Size([1, 9, 2054])
        >>> path = lens.save(Path(tempfile.mkdtemp()) / "toy.tuned.safetensors", model="toy")
        >>> TunedLens.load(path, ms.load("toy-moe"))  # the same shape, but trained on another model
        Traceback (most recent call last):
        ...
        mechscope.errors.ProvenanceError: the tuned lens in '...' was made for 'toy', not '.../toy-moe'; ...
        >>> TunedLens.load(path, lm).translate(1, cache["resid_post.1"]).shape
        torch.Size([1, 9, 128])
    """

    def __init__(self, n_layers: int, d_model: int) -> None:
        super().__init__()
        self.n_layers = n_layers
        self.d_model = d_model
        translators = [nn.Linear(d_model, d_model) for _ in range(n_layers - 1)]
        for translator in translators:
            nn.init.zeros_(translator.weight)
            nn.init.zeros_(translator.bias)
        self.translators = nn.ModuleList(translators)

    def translate(self, layer: int, resid: Tensor) -> Tensor:
        """Layer ``layer``'s residual moved towards the final layer's basis (identity for the last layer)."""
        if layer >= self.n_layers - 1:
            return resid
        translator = self.translators[layer]
        assert isinstance(translator, nn.Linear)
        moved: Tensor = translator(resid.to(translator.weight.dtype))
        return resid + moved.to(resid.dtype)

    def readout(self, lm: LanguageModel, layer: int, resid: Tensor) -> Tensor:
        """Logits of layer ``layer`` under the tuned lens."""
        return lm.arch.logits(self.translate(layer, resid))

    @classmethod
    def fit(
        cls,
        lm: LanguageModel,
        texts: Sequence[str],
        *,
        steps: int = 300,
        batch_size: int = 16,
        lr: float = 1e-3,
        seed: int = 0,
        progress: bool = False,
    ) -> TunedLens:
        """Fit translators so that each layer's read-out matches the final distribution on ``texts``.

        ``progress`` draws a bar on stderr (when it is a terminal).
        """
        if not texts:
            raise InputError("the tuned lens needs some training text")
        if steps < 1:
            raise InputError(f"steps must be at least 1, got {steps}: with no step the tuned lens is the logit lens")
        torch.manual_seed(seed)
        rng = random.Random(seed)
        lens = cls(lm.arch.n_layers, lm.arch.d_model).to(lm.device)
        optimizer = torch.optim.Adam(lens.parameters(), lr=lr)
        sites = [f"resid_post.{i}" for i in range(lm.arch.n_layers)]
        for _ in track(range(steps), "training the tuned lens", enabled=progress):
            batch = rng.sample(list(texts), min(batch_size, len(texts)))
            with torch.no_grad(), lm.capture(sites) as cache:
                logits = lm.forward(batch)
            mask = lm.tokenize(batch)["attention_mask"].bool()
            target = logits[mask].float().log_softmax(-1)
            loss = torch.zeros((), device=lm.device)
            for layer in range(lm.arch.n_layers - 1):
                predicted = lens.readout(lm, layer, cache[sites[layer]][mask]).float().log_softmax(-1)
                loss = loss + _kl(target, predicted).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
        lens.eval()
        return lens

    def save(self, path: str | Path, *, model: str = "") -> Path:
        """Write the translators and their shape (and the model they were fit on) to one file, atomically."""
        tensors = dict(self.state_dict())
        meta = {"n_layers": self.n_layers, "d_model": self.d_model, "model": model}
        return save_tensors(path, tensors, kind=KIND, meta=meta, schema_version=SCHEMA_VERSION)

    @classmethod
    def load(cls, path: str | Path, lm: LanguageModel, *, force: bool = False) -> TunedLens:
        """Read translators written by `save` for ``lm``.

        Args:
            force: use a tuned lens trained on another model of the same shape anyway.

        Raises:
            ModelLoadError: the file is missing or was trained for a model of another shape.
            ProvenanceError: it was trained on another model (and not ``force``).
            StoredFileError: the file is not a safetensors tuned lens.
        """
        path = Path(path)
        if not path.is_file():
            raise ModelLoadError(f"no tuned lens at '{path}'; train one with `mechscope tuned-lens -m MODEL`")
        stored = load_tensors(path, kind=KIND, what="tuned lens")
        tensors = stored.tensors
        n_layers = len(tensors) // 2 + 1
        d_model = int(tensors["translators.0.weight"].shape[0]) if "translators.0.weight" in tensors else 0
        if (n_layers, d_model) != (lm.arch.n_layers, lm.arch.d_model):
            raise ModelLoadError(
                f"the tuned lens in '{path}' is for {n_layers} layers of width {d_model}; "
                f"this model has {lm.arch.n_layers} of width {lm.arch.d_model}"
            )
        check_provenance(str(stored.meta.get("model", "")), lm.source, f"tuned lens in '{path}'", force=force)
        lens = cls(n_layers, d_model)
        lens.load_state_dict(tensors)
        return lens.to(lm.device).eval()


def _kl(target_log: Tensor, predicted_log: Tensor) -> Tensor:
    """KL(target || predicted) per row, from log-probabilities."""
    return (target_log.exp() * (target_log - predicted_log)).sum(-1)


def layer_kl(lm: LanguageModel, texts: Sequence[str], lens: TunedLens | None = None) -> list[float]:
    """Mean KL to the final distribution per layer over every token of ``texts`` (logit lens if no ``lens``).

    Examples:
        >>> import mechscope as ms
        >>> lm = ms.load("toy")
        >>> texts = ["The capital of France is Paris.", "Two plus two is four."]
        >>> [round(kl, 2) for kl in layer_kl(lm, texts)]  # the logit lens nears the output layer by layer
        [2.92, 2.44, 1.97, 0.0]
        >>> tuned = layer_kl(lm, texts, TunedLens.fit(lm, texts, steps=10))
        >>> [round(kl, 1) for kl in tuned][-1], all(kl < 1.5 for kl in tuned)
        (0.0, True)
    """
    if not texts:
        raise InputError("layer_kl needs at least one text to average over")
    sites = [f"resid_post.{i}" for i in range(lm.arch.n_layers)]
    totals = torch.zeros(lm.arch.n_layers)
    count = 0
    for start in range(0, len(texts), 32):
        batch = list(texts[start : start + 32])
        with torch.no_grad():
            with lm.capture(sites) as cache:
                logits = lm.forward(batch)
            mask = lm.tokenize(batch)["attention_mask"].bool()
            target = logits[mask].float().log_softmax(-1)
            for layer in range(lm.arch.n_layers):
                resid = cache[sites[layer]][mask]
                read = lens.readout(lm, layer, resid) if lens is not None else lm.arch.logits(resid)
                totals[layer] += _kl(target, read.float().log_softmax(-1)).sum().cpu()
        count += int(mask.sum())
    return [float(x) for x in totals / max(count, 1)]
