"""Intervention operations: what to do to a site's value during a forward pass.

Each op is a small frozen value with a ``positions`` field (default ``"all"``; see
`mechscope.core.positions`) and a method that maps the site's value ``x`` of shape
``[batch, pos, *feature]`` to a new value of the same shape; the engine writes the result only at the
selected positions. Vectors may be shared (``[*feature]``) or per example (``[batch, *feature]``).

Example (add ``4 × v`` to layer 0's residual at the last position only):
    >>> import torch
    >>> import mechscope as ms
    >>> lm = ms.load("toy")
    >>> v = torch.ones(lm.arch.d_model)
    >>> with lm.capture(["resid_post.0"]) as plain:
    ...     _ = lm.forward("The capital of France is")
    >>> with lm.intervene({"resid_post.0": ms.ops.add(v, coeff=4.0, positions="last")}):
    ...     with lm.capture(["resid_post.0"]) as steered:
    ...         _ = lm.forward("The capital of France is")
    >>> change = steered["resid_post.0"] - plain["resid_post.0"]
    >>> torch.allclose(change[0, -1], 4 * v), bool((change[0, :-1] == 0).all())
    (True, True)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from mechscope.core.positions import PassInfo, Positions, check_positions
from mechscope.errors import InterventionError


class _LayoutSource(Protocol):
    @property
    def info(self) -> PassInfo: ...


@dataclass(frozen=True)
class OpContext:
    """What an op may need besides the value: the site's name and (computed on demand) the pass layout.

    Examples:
        A custom op is any object with ``positions`` and ``apply(x, ctx)``; one that reads ``ctx.info`` (the
        pass layout: padding mask, KV-cache offset) says so with ``needs_layout = True``.

        >>> import torch, mechscope as ms
        >>> from dataclasses import dataclass
        >>> @dataclass(frozen=True)
        ... class Clip:
        ...     limit: float
        ...     positions: str = "all"
        ...     needs_layout: bool = True
        ...     def apply(self, x: torch.Tensor, ctx: OpContext) -> torch.Tensor:
        ...         seen.append((ctx.site, ctx.info.offset))
        ...         return x.clamp(-self.limit, self.limit)
        >>> seen, lm = [], ms.load("toy")
        >>> with lm.intervene({"resid_post.1": Clip(1e9)}):  # a limit no value reaches: nothing changes
        ...     clipped = lm.forward("The capital of France is")
        >>> seen, torch.equal(clipped, lm.forward("The capital of France is"))
        ([('resid_post.1', 0)], True)
    """

    site: str
    source: _LayoutSource

    @property
    def info(self) -> PassInfo:
        """The layout of the running pass."""
        return self.source.info


@runtime_checkable
class Op(Protocol):
    """An intervention: ``positions`` to touch and ``apply(x, ctx)`` giving the new value.

    An op that reads ``ctx.info`` also sets ``needs_layout = True`` (see `OpContext`), so that the pass
    layout is tracked while it is active.
    """

    @property
    def positions(self) -> Positions: ...

    def apply(self, x: Tensor, ctx: OpContext) -> Tensor:
        """The new value of the site at the op's positions, given its value ``x`` there."""
        ...


def _feature_like(value: Tensor, x: Tensor, what: str) -> Tensor:
    """Broadcast ``value`` ([*feature], [batch, *feature] or [batch, pos, *feature]) against ``x``."""
    value = value.to(device=x.device, dtype=x.dtype)
    feature = x.shape[2:]
    if value.shape == feature:
        return value
    if value.shape == (x.shape[0], *feature):
        return value.reshape(x.shape[0], 1, *feature)
    if value.shape == x.shape:
        return value
    raise InterventionError(
        f"{what} has shape {tuple(value.shape)}; expected {tuple(feature)}, "
        f"{(x.shape[0], *feature)} (per example) or {tuple(x.shape)}"
    )


@dataclass(frozen=True)
class Add:
    """``x + coeff * vector`` (``vector`` scaled to unit norm first when ``normalize``)."""

    vector: Tensor
    coeff: float = 1.0
    normalize: bool = False
    positions: Positions = "all"

    def apply(self, x: Tensor, ctx: OpContext) -> Tensor:
        """``x`` plus the (optionally normalised) vector times ``coeff``."""
        vector = self.vector
        if self.normalize:
            vector = vector / vector.norm(dim=-1, keepdim=True).clamp(min=torch.finfo(vector.dtype).tiny)
        return x + self.coeff * _feature_like(vector, x, "the add vector")


@dataclass(frozen=True)
class Set:
    """Replace the value with ``value``."""

    value: Tensor
    positions: Positions = "all"

    def apply(self, x: Tensor, ctx: OpContext) -> Tensor:
        """The set value, broadcast to ``x``'s shape."""
        return _feature_like(self.value, x, "the set value").expand_as(x)


@dataclass(frozen=True)
class Zero:
    """Replace the value with zeros (zero ablation)."""

    positions: Positions = "all"

    def apply(self, x: Tensor, ctx: OpContext) -> Tensor:
        """Zeros shaped like ``x``."""
        return torch.zeros_like(x)


@dataclass(frozen=True)
class Mean:
    """Replace the value with a supplied mean (mean ablation): a tensor, or a mapping site → tensor."""

    means: Tensor | Mapping[str, Tensor]
    positions: Positions = "all"

    def apply(self, x: Tensor, ctx: OpContext) -> Tensor:
        """The stored mean activation of this site, broadcast to ``x``'s shape."""
        means = self.means
        if not isinstance(means, Tensor):
            if ctx.site not in means:
                raise InterventionError(f"no mean supplied for site '{ctx.site}'")
            means = means[ctx.site]
        return _feature_like(means, x, "the mean").expand_as(x)


@dataclass(frozen=True)
class Scale:
    """Multiply the value by ``factor``."""

    factor: float
    positions: Positions = "all"

    def apply(self, x: Tensor, ctx: OpContext) -> Tensor:
        """``x`` times ``factor``."""
        return x * self.factor


@dataclass(frozen=True)
class Patch:
    """Replace the value with the same site's value from another run (a `Cache` or tensor).

    A source with a position axis is aligned by column with the current pass (in generation, the
    prompt pass takes the source's columns and later steps past its end are left alone); a source
    without one (captured with ``positions="last"``) is written at ``positions``.
    """

    source: Tensor | Mapping[str, Tensor]
    positions: Positions = "all"

    def apply(self, x: Tensor, ctx: OpContext) -> Tensor:
        """The source activation (a tensor, or this site's entry of a cache) in place of ``x``."""
        source = self.source if isinstance(self.source, Tensor) else self._from_mapping(ctx.site)
        source = source.to(device=x.device, dtype=x.dtype)
        if source.dim() == x.dim():
            offset, length = ctx.info.offset, x.shape[1]
            window = source[:, offset : offset + length]
            if window.shape[1] < length:  # steps beyond the source keep their own values
                window = torch.cat([window, x[:, window.shape[1] :]], dim=1)
            if window.shape != x.shape:
                raise InterventionError(
                    f"patch source for '{ctx.site}' has shape {tuple(source.shape)}, the run has {tuple(x.shape)}"
                )
            return window
        return _feature_like(source, x, f"the patch source for '{ctx.site}'").expand_as(x)

    def _from_mapping(self, site: str) -> Tensor:
        assert not isinstance(self.source, Tensor)
        try:
            return self.source[site]
        except KeyError:
            raise InterventionError(f"the patch source has no site '{site}'") from None


class FeatureCoder(Protocol):
    """What `SAEEdit` needs of a sparse autoencoder (`mechscope.sae.SAE` is one)."""

    @property
    def d_sae(self) -> int: ...

    def encode(self, x: Tensor) -> Tensor:
        """The feature activations of ``x`` (``[..., d_sae]``)."""
        ...

    def decode_delta(self, delta: Tensor, features: Tensor, *, like: Tensor) -> Tensor:
        """What changing ``features`` by ``delta`` adds to the site (dtype and device of ``like``)."""
        ...


@dataclass(frozen=True)
class SAEEdit:
    """Edit a site's SAE features and keep the SAE's error term: ``x + decode(f') - decode(f)``.

    ``f`` are the features of ``x``; ``f'`` has ``ablate`` zeroed, ``clamp`` set to the given values and
    ``add`` increased by the given amounts. The change is computed from the edited columns only
    (`SAE.decode_delta`), so an edit that changes no feature returns ``x`` bit for bit, and only the chosen
    features' decoder rows move the value. Values of ``head_out.L`` (``[batch, pos, head, head_dim]``) are
    flattened for the SAE and reshaped back.
    """

    sae: FeatureCoder
    ablate: tuple[int, ...] = ()
    clamp: tuple[tuple[int, float], ...] = ()
    add: tuple[tuple[int, float], ...] = ()
    positions: Positions = "all"

    def apply(self, x: Tensor, ctx: OpContext) -> Tensor:
        """``x + (f' - f) @ W_dec``: only the edited features change, the error term is kept."""
        flat = x.flatten(2) if x.dim() == 4 else x
        features = self.sae.encode(flat)
        edited = features.clone()
        if self.ablate:
            edited[..., list(self.ablate)] = 0
        for feature, value in self.clamp:
            edited[..., feature] = value
        for feature, amount in self.add:
            edited[..., feature] += amount
        change = self.sae.decode_delta(edited - features, features, like=flat).to(x.dtype)
        return x + change.reshape(x.shape)


def sae_edit(
    sae: FeatureCoder,
    *,
    ablate: Sequence[int] = (),
    clamp: Mapping[int, float] | None = None,
    add: Mapping[int, float] | None = None,
    positions: Positions = "all",
) -> SAEEdit:
    """Ablate, clamp or add to SAE features at ``positions``, keeping the error term (see `SAEEdit`).

    Examples:
        >>> import torch, mechscope as ms
        >>> lm = ms.load("toy")
        >>> sae = ms.sae.SAE.random(lm.arch.d_model, 256, "resid_post.2", k=8)
        >>> plain = lm.forward("The capital of France is")
        >>> with lm.intervene({"resid_post.2": ms.ops.sae_edit(sae)}):  # no feature edited: the model's logits
        ...     torch.equal(lm.forward("The capital of France is"), plain)
        True
        >>> with lm.intervene({"resid_post.2": ms.ops.sae_edit(sae, add={3: 50.0})}):  # feature 3 pushed up
        ...     torch.equal(lm.forward("The capital of France is"), plain)
        False

    Raises:
        InterventionError: a feature index outside the SAE.
    """
    chosen = [*ablate, *(clamp or {}), *(add or {})]
    bad = [feature for feature in chosen if not 0 <= int(feature) < sae.d_sae]
    if bad:
        raise InterventionError(f"feature {bad[0]} is out of range; the SAE has features 0..{sae.d_sae - 1}")
    return SAEEdit(
        sae,
        tuple(int(f) for f in ablate),
        tuple((int(f), float(v)) for f, v in (clamp or {}).items()),
        tuple((int(f), float(v)) for f, v in (add or {}).items()),
        check_positions(positions, allow_mean=False),
    )


def add(vector: Tensor, coeff: float = 1.0, *, normalize: bool = False, positions: Positions = "all") -> Add:
    """Add ``coeff × vector`` (unit-normalised first if ``normalize``) at ``positions``.

    Examples:
        >>> import torch, mechscope as ms
        >>> lm = ms.load("toy")
        >>> def top(logits):
        ...     return lm.token_texts([int(logits[0, -1].argmax())])
        >>> with lm.capture(["resid_post.1"], positions="last") as tokyo:
        ...     _ = lm.forward("The capital of Japan is")
        >>> with lm.capture(["resid_post.1"], positions="last") as paris:
        ...     _ = lm.forward("The capital of France is")
        >>> towards = tokyo["resid_post.1"][0] - paris["resid_post.1"][0]
        >>> with lm.intervene({"resid_post.1": ms.ops.add(towards, positions="last")}):
        ...     top(lm.forward("The capital of France is"))
        [' Tokyo']
    """
    return Add(vector, coeff, normalize, check_positions(positions, allow_mean=False))


def set(value: Tensor, *, positions: Positions = "all") -> Set:
    """Overwrite the value with ``value`` at ``positions``.

    Examples:
        >>> import torch, mechscope as ms
        >>> lm = ms.load("toy")
        >>> def top(logits):
        ...     return lm.token_texts([int(logits[0, -1].argmax())])
        >>> with lm.capture(["resid_post.1"], positions="last") as japan:
        ...     _ = lm.forward("The capital of Japan is")
        >>> with lm.intervene({"resid_post.1": ms.ops.set(japan["resid_post.1"][0], positions="last")}):
        ...     top(lm.forward("The capital of France is"))
        [' Tokyo']
    """
    return Set(value, check_positions(positions, allow_mean=False))


def zero(*, positions: Positions = "all") -> Zero:
    """Zero the value at ``positions`` (zero ablation).

    Examples:
        >>> import torch, mechscope as ms
        >>> lm = ms.load("toy")
        >>> def top(logits):
        ...     return lm.token_texts([int(logits[0, -1].argmax())])
        >>> with lm.intervene({"head_out.0.0": ms.ops.zero()}):  # the planted previous-token head
        ...     top(lm.forward("The capital of France is"))
        [' Lisbon']
    """
    return Zero(check_positions(positions, allow_mean=False))


def mean(means: Tensor | Mapping[str, Tensor], *, positions: Positions = "all") -> Mean:
    """Replace the value with supplied means (mean ablation) at ``positions``.

    ``means`` is one tensor for every site the op is applied to, or a mapping site → tensor (a `Cache`).

    Examples:
        >>> import torch, mechscope as ms
        >>> lm = ms.load("toy")
        >>> def top(logits):
        ...     return lm.token_texts([int(logits[0, -1].argmax())])
        >>> with lm.capture(["resid_post.2"], positions="mean") as reference:
        ...     _ = lm.forward(["The capital of Japan is", "The capital of Peru is"])
        >>> average = reference["resid_post.2"].mean(0)  # [d_model]: over prompts and positions
        >>> with lm.intervene({"resid_post.2": ms.ops.mean(average)}):  # the country is lost
        ...     top(lm.forward("The capital of France is"))
        [' sound']
    """
    return Mean(means, check_positions(positions, allow_mean=False))


def scale(factor: float, *, positions: Positions = "all") -> Scale:
    """Multiply the value by ``factor`` at ``positions``.

    Examples:
        >>> import torch, mechscope as ms
        >>> lm = ms.load("toy")
        >>> def top(logits):
        ...     return lm.token_texts([int(logits[0, -1].argmax())])
        >>> plain = lm.forward("The capital of France is")
        >>> with lm.intervene({"attn_out.3": ms.ops.scale(1.0)}):  # a factor of one changes nothing
        ...     torch.equal(lm.forward("The capital of France is"), plain)
        True
    """
    return Scale(factor, check_positions(positions, allow_mean=False))


def patch(source: Tensor | Mapping[str, Tensor], *, positions: Positions = "all") -> Patch:
    """Replace the value with the same site's value from ``source`` (a `Cache`) at ``positions``.

    Examples:
        >>> import torch, mechscope as ms
        >>> lm = ms.load("toy")
        >>> def top(logits):
        ...     return lm.token_texts([int(logits[0, -1].argmax())])
        >>> with lm.capture(["resid_post.1"]) as japan:  # every position
        ...     _ = lm.forward("The capital of Japan is")
        >>> with lm.intervene({"resid_post.1": ms.ops.patch(japan, positions=[-1])}):
        ...     top(lm.forward("The capital of France is"))  # the last position carries the country
        [' Tokyo']
    """
    return Patch(source, check_positions(positions, allow_mean=False))
