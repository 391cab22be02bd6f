"""Option groups shared by CLI commands, defined once: the model group, output options, error handling.

`model_options` adds the whole model group (``--model``, ``--dtype``, ``--device``, ``--device-map``,
``--attn``, ``--revision``, ``--trust-remote-code``) to a command and hands the command one `ModelOptions`;
``options.load()`` loads the model. Every command that loads a model uses it, so every one of them can run
in bfloat16 on a GPU.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, get_type_hints, overload

import typer

from mechscope.distributed.spec import ModelSpec
from mechscope.errors import MechscopeError

if TYPE_CHECKING:
    from mechscope.distributed.runner import Runner

F = TypeVar("F", bound=Callable[..., Any])


def one_line_errors(fn: F) -> F:
    """Turn a `MechscopeError` (or Ctrl-C) into one line on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MechscopeError as error:
            print(f"mechscope: error: {error}", file=sys.stderr)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            # Sweeps catch Ctrl-C themselves and return partial results; this is Ctrl-C anywhere else (loading).
            print("mechscope: error: interrupted (Ctrl-C); no output was written", file=sys.stderr)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


ModelOpt = Annotated[
    str, typer.Option("--model", "-m", help="Hub id, local save_pretrained folder, or bundled organism name.")
]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="float32, bfloat16, float16 or auto.")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="cpu, cuda, cuda:1 ... (default cpu).")]
DeviceMapOpt = Annotated[str | None, typer.Option("--device-map", help="Spread a large model over devices, e.g. auto.")]
RevisionOpt = Annotated[str | None, typer.Option("--revision", help="Hub branch, tag or commit.")]
RemoteCodeOpt = Annotated[
    bool, typer.Option("--trust-remote-code", help="Run the repo's own modelling code (off by default).")
]
AttnOpt = Annotated[str | None, typer.Option("--attn", help="Attention implementation: eager, sdpa ...")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")]


@dataclass(frozen=True)
class ModelOptions(ModelSpec):
    """Which model to load and how: the CLI's model option group (a `ModelSpec`; see `mechscope.load`)."""

    def spec(self) -> ModelSpec:
        """These options as a plain `ModelSpec`: what a Ray worker unpickles without importing the CLI."""
        return ModelSpec(**{field.name: getattr(self, field.name) for field in fields(self)})

    def runner(self, backend: str, *, address: str | None = None, workers: int | None = None) -> Runner:
        """Where a long job's shards run (``--backend``): this process, or Ray workers that load this model."""
        from mechscope.distributed.runner import make_runner

        return make_runner(backend, self.spec(), address=address, workers=workers)


BackendOpt = Annotated[
    str, typer.Option("--backend", help="local (this process) or ray (workers on a Ray cluster; needs the extra).")
]
AddressOpt = Annotated[
    str | None, typer.Option("--address", help="Ray cluster to join (auto, host:6379); default: start one here.")
]
WorkersOpt = Annotated[
    int | None, typer.Option("--workers", help="Ray workers, each with the model (default: one per GPU, else CPU).")
]


_GROUP: dict[str, Any] = {
    "model": ModelOpt,
    "dtype": DtypeOpt,
    "device": DeviceOpt,
    "device_map": DeviceMapOpt,
    "attn": AttnOpt,
    "revision": RevisionOpt,
    "trust_remote_code": RemoteCodeOpt,
}
_DEFAULTS = {field.name: field.default for field in fields(ModelOptions)}


@overload
def model_options(fn: Callable[..., Any], *, default: str | None = ..., prefix: str = ...) -> Callable[..., Any]: ...


@overload
def model_options(
    fn: None = None, *, default: str | None = ..., prefix: str = ...
) -> Callable[[Callable[..., Any]], Callable[..., Any]]: ...


def model_options(fn: Callable[..., Any] | None = None, *, default: str | None = "toy", prefix: str = "") -> Any:
    """Give a command the model option group, as one parameter named ``model`` of type `ModelOptions`.

    Args:
        default: the ``--model`` default (``None``: the option is required).
        prefix: for commands that load two models: ``prefix="base"`` reads ``--base``,
            ``--base-dtype`` ... into the parameter ``base``.

    Examples:
        >>> @model_options
        ... def lens(prompt: str, model: ModelOptions) -> None: ...
    """
    if fn is None:
        return functools.partial(model_options, default=default, prefix=prefix)
    target = prefix or "model"
    signature = inspect.signature(fn)
    hints = get_type_hints(fn, include_extras=True)
    if target not in signature.parameters:
        raise TypeError(f"{fn.__name__} needs a parameter '{target}: ModelOptions' to receive the model options")
    names = {field: f"{prefix}_{field}" if prefix else field for field in _GROUP}
    added = []
    for field, annotation in _GROUP.items():
        if prefix:
            option = f"--{prefix}-{field.replace('_', '-')}" if field != "model" else f"--{prefix}"
            info = typer.Option(option, help=annotation.__metadata__[0].help)
            annotation = Annotated[annotation.__origin__, info]
        value = default if field == "model" else _DEFAULTS[field]
        parameter_default = inspect.Parameter.empty if field == "model" and value is None else value
        added.append(
            inspect.Parameter(
                names[field], inspect.Parameter.KEYWORD_ONLY, default=parameter_default, annotation=annotation
            )
        )
    # The group takes the target's place, so --help lists it where the command declares it. Every parameter
    # becomes keyword-only (typer passes them by name), so required and defaulted ones may come in any order.
    merged: list[inspect.Parameter] = []
    for p in signature.parameters.values():
        if p.name == target:
            merged.extend(added)
        else:
            merged.append(p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=hints.get(p.name, p.annotation)))

    @functools.wraps(fn)
    def wrapper(**kwargs: Any) -> Any:
        chosen = {field: kwargs.pop(names[field]) for field in _GROUP}
        kwargs[target] = ModelOptions(**chosen)
        return fn(**kwargs)

    wrapper.__signature__ = signature.replace(parameters=merged)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in merged}
    del wrapper.__wrapped__  # typer must read the new signature, not the wrapped one
    return wrapper
