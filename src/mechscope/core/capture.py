"""Capturing activations at sites: the engine behind ``LanguageModel.capture``."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import torch
from torch import Tensor, nn

from mechscope.core.cache import Cache
from mechscope.core.hooks import HookSet, PassTracker
from mechscope.core.points import POINTS, Reader, module_for, reader
from mechscope.core.positions import PassInfo, Positions, check_positions, select
from mechscope.core.sites import Site
from mechscope.errors import HookNotFiredError, PositionError
from mechscope.models.archmap import ModelMap

#: The KV offset recorded for a generation step seen without a top-level hook: the cache only needs its sign.
CONTINUATION = 1

#: ``sink(values, info)`` receives each pass's activations instead of the cache keeping them.
Sink = Callable[[dict[str, Tensor], PassInfo], None]


class _NoLayout(PassInfo):
    """What a sink that declared ``needs_info = False`` gets as ``info``: reading anything of it is an error."""

    def __init__(self) -> None:  # no mask, no length: nothing was tracked
        pass

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("__"):
            return object.__getattribute__(self, name)
        raise RuntimeError(
            "this sink declared needs_info = False, so its passes' layout was not tracked; drop that attribute "
            "to get the layout in `info`"
        )


NO_LAYOUT = _NoLayout()


def _own_copy(value: Tensor) -> Tensor:
    """A copy of ``value`` the model cannot write into, out of the autograd graph."""
    return value.detach().clone() if value.requires_grad else value.clone()


@dataclass(frozen=True)
class HookGroup:
    """Sites read or written at one module and phase, so that each module gets one hook.

    ``phase`` is ``"in"`` (a pre-hook), ``"out"`` (a forward hook) or ``"experts"`` (a forward hook that
    also sees the packed-experts module's arguments).
    """

    module: nn.Module
    phase: str
    sites: tuple[Site, ...]
    keys: tuple[str, ...]
    readers: tuple[Reader, ...]


def plan_hooks(sites: Iterable[Site], arch: ModelMap) -> tuple[HookGroup, ...]:
    """Group ``sites`` by hooked module and phase, with a specialised reader per site."""
    groups: dict[tuple[int, str], tuple[nn.Module, str, list[Site]]] = {}
    for site in sites:
        module = module_for(site, arch)
        phase = "experts" if site.kind == "expert_out" else POINTS[site.kind].phase
        groups.setdefault((id(module), phase), (module, phase, []))[2].append(site)
    return tuple(
        HookGroup(
            module, phase, tuple(members), tuple(str(s) for s in members), tuple(reader(s, arch) for s in members)
        )
        for module, phase, members in groups.values()
    )


@dataclass(frozen=True)
class CapturePlan:
    """Everything about a site list that does not change between captures (built once per list)."""

    sites: tuple[Site, ...]
    keys: tuple[str, ...]
    groups: tuple[HookGroup, ...]
    moe: bool  # some site reads a router or the experts (needs the batch size)
    patterns: bool  # some site reads attention patterns (needs eager attention)


def plan_capture(sites: Iterable[Site], arch: ModelMap) -> CapturePlan:
    """The `CapturePlan` of ``sites``."""
    ordered = tuple(sites)
    return CapturePlan(
        sites=ordered,
        keys=tuple(str(s) for s in ordered),
        groups=plan_hooks(ordered, arch),
        moe=any(POINTS[s.kind].part in ("router", "experts") for s in ordered),
        patterns=any(s.kind == "attn_pattern" for s in ordered),
    )


class Capture:
    """Context manager that hooks the sites, fills a `Cache` (or feeds a sink) and unhooks on exit.

    Hooks are removed in ``__exit__`` whether or not the body raised. If a forward pass ends without a
    site's hook having run, `HookNotFiredError` is raised instead of leaving that site silently empty.

    A capture that needs nothing from the model's top-level call (all positions, no sink, no MoE site)
    does not hook the top module: a pass is closed when a site fires again (the next pass began), when
    the cache is read, or on exit. Every hook added per call costs time on small models.
    """

    def __init__(
        self,
        arch: ModelMap,
        tracker: PassTracker,
        plan: CapturePlan,
        *,
        positions: Positions = "all",
        to: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        sink: Sink | None = None,
        keep_grad: bool = False,
    ) -> None:
        self.arch = arch
        self.tracker = tracker
        self.plan = plan
        self._all_positions = positions == "all" if isinstance(positions, str) else False
        self.positions = positions if self._all_positions else check_positions(positions)
        self.device = torch.device(to) if to is not None else None
        self.dtype = dtype
        self.sink = sink
        self.cache = Cache(sites=list(plan.keys), positions=_describe(positions), n_layers=arch.n_layers)
        if keep_grad and not self._all_positions:
            raise PositionError("keep_grad captures keep whole activations; use positions='all'")
        self.keep_grad = keep_grad
        self._as_is = self._all_positions and dtype is None and to is None and not keep_grad
        self.needs_layout = not self._all_positions or plan.moe
        # A sink reads the pass layout (`info`) unless it says otherwise; one that does not (a reader that only
        # keeps rows) spares every pass the model-level hook, and is called when the next pass starts instead.
        sink_needs_info = sink is not None and bool(getattr(sink, "needs_info", True))
        self._tracked = self.needs_layout or sink_needs_info
        self._hooks = HookSet()
        self._current: dict[str, Tensor] = {}
        self._pass_generation = -1  # the lm.generate call the open pass belongs to (untracked mode)
        self._last_generation = -1  # ... and the one the pass before it belonged to
        self._restore_attn: str | None = None
        #: One row per prompt whatever the padding (pooled or single positions, no pattern's key axis), so
        #: rows of passes padded differently can be reordered: `LanguageModel.forward_batches` buckets
        #: prompts by length only when every open capture has this.
        self.rows_align = _one_row_per_prompt(positions) and not plan.patterns
        self._window: list[tuple[dict[str, Tensor], Tensor]] | None = None
        if not self._tracked:
            self.cache._flush = self._flush

    def __enter__(self) -> Cache:
        try:
            self._use_eager_if_patterns()
            for group in self.plan.groups:
                self._register(group)
            if self._tracked:
                self.tracker.attach(self)
            self.tracker.captures.append(self)
        except BaseException:
            self._close()
            raise
        return self.cache

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if exc_type is None:
                self._flush()
        finally:
            self._close()

    def _close(self) -> None:
        self._hooks.close()
        if self in self.tracker.captures:
            self.tracker.captures.remove(self)
        self._window = None
        self.cache._flush = None
        if self._tracked:
            self.tracker.detach(self)
        if self._restore_attn is not None:
            self.arch.model.set_attn_implementation(self._restore_attn)  # type: ignore[operator]
            self._restore_attn = None
        self._current = {}

    def _use_eager_if_patterns(self) -> None:
        """Attention weights exist only in eager attention: switch to it while this capture is open."""
        if not self.plan.patterns:
            return
        current = getattr(getattr(self.arch.model, "config", None), "_attn_implementation", None)
        if current not in (None, "eager"):
            self.arch.model.set_attn_implementation("eager")  # type: ignore[operator]
            self._restore_attn = current

    def _register(self, group: HookGroup) -> None:
        entries = tuple(zip(group.sites, group.keys, group.readers, strict=True))
        if group.phase == "experts":

            def on_experts(mod: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
                for site, key, read_value in entries:
                    self._store(key, site, read_value((args, kwargs, output, mod), self._batch()))

            self._hooks.forward(group.module, on_experts, with_kwargs=True)
        elif group.phase == "in":

            def on_input(mod: nn.Module, args: Any, kwargs: Any) -> None:
                for site, key, read_value in entries:
                    self._store(key, site, read_value((args, kwargs), 0))

            self._hooks.pre(group.module, on_input, with_kwargs=True)
        elif self._as_is and not self._tracked:
            pairs = tuple(zip(group.keys, group.readers, strict=True))
            # one site into a sink: a pass is complete when its one hook fires, so it goes to the sink at once
            (only_key, only_reader) = pairs[0]
            at_once = self.sink if len(self.cache.sites) == 1 else None

            def on_output_as_is(mod: nn.Module, args: Any, output: Any) -> None:
                # The common case (residual-type sites, every position, no conversion), spelled out
                # because it runs on every hooked layer of every pass.
                if at_once is not None and self._window is None:
                    at_once({only_key: _own_copy(only_reader(output, 0))}, NO_LAYOUT)
                    return
                current = self._current
                for key, read_value in pairs:
                    if key in current:  # this site fired again: the previous pass is over
                        self._flush()
                        current = self._current
                    if not current:
                        self._pass_generation = self.tracker.generation
                    current[key] = _own_copy(read_value(output, 0))

            self._hooks.forward(group.module, on_output_as_is)
        else:
            needs_batch = any(POINTS[s.kind].part == "router" for s in group.sites)

            def on_output(mod: nn.Module, args: Any, output: Any) -> None:
                batch = self._batch() if needs_batch else 0
                for site, key, read_value in entries:
                    self._store(key, site, read_value(output, batch))

            self._hooks.forward(group.module, on_output)

    def _batch(self) -> int:
        return self.tracker.info.batch if self.tracker.in_pass else 1

    def _store(self, key: str, site: Site, value: Tensor) -> None:
        if not self._tracked:
            if key in self._current:
                self._flush()  # this site fired again: the previous pass is over
            if not self._current:
                self._pass_generation = self.tracker.generation
        if self._as_is:  # the common case, kept short: a detached copy the model cannot write into
            self._current[key] = value.detach().clone()
            return
        if self.keep_grad:  # the live tensor, part of the autograd graph (for gradient-based analyses)
            self._current[key] = value
            return
        original = value
        if not self._all_positions:
            axis = 2 if site.kind == "attn_pattern" and site.index is None else 1
            value = select(value, self.positions, self.tracker.info, axis)
        value = value.detach()
        if self.dtype is not None:
            value = value.to(self.dtype)
        if self.device is not None:
            value = value.to(self.device)
        if value.data_ptr() == original.data_ptr():
            value = value.clone()  # never keep a view the model might still write into
        self._current[key] = value

    def _flush(self) -> None:
        """Close the open pass of an untracked capture (its KV offset comes from ``lm.generate``'s count)."""
        if not self._current:
            return
        generation = self._pass_generation
        continues = generation >= 0 and generation == self._last_generation
        self._last_generation = generation
        self._finish(CONTINUATION if continues else 0)

    def end_pass(self, tracker: PassTracker) -> None:
        """Check every site fired in the pass that just ended, then keep or sink its values."""
        self._finish(tracker.offset)

    def _finish(self, offset: int) -> None:
        values, self._current = self._current, {}
        if len(values) != len(self.cache.sites):
            missing = [key for key in self.cache.sites if key not in values]
            raise HookNotFiredError(
                f"the hook for {', '.join(missing)} did not run in this forward pass of "
                f"{self.arch.family}; the architecture map names a module the model did not call "
                "(run `mechscope doctor`)"
            )
        if self._window is not None:
            rows = self.tracker.rows
            if rows is None:
                raise RuntimeError("a reordering window is open but the pass has no row indices")
            self._window.append((values, rows))
        elif self.sink is not None:
            self.sink(values, self.tracker.info if self._tracked else NO_LAYOUT)
        else:
            self.cache.add_pass(values, offset)

    def begin_window(self) -> None:
        """Hold the passes that follow until `end_window` (prompts run out of the caller's order)."""
        if not self.rows_align:
            raise RuntimeError("this capture keeps a position axis; its passes cannot be reordered")
        self._window = []

    def end_window(self) -> None:
        """Hand the held passes on as one, with rows back in the caller's order."""
        held, self._window = self._window or [], None
        if not held:
            return
        rows = torch.cat([r for _, r in held])
        order = rows.argsort()
        values = {key: torch.cat([v[key] for v, _ in held])[order.to(held[0][0][key].device)] for key in held[0][0]}
        if self.sink is not None:
            mask = torch.ones(len(rows), 1, dtype=torch.long)
            self.sink(values, PassInfo(mask=mask, length=1, rows=rows[order]))
        else:
            self.cache.add_pass(values, 0)


def _one_row_per_prompt(positions: Positions) -> bool:
    if isinstance(positions, str):
        return positions in ("last", "mean")
    return isinstance(positions, int)


def _describe(positions: Positions) -> str:
    if isinstance(positions, str):
        return positions
    if isinstance(positions, Tensor):
        return f"tensor{tuple(positions.shape)}"
    return repr(positions)
