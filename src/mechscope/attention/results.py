"""The results of the attention analyses: plain values (token strings, lists of floats), no tensors.

`FocusEdge` (one strong query → key weight), `HeadRoles` (role scores of every head) and `LayerAttention`
(one prompt at one layer: every head's pattern with the layers x heads overviews). Viz renders these;
nothing here imports torch.
"""

from __future__ import annotations

from pydantic import BaseModel, Field, model_validator

from mechscope.errors import InputError

ROLES = ("previous_token", "duplicate_token", "induction", "copying")


class FocusEdge(BaseModel):
    """A query token that pays more than the threshold to a key token, in one head."""

    layer: int
    head: int
    query: int
    key: int
    weight: float
    query_token: str
    key_token: str


class HeadRoles(BaseModel):
    """Role scores ``[layer][head]`` in [0, 1]; ``copying`` is None without an unembedding."""

    previous_token: list[list[float]]
    duplicate_token: list[list[float]]
    induction: list[list[float]]
    copying: list[list[float]] | None
    sequences: int
    length: int

    def top(self, role: str, k: int = 5) -> list[tuple[int, int, float]]:
        """The ``k`` best ``(layer, head, score)`` for ``role``.

        Raises:
            InputError: ``k`` is not positive or ``role`` is not a role.
        """
        if k < 1:
            raise InputError(f"the number of heads to list must be at least 1, got {k}")
        if role not in ROLES:
            raise InputError(f"unknown role '{role}'; use one of {', '.join(ROLES)}")
        scores = getattr(self, role)
        if scores is None:
            return []
        flat = [(layer, head, value) for layer, row in enumerate(scores) for head, value in enumerate(row)]
        return sorted(flat, key=lambda item: -item[2])[:k]


class LayerAttention(BaseModel):
    """Where one layer's heads look on one prompt, with per-head summaries of every layer.

    Attributes:
        patterns: ``[head][query][key]`` attention probabilities at ``layer``.
        head: the head the report shows (None: the mean over heads).
        focus: every (head, query, key) weight above ``threshold`` (only ``head``'s when one is chosen).
        entropy: ``[layer][head]`` mean entropy (nats) of the attention rows.
        sink_mass: ``[layer][head]`` mean attention paid to the first real token.
        roles: role name → ``[layer][head]`` scores (see `mechscope.attention.roles`); empty if not asked.
    """

    prompt: str
    tokens: list[str]
    layer: int
    head: int | None = None
    threshold: float
    patterns: list[list[list[float]]]
    focus: list[FocusEdge]
    entropy: list[list[float]]
    sink_mass: list[list[float]]
    roles: dict[str, list[list[float]]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _shapes_agree(self) -> LayerAttention:
        n = len(self.tokens)
        if any(len(rows) != n or any(len(row) != n for row in rows) for rows in self.patterns):
            raise ValueError(f"every head's pattern must be {n} x {n} (one row and column per token)")
        if self.head is not None and not 0 <= self.head < len(self.patterns):
            raise ValueError(f"head {self.head} is not one of the {len(self.patterns)} heads")
        return self

    def shown(self) -> list[list[float]]:
        """The ``[query][key]`` weights the report shows: the chosen head's, or the mean over heads."""
        if self.head is not None:
            return self.patterns[self.head]
        count = len(self.patterns)
        return [
            [sum(head[q][k] for head in self.patterns) / count for k in range(len(self.tokens))]
            for q in range(len(self.tokens))
        ]
