"""Result types of SAE evaluation and reading: plain, serialisable values that check themselves.

This module imports no torch, so that the HTML reports (`mechscope.viz.sae_report`) can take these results
without loading a model. Positions are in each prompt's own coordinates (0 = its first token, BOS on most
models), whatever the padding of the batch it ran in.
"""

from __future__ import annotations

from pydantic import BaseModel, Field, model_validator

#: A feature is *dense* when it is active (> 0) on more than this fraction of the evaluation tokens.
DENSE_THRESHOLD = 0.1


class Evaluation(BaseModel):
    """How well an SAE reconstructs its site, how sparse it is, and what splicing it in costs the model.

    Tokens: every real (non-padding) token of every prompt, except each prompt's first token when
    ``skip_first`` (BOS on most models: its norm is an outlier SAEs are trained without). ``x`` is the
    site's value at such a token (``head_out`` flattened), ``x_hat`` the SAE's reconstruction, ``f`` its
    features; sums run over the ``tokens`` evaluation tokens.

    Attributes:
        site: the site the SAE reads.
        prompts: how many prompts were run.
        tokens: evaluation tokens (``N``).
        d_in: the site's width.
        d_sae: the SAE's number of features.
        skip_first: whether each prompt's first token was left out (of the metrics, and of the splice).
        mse: ``Σ‖x − x_hat‖² / N``: the squared error summed over the ``d_in`` dimensions, averaged over tokens.
        mse_per_dim: ``mse / d_in`` (the mean over tokens and dimensions, SAELens's ``mse``).
        normalized_mse: ``Σ‖x − x_hat‖² / Σ‖x‖²``: the error relative to predicting zero.
        explained_variance: ``1 − Σ‖x − x_hat‖² / Σ‖x − x̄‖²`` with ``x̄`` the mean over the tokens: the error
            relative to predicting the mean (``1 −`` the error relative to the mean predictor).
        l0: the mean number of active features (``f > 0``) per token.
        dead: features never active on any evaluation token.
        dense: features active on more than ``dense_threshold`` of the tokens, in index order.
        dense_threshold: the fraction of tokens above which a feature is dense (`DENSE_THRESHOLD`).
        loss_tokens: next-token predictions the losses average over: from every evaluation token that has a
            real next token (so a prompt's last token predicts nothing).
        ce_clean: the model's mean next-token cross-entropy (nats) over ``loss_tokens``.
        ce_sae: the same with the site's value replaced by ``x_hat`` at every evaluation token.
        ce_zero: the same with the site's value zeroed at every evaluation token (zero ablation).
        delta_loss: ``ce_sae − ce_clean``.
        loss_recovered: ``(ce_zero − ce_sae) / (ce_zero − ce_clean)``: 1 when splicing the SAE in costs
            nothing, 0 when it is as bad as zero ablation; None when zero ablation changes nothing.
    """

    site: str
    prompts: int = Field(ge=1)
    tokens: int = Field(ge=1)
    d_in: int = Field(ge=1)
    d_sae: int = Field(ge=1)
    skip_first: bool
    mse: float = Field(ge=0.0)
    mse_per_dim: float = Field(ge=0.0)
    normalized_mse: float = Field(ge=0.0)
    explained_variance: float
    l0: float = Field(ge=0.0)
    dead: int = Field(ge=0)
    dense: list[int]
    dense_threshold: float = Field(ge=0.0, le=1.0)
    loss_tokens: int = Field(ge=1)
    ce_clean: float
    ce_sae: float
    ce_zero: float
    delta_loss: float
    loss_recovered: float | None

    @model_validator(mode="after")
    def _consistent(self) -> Evaluation:
        if self.dead > self.d_sae or len(self.dense) + self.dead > self.d_sae:
            raise ValueError("dead and dense features cannot outnumber the SAE's features")
        if any(not 0 <= f < self.d_sae for f in self.dense) or self.dense != sorted(set(self.dense)):
            raise ValueError("dense must hold distinct feature indices of the SAE, in order")
        if self.l0 > self.d_sae:
            raise ValueError("l0 cannot exceed the number of features")
        return self

    @property
    def dead_fraction(self) -> float:
        """The share of features that are dead."""
        return self.dead / self.d_sae


class FeatureActivation(BaseModel):
    """One feature and its activation at one token."""

    feature: int = Field(ge=0)
    activation: float


class TokenFeatures(BaseModel):
    """A token of a prompt and its most active features (highest first, ties by feature index)."""

    position: int = Field(ge=0)
    token: str
    token_id: int
    top: list[FeatureActivation]


class FeatureTrace(BaseModel):
    """One feature's activation at every position of a prompt."""

    feature: int = Field(ge=0)
    activations: list[float]


class PromptFeatures(BaseModel):
    """An SAE read at every token of one prompt: the top features per token, and chosen features' traces.

    Attributes:
        site: the site the SAE reads.
        prompt: the prompt text.
        d_sae: the SAE's number of features.
        tokens: one entry per token (special tokens included), with only active features (``> 0``) listed.
        traces: the activations of the features asked for, at every position.
    """

    site: str
    prompt: str
    d_sae: int = Field(ge=1)
    tokens: list[TokenFeatures]
    traces: list[FeatureTrace] = []

    @model_validator(mode="after")
    def _shape(self) -> PromptFeatures:
        if [t.position for t in self.tokens] != list(range(len(self.tokens))):
            raise ValueError("tokens must be given for positions 0, 1, 2 ... in order")
        if any(len(trace.activations) != len(self.tokens) for trace in self.traces):
            raise ValueError("each trace needs one activation per token")
        if any(not 0 <= f.feature < self.d_sae for t in self.tokens for f in t.top):
            raise ValueError("a listed feature is outside the SAE")
        return self

    def trace(self, feature: int) -> FeatureTrace:
        """The trace of ``feature`` (it must have been asked for).

        Raises:
            KeyError: no trace of ``feature``.
        """
        for trace in self.traces:
            if trace.feature == feature:
                return trace
        raise KeyError(f"feature {feature} was not traced; ask for it with features=[{feature}]")


class Example(BaseModel):
    """One max-activating context of a feature.

    Attributes:
        prompt: the index of the prompt in the corpus given.
        position: the activating token's position in that prompt.
        activation: the feature's activation there.
        tokens: the tokens around it (up to ``context`` either side).
        center: the index of the activating token in ``tokens``.
        activations: the feature's activation at each of ``tokens``.
    """

    prompt: int = Field(ge=0)
    position: int = Field(ge=0)
    activation: float
    tokens: list[str]
    center: int = Field(ge=0)
    activations: list[float]

    @model_validator(mode="after")
    def _window(self) -> Example:
        if len(self.activations) != len(self.tokens) or self.center >= len(self.tokens):
            raise ValueError("a context needs one activation per token and its center inside it")
        return self


class FeatureExamples(BaseModel):
    """A feature's top contexts over a corpus: by activation, highest first, ties by (prompt, position).

    ``active_tokens`` counts the corpus tokens (those searched) at which the feature is active.
    """

    feature: int = Field(ge=0)
    active_tokens: int = Field(ge=0)
    examples: list[Example]

    @model_validator(mode="after")
    def _ordered(self) -> FeatureExamples:
        keys = [(-e.activation, e.prompt, e.position) for e in self.examples]
        if keys != sorted(keys):
            raise ValueError("examples must run from the highest activation down, ties by prompt and position")
        return self


class TopExamples(BaseModel):
    """Max-activating contexts of chosen features over a corpus (see `mechscope.sae.read.top_examples`).

    Attributes:
        site: the site the SAE reads.
        prompts: the number of prompts searched.
        tokens: the number of tokens searched (each prompt's first left out when ``skip_first``).
        k: examples kept per feature at most.
        context: tokens shown either side of each example's token at most.
        skip_first: whether each prompt's first token was left out of the search.
        features: one entry per feature asked for, in the order asked.
    """

    site: str
    prompts: int = Field(ge=1)
    tokens: int = Field(ge=0)
    k: int = Field(ge=1)
    context: int = Field(ge=0)
    skip_first: bool
    features: list[FeatureExamples]

    def feature(self, feature: int) -> FeatureExamples:
        """The examples of ``feature``.

        Raises:
            KeyError: ``feature`` was not searched.
        """
        for entry in self.features:
            if entry.feature == feature:
                return entry
        raise KeyError(f"feature {feature} was not searched")


class TokenEffect(BaseModel):
    """A vocabulary token and a feature's direct effect on its logit."""

    token: str
    token_id: int = Field(ge=0)
    effect: float


class LogitEffect(BaseModel):
    """The tokens a feature's decoder row promotes and suppresses: ``W_U @ W_dec[feature]``.

    The raw unembedding, without the final norm (see `mechscope.sae.read.logit_effect`).

    Attributes:
        site: the site the SAE reads.
        feature: the feature.
        positive: the ``top`` most promoted tokens, largest effect first.
        negative: the ``top`` most suppressed tokens, most negative effect first.
    """

    site: str
    feature: int = Field(ge=0)
    positive: list[TokenEffect]
    negative: list[TokenEffect]

    @model_validator(mode="after")
    def _ordered(self) -> LogitEffect:
        up, down = [t.effect for t in self.positive], [t.effect for t in self.negative]
        if up != sorted(up, reverse=True) or down != sorted(down):
            raise ValueError("positive runs from the largest effect down, negative from the most negative up")
        return self


__all__ = ["DENSE_THRESHOLD", "Evaluation", "Example", "FeatureActivation", "FeatureExamples", "FeatureTrace"]
__all__ += ["LogitEffect", "PromptFeatures", "TokenEffect", "TokenFeatures", "TopExamples"]
