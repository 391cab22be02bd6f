"""The web API's request bodies, and the few replies that are not one of the library's own result types.

Every analysis answers with the library's pydantic result (`LensGrid`, `PatchingResult`, ...); what is here
describes the requests (bounded, so that one request cannot ask for unbounded work) and the server's own
objects: the model it serves, a registered direction, a job, a code snippet and an error.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

#: The longest prompt a request may carry (characters); the model's context is checked separately.
MAX_PROMPT = 20_000
#: The most prompts in one list (contrast sets, a routing corpus).
MAX_PROMPTS = 256

Prompt = Annotated[str, StringConstraints(min_length=1, max_length=MAX_PROMPT)]
Token = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class Request(BaseModel):
    """A request body: unknown fields are refused (a typo gets a 422, not a silent default)."""

    model_config = ConfigDict(extra="forbid")


class LensRequest(Request):
    prompt: Prompt
    top_k: int = Field(5, ge=1, le=50)
    track: list[Token] = Field(default_factory=list, max_length=16)


class LensGridRequest(Request):
    prompt: Prompt
    top_k: int = Field(3, ge=1, le=20)


class AttentionRequest(Request):
    prompt: Prompt
    layer: int


class PatchRequest(Request):
    clean: Prompt
    corrupted: Prompt
    correct: Token
    wrong: Token
    site: Literal["resid_pre", "resid_post", "attn_out", "mlp_out"] = "resid_post"


class PatchCellRequest(Request):
    clean: Prompt
    corrupted: Prompt
    layer: int
    position: int
    site: Literal["resid_pre", "resid_post", "attn_out", "mlp_out"] = "resid_post"
    top_k: int = Field(3, ge=1, le=20)


class ContrastRequest(Request):
    positive: list[Prompt] = Field(min_length=1, max_length=MAX_PROMPTS)
    negative: list[Prompt] = Field(min_length=1, max_length=MAX_PROMPTS)
    layer: int


class SteerRequest(Request):
    prompt: Prompt
    direction: str = Field(min_length=1, max_length=64)
    coefficient: float = Field(ge=-1000, le=1000)
    max_new_tokens: int = Field(24, ge=1, le=256)


class AblateRequest(Request):
    prompt: Prompt
    target: Token
    component: Literal["head", "mlp", "attn"] = "head"
    method: Literal["zero", "mean"] = "zero"


class MoETraceRequest(Request):
    prompt: Prompt


class MoEUtilizationRequest(Request):
    prompts: list[Prompt] = Field(min_length=1, max_length=MAX_PROMPTS)


View = Literal["lens", "attention", "patching", "steering", "ablation", "moe", "weights"]
JobKind = Literal["patch", "ablate", "weights", "heads"]
JobState = Literal["queued", "running", "done", "failed", "cancelled"]


class PythonRequest(Request):
    view: View
    request: dict[str, Any] = Field(default_factory=dict)


class JobRequest(Request):
    kind: JobKind
    request: dict[str, Any] = Field(default_factory=dict)


class ModelSummary(BaseModel):
    """The model the server holds."""

    name: str
    source: str
    family: str
    n_layers: int
    n_heads: int
    d_model: int
    vocab_size: int
    is_moe: bool
    n_experts: int | None
    token_required: bool


class DirectionInfo(BaseModel):
    """A direction the server holds for steering (made from contrast prompts, or uploaded)."""

    id: str
    name: str
    layer: int
    site: str
    norm: float
    method: str


class JobStatus(BaseModel):
    """Where a long request stands; ``done`` / ``total`` count the library's own progress steps."""

    id: str
    kind: str
    state: JobState
    done: float = 0
    total: float | None = None
    error: str | None = None


class PythonCode(BaseModel):
    """The library call that reproduces a view."""

    code: str


class ErrorBody(BaseModel):
    """Every 4xx and 5xx reply: one line saying what was wrong and what to do."""

    error: str
