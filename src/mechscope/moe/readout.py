"""The direct read-out of one residual-stream component, as the lens reads it (direct logit attribution).

``logits(v) = c · W_U (γ ⊙ v)`` for an RMSNorm (``γ ⊙ (v - mean v)`` for a LayerNorm): the final norm's
effective scale ``γ`` (identified on the module's own output, `norm_affine`), the unembedding ``W_U`` and the
product ``c`` of the family's linear output transforms. The final norm's ``1 / rms`` is shared by every
component at a position and is left out; see `mechscope.moe.vocab` for why, and for its use on experts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from mechscope.errors import ArchitectureError, InputError

if TYPE_CHECKING:
    from torch import Tensor, nn

    from mechscope.core.lm import LanguageModel

#: Unembedding rows multiplied at once by the read-out (bounds the float64 copy of ``W_U``).
VOCAB_CHUNK = 16384


@dataclass(frozen=True)
class NormAffine:
    """A norm's elementwise affine part: ``norm(x) = scale ⊙ centre(x) / rms(centre(x)) + bias``.

    Attributes:
        scale: ``[d_model]`` float64, the effective scale (Gemma's ``1 + w`` already added).
        bias: ``[d_model]`` float64, or None.
        centred: a LayerNorm (the mean is subtracted first) rather than an RMSNorm.
    """

    scale: Tensor
    bias: Tensor | None
    centred: bool


def norm_affine(norm: nn.Module | None, d_model: int, what: str) -> NormAffine:
    """The affine part of ``norm`` (None: no norm, the identity), checked on the module's own output.

    RMSNorm with scale ``w``, with scale ``1 + w`` (Gemma) and LayerNorm are tried on a probe batch; the one
    reproducing the module's output within the dtype's tolerance is returned.

    Raises:
        ArchitectureError: ``norm`` is none of these (``what`` names it in the message).
    """
    import torch

    from mechscope.models.archmap import gap, tolerance

    ones = torch.ones(d_model, dtype=torch.float64)
    if norm is None:
        return NormAffine(ones, None, False)
    weight, bias = getattr(norm, "weight", None), getattr(norm, "bias", None)
    w = ones if weight is None else weight.detach().double().cpu().reshape(-1)
    b = None if bias is None else bias.detach().double().cpu().reshape(-1)
    if w.shape[0] != d_model or (b is not None and b.shape[0] != d_model):
        raise ArchitectureError(f"the {what} {type(norm).__name__} does not act on d_model={d_model} features")
    eps = next((float(getattr(norm, n)) for n in ("variance_epsilon", "eps", "epsilon") if hasattr(norm, n)), 1e-6)
    probe = torch.randn(4, d_model, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 0.5
    dtype, device = (weight.dtype, weight.device) if weight is not None else (torch.float32, torch.device("cpu"))
    with torch.no_grad():
        got = norm(probe.to(dtype=dtype, device=device)).double().cpu()
    for scale, centred in ((w, False), (1 + w, False), (w, True)):
        x = probe - probe.mean(-1, keepdim=True) if centred else probe
        expected = scale * x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt() + (0 if b is None else b)
        worst, size = gap(expected, got)
        if worst <= tolerance(dtype) * size:
            return NormAffine(scale, b, centred)
    raise ArchitectureError(
        f"the {what} {type(norm).__name__} is not an elementwise-scaled RMSNorm or LayerNorm; "
        "the vocabulary read-out needs its scale"
    )


@dataclass(frozen=True)
class DirectReadout:
    """``logits(v) = factor · W_U (scale ⊙ centre(v))``: the lens's read-out of one component ``v``.

    Attributes:
        unembedding: ``[vocab, d_model]`` the model's own unembedding weight (not copied).
        norm: the final norm's affine part (its bias is not used: it belongs to no component).
        factor: the product of the family's linear output transforms (1 for most families).
        description: the read-out in words, for the result.
    """

    unembedding: Tensor
    norm: NormAffine
    factor: float
    description: str

    @property
    def vocab(self) -> int:
        """Rows of the unembedding."""
        return int(self.unembedding.shape[0])

    def logits(self, vectors: Tensor) -> Tensor:
        """``[n, vocab]`` float64 direct logits of ``vectors [n, d_model]`` (on the unembedding's device)."""
        import torch

        device = self.unembedding.device
        v = vectors.to(device=device, dtype=torch.float64)
        if self.norm.centred:
            v = v - v.mean(-1, keepdim=True)
        v = v * (self.norm.scale.to(device) * self.factor)
        chunks = [
            v @ self.unembedding[start : start + VOCAB_CHUNK].detach().double().T
            for start in range(0, self.vocab, VOCAB_CHUNK)
        ]
        return torch.cat(chunks, dim=-1)


def direct_readout(lm: LanguageModel) -> DirectReadout:
    """The model's direct read-out (see the module docstring).

    Raises:
        InputError: the model is an encoder (no language-model head).
        ArchitectureError: no unembedding, a discovered family whose lens is not the model's, or a final
            norm that is not an elementwise-scaled RMS/LayerNorm.
    """
    from torch import Tensor

    from mechscope.models.families import OUTPUT_TRANSFORMS

    arch = lm.arch
    if arch.kind != "decoder":
        raise InputError(f"{arch.family} is an encoder; the vocabulary read-out needs a language-model head")
    if arch.readout_error is not None:
        raise ArchitectureError(arch.readout_error)
    head = arch.unembed()
    weight = getattr(head, "weight", None)
    if head is None or not isinstance(weight, Tensor) or weight.dim() != 2 or weight.shape[1] != arch.d_model:
        raise ArchitectureError(f"{arch.family}: the unembedding is not a linear layer [vocab, d_model]")
    norm = norm_affine(arch.final_norm(), arch.d_model, "final norm")
    factor, parts, skipped = 1.0, [], []
    for name in arch.spec.output_transform:
        value = getattr(arch.model.config, name, None)
        if value is None:
            continue
        op = OUTPUT_TRANSFORMS[name]
        if op == "softcap":
            skipped.append(name)
        else:
            factor = factor * float(value) if op == "multiply" else factor / float(value)
            parts.append(f"{'×' if op == 'multiply' else '/'} {name} {float(value):g}")
    inner = "γ ⊙ (v - mean v)" if norm.centred else "γ ⊙ v"
    text = " ".join([f"W_U ({inner})", *parts])
    text += "".join(f"; {name} left out (not linear)" for name in skipped)
    return DirectReadout(weight, norm, factor, text + " (final norm's 1/rms left out)")
