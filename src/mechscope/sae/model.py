"""The sparse autoencoder itself: weights, encoder, decoder, and where on a model it reads.

An `SAE` maps a site's value ``x`` (``[..., d_in]``) to feature activations ``f`` (``[..., d_sae]``) and back:

* pre-activations ``h = (n(x) - b_dec) @ W_enc + b_enc`` (``- b_dec`` only with ``apply_b_dec_to_input``;
  ``n`` is the input normalisation, identity by default);
* ``f = relu(h)`` (``architecture="standard"``), the ``k`` largest of ``relu(h)`` per token with the rest zero
  (``"topk"``), or ``relu(h)`` where ``h > threshold`` else 0 (``"jumprelu"``, read from SAELens files);
* reconstruction ``x_hat = n⁻¹(f @ W_dec + b_dec)``.

The weights use SAELens's names and shapes (``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_in]``,
``b_dec [d_in]``), so `mechscope.sae.formats` reads and writes them unchanged. ``site`` is the mechscope
site the SAE reads (``resid_post.2``); ``model`` names the model it was trained on.

Examples:
    >>> import torch
    >>> sae = SAE.random(d_in=8, d_sae=32, site="resid_post.1", architecture="topk", k=4, seed=0)
    >>> f = sae.encode(torch.randn(3, 8))
    >>> tuple(f.shape), int((f > 0).sum(-1).max())
    ((3, 32), 4)
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
from torch import Tensor, nn

from mechscope.errors import InputError

Architecture = Literal["standard", "topk", "jumprelu"]
Normalization = Literal["none", "constant_norm_rescale", "layer_norm", "expected_average_only_in"]
ARCHITECTURES: tuple[str, ...] = ("standard", "topk", "jumprelu")
NORMALIZATIONS: tuple[str, ...] = ("none", "constant_norm_rescale", "layer_norm", "expected_average_only_in")


@dataclass(frozen=True)
class SAEConfig:
    """What an SAE is, besides its weights.

    Args:
        d_in: the site's width.
        d_sae: the number of features.
        site: the mechscope site it reads (``resid_post.2``, ``mlp_out.0``, ``head_out.1`` flattened).
        architecture: ``standard`` (ReLU), ``topk`` or ``jumprelu``.
        k: features kept per token (``topk``).
        apply_b_dec_to_input: subtract ``b_dec`` before encoding (SAELens's default).
        normalize_activations: input normalisation (SAELens's names). ``constant_norm_rescale`` and
            ``layer_norm`` act per token and are undone on the reconstruction; ``expected_average_only_in``
            scales the input by ``norm_scaling_factor`` and the reconstruction back (identity without one, as
            SAELens's own inference SAE does once the factor is folded into the weights).
        norm_scaling_factor: the factor of ``expected_average_only_in``.
        model: the model it was trained on (a hub id or folder), as recorded.
        hook_name: the hook name it came with (a SAELens / TransformerLens name), if read from one.
        extra: other metadata kept through a round trip (dataset, training settings, version).

    Examples:
        >>> config = SAEConfig(d_in=128, d_sae=256, site="resid_post.2", architecture="topk", k=8)
        >>> tuple(SAE(config).W_enc.shape)  # zero weights; `SAE.random` initialises them
        (128, 256)
        >>> SAEConfig(d_in=128, d_sae=256, site="resid_post.2", architecture="topk")
        Traceback (most recent call last):
        ...
        mechscope.errors.InputError: a topk SAE needs 1 <= k <= d_sae (256), got k=None
    """

    d_in: int
    d_sae: int
    site: str
    architecture: Architecture = "topk"
    k: int | None = None
    apply_b_dec_to_input: bool = True
    normalize_activations: Normalization = "none"
    norm_scaling_factor: float | None = None
    model: str | None = None
    hook_name: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.d_in < 1 or self.d_sae < 1:
            raise InputError(f"an SAE needs d_in and d_sae of at least 1, got {self.d_in} and {self.d_sae}")
        if self.architecture not in ARCHITECTURES:
            raise InputError(f"unknown SAE architecture '{self.architecture}'; use one of {', '.join(ARCHITECTURES)}")
        if self.architecture == "topk" and (self.k is None or not 1 <= self.k <= self.d_sae):
            raise InputError(f"a topk SAE needs 1 <= k <= d_sae ({self.d_sae}), got k={self.k}")
        if self.normalize_activations not in NORMALIZATIONS:
            raise InputError(
                f"unknown normalize_activations '{self.normalize_activations}'; use one of {', '.join(NORMALIZATIONS)}"
            )


class SAE(nn.Module):
    """A sparse autoencoder over one site (see the module docstring for the maths).

    Examples:
        Reconstruct a site of the toy model through a (random) TopK SAE:

        >>> import torch, mechscope as ms
        >>> lm = ms.load("toy")
        >>> sae = SAE.random(lm.arch.d_model, 256, "resid_post.2", k=8, seed=0)
        >>> with lm.capture([sae.site]) as cache:
        ...     _ = lm.forward("The capital of France is")
        >>> x = cache[sae.site]
        >>> features = sae.encode(x)
        >>> tuple(features.shape), (features > 0).sum(-1).tolist()  # k=8 features per token
        ((1, 7, 256), [[8, 8, 8, 8, 8, 8, 8]])
        >>> torch.allclose(sae(x), sae.decode(features))  # forward: decode(encode(x))
        True
    """

    def __init__(self, config: SAEConfig, *, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.config = config
        d_in, d_sae = config.d_in, config.d_sae
        self.W_enc = nn.Parameter(torch.zeros(d_in, d_sae, dtype=dtype))
        self.b_enc = nn.Parameter(torch.zeros(d_sae, dtype=dtype))
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_in, dtype=dtype))
        self.b_dec = nn.Parameter(torch.zeros(d_in, dtype=dtype))
        self.threshold: nn.Parameter | None = None
        if config.architecture == "jumprelu":
            self.threshold = nn.Parameter(torch.zeros(d_sae, dtype=dtype))

    @classmethod
    def random(
        cls,
        d_in: int,
        d_sae: int,
        site: str,
        *,
        architecture: Architecture = "topk",
        k: int | None = None,
        seed: int = 0,
        **options: Any,
    ) -> SAE:
        """A freshly initialised SAE: unit-norm decoder rows, encoder = decoder transposed, zero biases.

        Examples:
            >>> sae = SAE.random(d_in=16, d_sae=64, site="mlp_out.1", k=4, seed=0)
            >>> sae.W_dec.norm(dim=1).allclose(torch.ones(64)), torch.equal(sae.W_enc, sae.W_dec.T)
            (True, True)
        """
        sae = cls(SAEConfig(d_in=d_in, d_sae=d_sae, site=site, architecture=architecture, k=k, **options))
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            rows = torch.randn(d_sae, d_in, generator=generator)
            sae.W_dec.copy_(rows / rows.norm(dim=1, keepdim=True))
            sae.W_enc.copy_(sae.W_dec.T)
        return sae

    @property
    def site(self) -> str:
        """The mechscope site this SAE reads."""
        return self.config.site

    @property
    def d_sae(self) -> int:
        """The number of features."""
        return self.config.d_sae

    def with_config(self, **changes: Any) -> SAE:
        """The same weights under a changed config (e.g. another ``site`` or ``model``).

        A new ``site`` drops the recorded ``hook_name`` (it named the old site) unless one is given.

        Examples:
            >>> sae = SAE.random(d_in=16, d_sae=64, site="resid_post.1", k=4, seed=0)
            >>> moved = sae.with_config(site="resid_post.2", k=2)
            >>> moved.site, moved.config.k, torch.equal(moved.W_dec, sae.W_dec)
            ('resid_post.2', 2, True)

        Raises:
            InputError: the changed config is invalid (e.g. ``k`` out of range for a topk SAE).
        """
        if "site" in changes:
            changes.setdefault("hook_name", None)
        copy = SAE(replace(self.config, **changes), dtype=self.W_enc.dtype)
        copy.load_state_dict(self.state_dict())
        return copy

    # --- the maps -------------------------------------------------------------------------------------------

    def _normalize(self, x: Tensor) -> tuple[Tensor, Any]:
        how = self.config.normalize_activations
        if how == "none":
            return x, None
        if how == "expected_average_only_in":
            return x * float(self.config.norm_scaling_factor or 1.0), None
        if how == "constant_norm_rescale":
            coeff = (self.config.d_in**0.5) / x.norm(dim=-1, keepdim=True)
            return x * coeff, coeff
        mean = x.mean(dim=-1, keepdim=True)  # layer_norm
        centred = x - mean
        std = centred.std(dim=-1, keepdim=True)
        return centred / (std + 1e-5), (mean, std)

    def _denormalize(self, x: Tensor, state: Any) -> Tensor:
        how = self.config.normalize_activations
        if how in ("none", "expected_average_only_in"):
            return x if how == "none" else x / float(self.config.norm_scaling_factor or 1.0)
        if how == "constant_norm_rescale":
            scaled: Tensor = x / state
            return scaled
        mean, std = state
        restored: Tensor = x * std + mean
        return restored

    def pre_acts(self, x: Tensor) -> Tensor:
        """``h``: the encoder's pre-activations of ``x`` (``[..., d_in]`` → ``[..., d_sae]``).

        Examples:
            >>> sae = SAE.random(d_in=16, d_sae=64, site="resid_post.1", k=4, seed=0)
            >>> x = torch.randn(3, 16, generator=torch.Generator().manual_seed(0))
            >>> torch.allclose(sae.pre_acts(x), (x - sae.b_dec) @ sae.W_enc + sae.b_enc)
            True
        """
        x = self._normalize(x.to(self.W_enc.dtype))[0]
        if self.config.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def activate(self, h: Tensor) -> Tensor:
        """The activation function applied to pre-activations ``h``.

        Examples:
            >>> h = torch.tensor([[3.0, -1.0, 2.0, 0.5]])
            >>> SAE.random(d_in=4, d_sae=4, site="resid_post.1", k=2).activate(h)  # topk: the 2 largest
            tensor([[3., 0., 2., 0.]])
            >>> SAE.random(d_in=4, d_sae=4, site="resid_post.1", architecture="standard").activate(h)  # ReLU
            tensor([[3.0000, 0.0000, 2.0000, 0.5000]])
        """
        if self.config.architecture == "standard":
            return torch.relu(h)
        if self.config.architecture == "jumprelu":
            assert self.threshold is not None
            return torch.relu(h) * (h > self.threshold)  # SAELens's JumpReLU: ReLU, then the gate
        k = int(self.config.k or 1)
        top = torch.topk(h, k, dim=-1)
        return torch.zeros_like(h).scatter(-1, top.indices, torch.relu(top.values))

    def encode(self, x: Tensor) -> Tensor:
        """Feature activations of ``x``: ``[..., d_in]`` → ``[..., d_sae]``.

        Examples:
            >>> sae = SAE.random(d_in=16, d_sae=64, site="resid_post.1", k=4, seed=0)
            >>> f = sae.encode(torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(0)))
            >>> tuple(f.shape), (f > 0).sum(-1).tolist()
            ((2, 5, 64), [[4, 4, 4, 4, 4], [4, 4, 4, 4, 4]])

        Raises:
            InputError: ``x``'s last axis is not ``d_in`` wide.
        """
        if x.shape[-1] != self.config.d_in:
            raise InputError(
                f"the SAE reads {self.config.d_in}-wide values at {self.site}; got a last axis of {x.shape[-1]}"
            )
        return self.activate(self.pre_acts(x))

    def decode(self, f: Tensor, *, like: Tensor | None = None) -> Tensor:
        """The reconstruction from features ``f`` (``like``: the input, needed by per-token normalisations).

        Examples:
            >>> sae = SAE.random(d_in=16, d_sae=64, site="resid_post.1", k=4, seed=0)
            >>> f = torch.zeros(64)
            >>> f[3] = 2.0  # two units of feature 3
            >>> torch.allclose(sae.decode(f), 2.0 * sae.W_dec[3] + sae.b_dec)
            True
        """
        out = f @ self.W_dec + self.b_dec
        if self.config.normalize_activations in ("none", "expected_average_only_in"):
            return self._denormalize(out, None)
        if like is None:
            raise InputError(f"decoding under '{self.config.normalize_activations}' needs the input (like=x)")
        return self._denormalize(out, self._normalize(like.to(self.W_enc.dtype))[1])

    def decode_delta(self, delta: Tensor, features: Tensor, *, like: Tensor) -> Tensor:
        """How the reconstruction of ``like`` moves when its features change by ``delta`` (``f' - f``).

        Only the columns ``delta`` changes enter the product, so a zero ``delta`` gives exactly zero. The
        normalisation's inverse is linear per token, so it scales the change as it scales the reconstruction.
        ``features`` (``f``) is unused by these architectures; it is there for decoders that are not linear.

        Examples:
            >>> sae = SAE.random(d_in=16, d_sae=64, site="resid_post.1", k=4, seed=0)
            >>> x = torch.randn(2, 16, generator=torch.Generator().manual_seed(0))
            >>> f = sae.encode(x)
            >>> edited = f.clone()
            >>> edited[:, 7] += 1.5  # turn feature 7 up
            >>> moved = sae.decode_delta(edited - f, f, like=x)
            >>> torch.allclose(moved, sae.decode(edited) - sae.decode(f), atol=1e-6)
            True
        """
        del features
        columns = (delta != 0).reshape(-1, delta.shape[-1]).any(dim=0).nonzero().flatten()
        out = delta[..., columns].to(self.W_dec.dtype) @ self.W_dec[columns]
        how = self.config.normalize_activations
        if how == "none":
            return out
        if how == "expected_average_only_in":
            return out / float(self.config.norm_scaling_factor or 1.0)
        state = self._normalize(like.to(self.W_enc.dtype))[1]
        moved: Tensor = out / state if how == "constant_norm_rescale" else out * state[1]
        return moved

    def forward(self, x: Tensor) -> Tensor:
        """The reconstruction ``x_hat`` of ``x`` (in ``x``'s dtype).

        Examples:
            >>> sae = SAE.random(d_in=16, d_sae=64, site="resid_post.1", k=4, seed=0)
            >>> x = torch.randn(3, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
            >>> x_hat = sae(x)
            >>> tuple(x_hat.shape), x_hat.dtype
            ((3, 16), torch.float64)
        """
        return self.decode(self.encode(x), like=x).to(x.dtype)

    def feature_direction(self, feature: int) -> Tensor:
        """Feature ``feature``'s decoder row (``[d_in]``): what adding one unit of it writes to the site.

        Examples:
            >>> sae = SAE.random(d_in=16, d_sae=64, site="resid_post.1", k=4, seed=0)
            >>> direction = sae.feature_direction(3)
            >>> tuple(direction.shape), round(float(direction.norm()), 4)
            ((16,), 1.0)

        Raises:
            InputError: no such feature.
        """
        if not 0 <= feature < self.config.d_sae:
            raise InputError(f"feature {feature} is out of range; this SAE has features 0..{self.config.d_sae - 1}")
        return self.W_dec[feature].detach()
