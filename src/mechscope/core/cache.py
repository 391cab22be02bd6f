"""`Cache`: activations captured during forward passes, keyed by site string.

A capture context records one entry per forward pass. ``cache[site]`` joins them the way a user means:
the passes of one generation (a prompt pass followed by KV-cache steps) are joined along the position
axis, separate forward calls along the batch axis. `Cache.passes` gives the raw per-pass tensors.

Example (the toy organism has ``d_model`` 128; its prompt "The capital of France is" is 7 tokens):
    >>> import tempfile
    >>> import mechscope as ms
    >>> lm = ms.load("toy")
    >>> with lm.capture(["resid_post.1"], positions="last") as cache:
    ...     _ = lm.forward("The capital of France is")
    ...     _ = lm.forward("Two plus two is")
    >>> cache.n_passes, cache["resid_post.1"].shape  # two forward calls: joined along the batch axis
    (2, torch.Size([2, 128]))
    >>> with lm.capture(["resid_post.1"]) as steps:
    ...     _ = lm.generate("The capital of France is", max_new_tokens=3)
    >>> [tuple(t.shape) for t in steps.passes("resid_post.1")], steps["resid_post.1"].shape
    ([(1, 7, 128), (1, 1, 128), (1, 1, 128)], torch.Size([1, 9, 128]))
    >>> path = cache.save(Path(tempfile.mkdtemp()) / "cache.safetensors")
    >>> torch.equal(Cache.load(path)["resid_post.1"], cache["resid_post.1"])
    True
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mechscope.errors import SiteError
from mechscope.storage.tensors import load_tensors, save_tensors

SCHEMA_VERSION = 1
_NEGATIVE_LAYER = re.compile(r"^([a-z_]+)\.(-\d+)(\.\d+)?$")
KIND = "activation_cache"


@dataclass
class Cache(Mapping[str, Tensor]):
    """Captured activations: ``cache["resid_post.3"]`` → tensor (see `mechscope.core.sites` for shapes).

    Attributes:
        sites: the site strings captured, in request order.
        positions: how positions were selected (its string form).
        meta: free-form JSON-serialisable metadata (model source, prompts ...), saved with the cache.
        n_layers: the model's layer count, so that ``cache["resid_post.-1"]`` finds the last layer.

    Examples:
        >>> import mechscope as ms
        >>> lm = ms.load("toy")
        >>> with lm.capture(["resid_post.*"], positions="last") as cache:  # a capture fills a Cache
        ...     _ = lm.forward(["The capital of France is", "Two plus two is"])
        >>> cache.sites, cache["resid_post.-1"].shape
        (['resid_post.0', 'resid_post.1', 'resid_post.2', 'resid_post.3'], torch.Size([2, 128]))
    """

    sites: list[str]
    positions: str = "all"
    meta: dict[str, Any] = field(default_factory=dict)
    n_layers: int | None = None
    _passes: list[dict[str, Tensor]] = field(default_factory=list, repr=False)
    _offsets: list[int] = field(default_factory=list, repr=False)
    _flush: Callable[[], None] | None = field(default=None, repr=False, compare=False)

    def add_pass(self, values: dict[str, Tensor], offset: int) -> None:
        """Record one forward pass; ``offset`` > 0 marks a KV-cache continuation of the previous pass."""
        self._passes.append(values)
        self._offsets.append(offset)

    @property
    def n_passes(self) -> int:
        """How many forward passes were recorded."""
        if self._flush is not None:
            self._flush()
        return len(self._passes)

    def passes(self, site: str) -> list[Tensor]:
        """The tensor of ``site`` from every recorded pass, in order."""
        site = self._check(site)
        return [values[site] for values in self._passes]

    def canonical(self, site: str) -> str:
        """``site`` as the cache keys it: a negative layer counted from the end (``resid_post.-1``)."""
        if site in self.sites or self.n_layers is None:  # the common case: no pattern matching per read
            return site
        match = _NEGATIVE_LAYER.match(site)
        if match is None:
            return site
        layer = int(match.group(2)) + self.n_layers
        return f"{match.group(1)}.{layer}{match.group(3) or ''}" if layer >= 0 else site

    def _check(self, site: str) -> str:
        if self._flush is not None:  # a capture still open: take its last pass first
            self._flush()
        site = self.canonical(site)
        if site not in self.sites:
            raise SiteError(f"site '{site}' was not captured; captured: {', '.join(self.sites)}")
        if not self._passes:
            raise SiteError("no forward pass ran inside the capture context")
        return site

    def __getitem__(self, site: str) -> Tensor:
        site = self._check(site)
        if len(self._passes) == 1:
            return self._passes[0][site]
        calls: list[list[Tensor]] = []
        for values, offset in zip(self._passes, self._offsets, strict=True):
            if offset == 0 or not calls:
                calls.append([])
            calls[-1].append(values[site])
        joined = [self._join_steps(site, steps) for steps in calls]
        try:
            return torch.cat(joined, dim=0)
        except RuntimeError:
            shapes = ", ".join(str(tuple(t.shape)) for t in joined)
            raise SiteError(
                f"the {len(joined)} forward calls captured for '{site}' have shapes {shapes} that do not "
                "stack along the batch axis; use cache.passes(site)"
            ) from None

    def _join_steps(self, site: str, steps: list[Tensor]) -> Tensor:
        if len(steps) == 1:
            return steps[0]
        if self.positions == "all" and not site.startswith("attn_pattern"):
            return torch.cat(steps, dim=1)
        if self.positions == "last":
            return torch.stack(steps, dim=1)
        raise SiteError(
            f"'{site}' was captured during generation with positions={self.positions}; "
            "use cache.passes(site) to get each step"
        )

    def __iter__(self) -> Iterator[str]:
        return iter(self.sites if len(self) else [])

    def __len__(self) -> int:
        if self._flush is not None:
            self._flush()
        return len(self.sites) if self._passes else 0

    def save(self, path: str | Path) -> Path:
        """Write every site (joined as by ``cache[site]``) and the metadata to one safetensors file, atomically."""
        tensors = {site: self[site] for site in self.sites}
        meta = {"sites": self.sites, "positions": self.positions, "n_layers": self.n_layers, **self.meta}
        return save_tensors(path, tensors, kind=KIND, meta=meta, schema_version=SCHEMA_VERSION)

    @classmethod
    def load(cls, path: str | Path) -> Cache:
        """Read a cache written by `save` (one pass holding every site).

        Raises:
            StoredFileError: the file is missing, not safetensors, or not a cache.
        """
        stored = load_tensors(path, kind=KIND, what="activation cache")
        meta = dict(stored.meta)
        sites = meta.pop("sites", list(stored.tensors))
        positions = meta.pop("positions", "all")
        n_layers = meta.pop("n_layers", None)
        cache = cls(sites=sites, positions=positions, meta=meta, n_layers=n_layers)
        cache.add_pass(stored.tensors, 0)
        return cache
