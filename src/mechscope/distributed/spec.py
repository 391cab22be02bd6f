"""`ModelSpec`: how to load a model, as a small picklable value that a worker process can load from."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mechscope.core.lm import LanguageModel


@dataclass(frozen=True)
class ModelSpec:
    """Which model to load and how (the arguments of `mechscope.load`).

    Examples:
        A spec is a small frozen value: it pickles to a worker, which loads the model from it there, and
        `on` pins it to the worker's device unless a device map already spreads the model:

        >>> import pickle
        >>> spec = ModelSpec("toy")
        >>> pickle.loads(pickle.dumps(spec)) == spec, spec.on("cuda:1").device
        (True, 'cuda:1')
        >>> ModelSpec("toy", device_map="auto").on("cuda:1").device is None
        True
        >>> lm = spec.load()
        >>> lm.arch.n_layers, lm.arch.d_model
        (4, 128)
    """

    model: str = "toy"
    dtype: str = "float32"
    device: str | None = None
    device_map: str | None = None
    attn: str | None = None
    revision: str | None = None
    trust_remote_code: bool = False

    def load(self) -> LanguageModel:
        """Load the model this spec names."""
        from mechscope.core.lm import load

        return load(
            self.model,
            dtype=self.dtype,
            device=self.device,
            device_map=self.device_map,
            revision=self.revision,
            trust_remote_code=self.trust_remote_code,
            attn_implementation=self.attn,
        )

    def on(self, device: str | None) -> ModelSpec:
        """The same model on ``device`` (a worker's GPU), unless a device map spreads it already."""
        return self if self.device_map is not None else replace(self, device=device)
