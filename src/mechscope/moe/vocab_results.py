"""The result of the vocabulary contribution (`mechscope.moe.vocab`): plain values, no torch.

`VocabContribution`: per MoE layer and expert, the tokens the expert's output promotes and suppresses through
the direct-logit read-out, from its weights alone and from its outputs on a corpus, and how well the two
agree. The definitions are in `mechscope.moe.vocab`. It checks its own values.

Examples:
    >>> token = VocabToken(token=" Paris", token_id=7, logit=2.5)
    >>> readout = VocabReadout(promoted=[token], suppressed=[token], norm=1.0)
    >>> row = ExpertVocab(expert=0, weights=readout)
    >>> result = VocabContribution(
    ...     model="m", family="mixtral", top_k=1, input_scale="mlp_norm", readout="W_U (g * v)",
    ...     prompts=0, tokens=0, layers=[LayerVocab(layer=0, experts=[row])],
    ... )
    >>> result.layer(0).expert(0).weights.promoted[0].token, result.layer(0).agreement()
    (' Paris', None)
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, model_validator

from mechscope.errors import InputError


class VocabToken(BaseModel):
    """One token of a read-out: its id, its text and its logit under that read-out."""

    token: str
    token_id: int
    logit: float


class VocabReadout(BaseModel):
    """One residual-stream vector read out as direct logits (see `mechscope.moe.vocab` for the read-out).

    Attributes:
        promoted, suppressed: the ``top_k`` tokens with the largest / smallest logits, in that order.
        norm: the vector's Euclidean length in the residual stream. The read-out leaves out the final norm's
            division by the residual's RMS (shared by every component at a position), so the logits scale with
            this length and compare across experts only together with it.
    """

    promoted: list[VocabToken]
    suppressed: list[VocabToken]
    norm: float


class ExpertVocab(BaseModel):
    """What one expert writes towards the vocabulary.

    Attributes:
        weights: the read-out of the expert's expected output on Gaussian inputs, from its weights alone.
        corpus: the read-out of its mean router-weighted output over the corpus tokens routed to it (None: no
            corpus was given, or no token was routed to it).
        routed: corpus tokens routed to the expert (one of their top-k slots).
        agreement: Pearson correlation over the vocabulary between the weights read-out's logits and the
            corpus read-out's logits of this expert (None without both, or when one is constant).
        others_agreement: the mean correlation of this expert's weights read-out with the *other* experts'
            corpus read-outs of the layer: the baseline ``agreement`` should beat.
        overlap: how many of the ``top_k`` promoted tokens the two read-outs share (None without both).
    """

    expert: int
    weights: VocabReadout
    corpus: VocabReadout | None = None
    routed: int = 0
    agreement: float | None = None
    others_agreement: float | None = None
    overlap: int | None = None

    @model_validator(mode="after")
    def _finite(self) -> ExpertVocab:
        for name in ("agreement", "others_agreement"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and -1.0 - 1e-9 <= value <= 1.0 + 1e-9):
                raise ValueError(f"expert {self.expert}: {name} is a correlation in [-1, 1], got {value}")
        return self


class LayerVocab(BaseModel):
    """Every expert of one MoE layer, in expert order."""

    layer: int
    experts: list[ExpertVocab]

    def expert(self, index: int) -> ExpertVocab:
        """Expert ``index``'s row.

        Raises:
            InputError: no such expert.
        """
        if not 0 <= index < len(self.experts):
            raise InputError(f"no expert {index}; layer {self.layer} has experts 0..{len(self.experts) - 1}")
        return self.experts[index]

    def agreement(self) -> tuple[float, float] | None:
        """``(same, others)``: the mean over experts of `ExpertVocab.agreement` and of ``others_agreement``.

        None when no expert has both read-outs (no corpus).
        """
        rows = [r for r in self.experts if r.agreement is not None and r.others_agreement is not None]
        if not rows:
            return None
        same = sum(r.agreement or 0.0 for r in rows) / len(rows)
        return same, sum(r.others_agreement or 0.0 for r in rows) / len(rows)


class VocabContribution(BaseModel):
    """Per MoE layer and expert, the tokens the expert's output promotes and suppresses.

    Attributes:
        top_k: tokens listed each way per read-out.
        input_scale: the input distribution of the weights-only read-out: ``"mlp_norm"`` (Gaussian with the
            pre-MLP norm's scale and bias) or ``"identity"`` (standard Gaussian: the family's pre-MLP norm is
            not known to `mechscope.models.block_weights`).
        readout: the read-out applied to every vector, in words (final norm scale, unembedding, output factor).
        prompts, tokens: the corpus (0 when none was given).
    """

    model: str
    family: str
    top_k: int
    input_scale: Literal["mlp_norm", "identity"]
    readout: str
    prompts: int
    tokens: int
    layers: list[LayerVocab]

    @model_validator(mode="after")
    def _lists_are_top_k(self) -> VocabContribution:
        for layer in self.layers:
            for row in layer.experts:
                for readout in (row.weights, row.corpus):
                    if readout is not None and not len(readout.promoted) == len(readout.suppressed) == self.top_k:
                        raise ValueError(f"layer {layer.layer} expert {row.expert}: need {self.top_k} tokens each way")
        return self

    def layer(self, index: int) -> LayerVocab:
        """The experts of MoE layer ``index``.

        Raises:
            InputError: the result has no such layer.
        """
        for layer in self.layers:
            if layer.layer == index:
                return layer
        raise InputError(f"no vocabulary result for layer {index}; it covers {[v.layer for v in self.layers]}")
