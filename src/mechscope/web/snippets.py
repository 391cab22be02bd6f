""" "Copy as Python": the library calls that reproduce a view of the web app.

Each snippet loads the served model with `mechscope.Analyzer` and makes the same call the server made for
the view's last request, ending with the result in ``result``. Every value is written with ``repr``, so a
prompt with quotes, newlines or markup comes back as the same string. The tests run each snippet and compare
its ``result`` with the server's answer.

Examples:
    >>> print(snippet("toy", "lens", {"prompt": "The capital of France is", "top_k": 3}))
    import mechscope as ms
    <BLANKLINE>
    analyzer = ms.Analyzer.from_pretrained('toy')
    result = analyzer.lens_grid('The capital of France is', top_k=3)
    tracked = analyzer.lens('The capital of France is', top_k=3, track=[])[0]
    print(result.model_dump_json(indent=1))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from mechscope.errors import InputError
from mechscope.web import schemas


def _lens(body: schemas.LensGridRequest | Any, extra: dict[str, Any]) -> list[str]:
    track = extra.get("track", [])
    return [
        f"result = analyzer.lens_grid({body.prompt!r}, top_k={body.top_k})",
        f"tracked = analyzer.lens({body.prompt!r}, top_k={body.top_k}, track={list(track)!r})[0]",
    ]


def _attention(body: schemas.AttentionRequest, extra: dict[str, Any]) -> list[str]:
    return [f"result = analyzer.attention({body.prompt!r}, {body.layer}, with_roles=True)"]


def _patching(body: schemas.PatchRequest, extra: dict[str, Any]) -> list[str]:
    return [
        f"result = analyzer.patch({body.clean!r}, {body.corrupted!r}, correct={body.correct!r}, "
        f"wrong={body.wrong!r}, site={body.site!r})"
    ]


def _steering(body: schemas.SteerRequest, extra: dict[str, Any]) -> list[str]:
    recipe = extra.get("recipe") or [
        "from mechscope.core.direction import Direction",
        f"direction = Direction.load({body.direction + '.safetensors'!r}, analyzer.lm)  # the direction's file",
    ]
    return [
        *recipe,
        f"result = analyzer.steer({body.prompt!r}, direction, [0.0, {body.coefficient!r}], "
        f"max_new_tokens={body.max_new_tokens})",
    ]


def _ablation(body: schemas.AblateRequest, extra: dict[str, Any]) -> list[str]:
    return [
        f"result = analyzer.ablate({body.prompt!r}, component={body.component!r}, method={body.method!r}, "
        f"target={body.target!r})"
    ]


def _moe(body: schemas.MoETraceRequest, extra: dict[str, Any]) -> list[str]:
    lines = [f"result = analyzer.moe_trace({body.prompt!r})"]
    if extra.get("prompts"):
        lines.append(f"utilization = analyzer.moe_utilization({list(extra['prompts'])!r})")
    return lines


def _weights(body: BaseModel, extra: dict[str, Any]) -> list[str]:
    return ["result = analyzer.weights()"]


_VIEWS: dict[str, tuple[type[BaseModel], Callable[[Any, dict[str, Any]], list[str]], tuple[str, ...]]] = {
    # view: (request type, lines, fields of the request that are not the main call's)
    "lens": (schemas.LensGridRequest, _lens, ("track",)),
    "attention": (schemas.AttentionRequest, _attention, ()),
    "patching": (schemas.PatchRequest, _patching, ()),
    "steering": (schemas.SteerRequest, _steering, ()),
    "ablation": (schemas.AblateRequest, _ablation, ()),
    "moe": (schemas.MoETraceRequest, _moe, ("prompts",)),
    "weights": (schemas.Request, _weights, ()),
}


def snippet(model: str, view: str, request: dict[str, Any], *, recipe: list[str] | None = None) -> str:
    """Python that reproduces ``view`` for ``request`` (the body the page sent) on the model ``model``.

    Args:
        recipe: lines that rebuild the steering direction as ``direction`` (its contrast prompts).

    Raises:
        InputError: an unknown view, or a request that view would refuse.
    """
    if view not in _VIEWS:
        raise InputError(f"unknown view '{view}'; use one of {', '.join(_VIEWS)}")
    kind, lines, extra_fields = _VIEWS[view]
    extra = {name: request[name] for name in extra_fields if name in request}
    main = {name: value for name, value in request.items() if name not in extra_fields}
    try:
        body = kind.model_validate(main)
    except ValueError as error:
        raise InputError(f"the {view} request is not valid: {str(error).splitlines()[-1].strip()}") from None
    if recipe is not None:
        extra["recipe"] = recipe
    code = ["import mechscope as ms", "", f"analyzer = ms.Analyzer.from_pretrained({model!r})", *lines(body, extra)]
    return "\n".join([*code, "print(result.model_dump_json(indent=1))" if view != "weights" else "print(result)"])
