"""Registering hooks on the model's own modules, and removing exactly those, always.

`HookSet` owns the handles it creates and removes them in ``close()``, which every context manager in
mechscope calls from ``finally``. `PassTracker` adds one pre- and one post-hook on the model's top module
so that site hooks know the padding layout of the pass they run in and can act when a pass ends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from torch import nn
from torch.utils.hooks import RemovableHandle

from mechscope.core.positions import PassInfo, past_length


class HookSet:
    """A group of hook handles removed together (the library never touches hooks it did not add)."""

    def __init__(self) -> None:
        self._handles: list[RemovableHandle] = []

    def forward(self, module: nn.Module, fn: Callable[..., Any], *, with_kwargs: bool = False) -> None:
        """Add a forward hook ``fn(module, args, [kwargs,] output)``."""
        self._handles.append(module.register_forward_hook(fn, with_kwargs=with_kwargs))

    def pre(self, module: nn.Module, fn: Callable[..., Any], *, with_kwargs: bool = False) -> None:
        """Add a forward pre-hook ``fn(module, args, [kwargs])``."""
        self._handles.append(module.register_forward_pre_hook(fn, with_kwargs=with_kwargs))

    def close(self) -> None:
        """Remove every hook this set added (idempotent)."""
        while self._handles:
            self._handles.pop().remove()

    def __len__(self) -> int:
        return len(self._handles)


class PassListener(Protocol):
    """Something told when each forward pass of the model ends."""

    #: Whether the listener reads the padding layout (`PassTracker.info`) during a pass.
    needs_layout: bool

    def end_pass(self, tracker: PassTracker) -> None:
        """Called once when a forward pass of the tracked model ends (its layout is still readable)."""
        ...


class PassTracker:
    """Knows the current forward pass's padding layout and tells listeners when the pass ends.

    One tracker belongs to one model; it hooks the model's top module while at least one listener (a
    capture or an intervention) is attached: a post-hook always (to end passes), a pre-hook only while
    some listener needs the layout during the pass. The layout itself is computed lazily.
    """

    def __init__(self, model: nn.Module) -> None:
        self._model = model
        self._hooks = HookSet()
        self._listeners: list[PassListener] = []
        self._with_layout = False
        self._call: tuple[tuple[Any, ...], dict[str, Any]] | None = None
        self._past = 0  # KV-cache length when the running pass began
        self._info: PassInfo | None = None
        #: The padding mask of the prompts ``lm.generate`` is generating from (None otherwise).
        self.prompt_mask: Any = None
        #: Counts ``lm.generate`` calls while one runs (-1 otherwise), so that captures without a
        #: top-level hook can still tell a generation step from a new forward call.
        self.generation = -1
        self._generations = 0
        #: The caller's prompt index of each row of the next passes (set by ``lm.forward_batches``).
        self.rows: Any = None
        #: Every capture open on this model, tracked or not (``forward_batches`` checks them).
        self.captures: list[Any] = []

    def begin_generation(self) -> None:
        """Mark that the model's passes, until `end_generation`, belong to one ``generate`` call."""
        self._generations += 1
        self.generation = self._generations

    def end_generation(self) -> None:
        """The ``generate`` call is over."""
        self.generation = -1

    @property
    def info(self) -> PassInfo:
        """The layout of the pass now running (computed on first use within the pass)."""
        if self._info is None:
            if self._call is None:
                raise RuntimeError(
                    "the pass layout is unknown here: no tracked forward pass is running (a custom op that reads "
                    "ctx.info must declare needs_layout = True)"
                )
            self._info = PassInfo.from_forward(
                self._call[1], self._call[0], past=self._past, prompt_mask=self.prompt_mask
            )
            self._info.rows = self.rows
        return self._info

    @property
    def in_pass(self) -> bool:
        """Whether the layout of a running pass is known (a pass is running and was seen starting)."""
        return self._call is not None

    @property
    def offset(self) -> int:
        """Columns that earlier passes hold in the KV cache (0 for a fresh forward)."""
        if self._info is not None:
            return self._info.offset
        return 0 if self._call is None else self._past

    def _pre(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._call = (args, kwargs)
        self._past = past_length(kwargs)  # now: the KV cache grows while the layers run
        self._info = None

    def _post(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        if self._call is None:  # no pre-hook: the cache already holds this pass
            self._call = (args, kwargs)
            length = _input_length(kwargs, args)
            self._past = max(0, past_length(kwargs) - (length if "attention_mask" not in kwargs else 0))
        try:
            for listener in list(self._listeners):
                listener.end_pass(self)
        finally:
            self._call = None
            self._info = None

    def attach(self, listener: PassListener) -> None:
        """Start telling ``listener`` about passes (hooks the model as needed)."""
        self._listeners.append(listener)
        self._rehook()

    def detach(self, listener: PassListener) -> None:
        """Stop telling ``listener`` (unhooks the model when none is left)."""
        if listener in self._listeners:
            self._listeners.remove(listener)
        self._rehook()

    def _rehook(self) -> None:
        with_layout = any(listener.needs_layout for listener in self._listeners)
        if self._listeners and len(self._hooks) and with_layout == self._with_layout:
            return
        self._hooks.close()
        self._call = None
        self._info = None
        self._with_layout = with_layout
        if not self._listeners:
            return
        if with_layout:
            self._hooks.pre(self._model, self._pre, with_kwargs=True)
        self._hooks.forward(self._model, self._post, with_kwargs=True)


def _input_length(kwargs: dict[str, Any], args: tuple[Any, ...]) -> int:
    ids = kwargs.get("input_ids")
    if ids is None:
        ids = kwargs.get("inputs_embeds")
    if ids is None and args:
        ids = args[0]
    shape = getattr(ids, "shape", None)
    return int(shape[1]) if shape is not None and len(shape) >= 2 else 0
