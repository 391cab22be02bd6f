"""Result types of the lenses: plain, serialisable values that check themselves."""

from __future__ import annotations

from pydantic import BaseModel, Field, model_validator


class TokenScore(BaseModel):
    """A token with its probability and logit under some read-out."""

    token: str
    token_id: int
    prob: float = Field(ge=0.0, le=1.0)
    logit: float


class LayerPrediction(BaseModel):
    """What one layer's residual predicts at one position."""

    layer: int
    top: list[TokenScore]
    entropy: float = Field(ge=0.0)
    kl_to_final: float

    @property
    def top_token(self) -> str:
        """The most likely token at this layer."""
        return self.top[0].token

    @property
    def layer_idx(self) -> int:
        """The layer (the name other introspection tools use)."""
        return self.layer


class TokenEvolution(BaseModel):
    """A tracked token's rank (0 = top-1), probability and logit at each analysed layer.

    ``first_top1_layer`` is the first analysed layer at which the token is top-1 (None if never).
    """

    token: str
    token_id: int
    layers: list[int]
    ranks: list[int]
    probs: list[float]
    logits: list[float]
    first_top1_layer: int | None = None

    @model_validator(mode="after")
    def _same_lengths(self) -> TokenEvolution:
        if not len(self.layers) == len(self.ranks) == len(self.probs) == len(self.logits):
            raise ValueError("layers, ranks, probs and logits must have one entry per layer")
        return self


class LayerTransition(BaseModel):
    """A layer at which the top-1 token changes."""

    layer: int
    from_token: str
    to_token: str


class LensResult(BaseModel):
    """The lens applied to one prompt at one position.

    Attributes:
        prompt: the prompt text.
        tokens: the prompt's tokens (as strings, special tokens included).
        position: the position analysed, in the prompt's own coordinates (0 = first token).
        predicted: the model's own top-1 prediction at that position (its final logits).
        layer_predictions: one entry per analysed layer, in order.
        token_evolutions: the tracked tokens (the final prediction always comes first).
        layer_transitions: where the top-1 token changes from one analysed layer to the next.
        emergence_layer: the first analysed layer from which the final prediction stays top-1 to the end.
    """

    prompt: str
    tokens: list[str]
    position: int
    predicted: TokenScore
    layer_predictions: list[LayerPrediction]
    token_evolutions: list[TokenEvolution]
    layer_transitions: list[LayerTransition]
    emergence_layer: int | None

    @property
    def predicted_token(self) -> str:
        """The model's final prediction (a token string, leading space included)."""
        return self.predicted.token


class GridCell(BaseModel):
    """The lens's top token at one (layer, position), with its probability and the runners-up."""

    top: list[TokenScore]


class LensGrid(BaseModel):
    """The lens at every position of one prompt: ``cells[i][j]`` is layer ``layers[i]`` at position ``j``."""

    prompt: str
    tokens: list[str]
    layers: list[int]
    cells: list[list[GridCell]]

    @model_validator(mode="after")
    def _shape(self) -> LensGrid:
        if len(self.cells) != len(self.layers) or any(len(row) != len(self.tokens) for row in self.cells):
            raise ValueError("cells must be layers x positions")
        return self


class LayerComparison(BaseModel):
    """One aligned pair of layers: each model's top token, whether they agree, and KL(a || b)."""

    layer_a: int
    layer_b: int
    top_a: TokenScore
    top_b: TokenScore
    same_top: bool
    kl_a_to_b: float | None = None


class Comparison(BaseModel):
    """The result of `compare`."""

    prompt: str
    model_a: str
    model_b: str
    token_level: bool
    reason: str | None = None
    predicted_a: str
    predicted_b: str
    layers: list[LayerComparison]
    first_divergence: int | None  # layer of model a where the top tokens first differ
