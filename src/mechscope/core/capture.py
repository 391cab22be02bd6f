"""Capturing activations at sites: the engine behind ``LanguageModel.capture``."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

import torch
from torch import Tensor, nn

from mechscope.core.cache import Cache
from mechscope.core.hooks import HookSet, PassTracker
from mechscope.core.points import POINTS, module_for, read
from mechscope.core.positions import PassInfo, Positions, check_positions, select
from mechscope.core.sites import Site
from mechscope.errors import HookNotFiredError
from mechscope.models.archmap import ModelMap

#: ``sink(values, info)`` receives each pass's activations instead of the cache keeping them.
Sink = Callable[[dict[str, Tensor], PassInfo], None]


def group_by_hook(sites: Iterable[Site], arch: ModelMap) -> list[tuple[nn.Module, list[Site]]]:
    """Sites that share a module and phase, with that module, so that each module gets one hook."""
    groups: dict[tuple[int, str], tuple[nn.Module, list[Site]]] = {}
    for site in sites:
        module = module_for(site, arch)
        phase = "experts" if site.kind == "expert_out" else POINTS[site.kind].phase
        groups.setdefault((id(module), phase), (module, []))[1].append(site)
    return list(groups.values())


class Capture:
    """Context manager that hooks the sites, fills a `Cache` (or feeds a sink) and unhooks on exit.

    Hooks are removed in ``__exit__`` whether or not the body raised. If a forward pass ends without a
    site's hook having run, `HookNotFiredError` is raised instead of leaving that site silently empty.
    """

    def __init__(
        self,
        arch: ModelMap,
        tracker: PassTracker,
        sites: list[Site],
        *,
        positions: Positions = "all",
        to: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        sink: Sink | None = None,
    ) -> None:
        self.arch = arch
        self.tracker = tracker
        self.sites = sites
        self.positions = check_positions(positions)
        self.device = torch.device(to) if to is not None else None
        self.dtype = dtype
        self.sink = sink
        self.cache = Cache(sites=[str(s) for s in sites], positions=_describe(positions))
        self._all_positions = isinstance(positions, str) and positions == "all"
        self._as_is = self._all_positions and dtype is None and to is None
        self.needs_layout = not self._all_positions or any(POINTS[s.kind].part in ("router", "experts") for s in sites)
        self._hooks = HookSet()
        self._current: dict[str, Tensor] = {}
        self._restore_attn: str | None = None

    def __enter__(self) -> Cache:
        try:
            self._use_eager_if_patterns()
            for module, sites in group_by_hook(self.sites, self.arch):
                self._register(module, sites)
            self.tracker.attach(self)
        except BaseException:
            self._close()
            raise
        return self.cache

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._close()

    def _close(self) -> None:
        self._hooks.close()
        self.tracker.detach(self)
        if self._restore_attn is not None:
            self.arch.model.set_attn_implementation(self._restore_attn)  # type: ignore[operator]
            self._restore_attn = None
        self._current = {}

    def _use_eager_if_patterns(self) -> None:
        """Attention weights exist only in eager attention: switch to it while this capture is open."""
        if not any(s.kind == "attn_pattern" for s in self.sites):
            return
        current = getattr(getattr(self.arch.model, "config", None), "_attn_implementation", None)
        if current not in (None, "eager"):
            self.arch.model.set_attn_implementation("eager")  # type: ignore[operator]
            self._restore_attn = current

    def _register(self, module: nn.Module, sites: list[Site]) -> None:
        keys = [str(s) for s in sites]
        if sites[0].kind == "expert_out":

            def on_experts(mod: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
                for site, key in zip(sites, keys, strict=True):
                    self._store(key, site, read(site, self.arch, (args, kwargs, output, mod), self._batch()))

            self._hooks.forward(module, on_experts, with_kwargs=True)
        elif POINTS[sites[0].kind].phase == "in":

            def on_input(mod: nn.Module, args: Any, kwargs: Any) -> None:
                for site, key in zip(sites, keys, strict=True):
                    self._store(key, site, read(site, self.arch, (args, kwargs), 0))

            self._hooks.pre(module, on_input, with_kwargs=True)
        else:
            needs_batch = POINTS[sites[0].kind].part == "router"

            def on_output(mod: nn.Module, args: Any, output: Any) -> None:
                batch = self._batch() if needs_batch else 0
                for site, key in zip(sites, keys, strict=True):
                    self._store(key, site, read(site, self.arch, output, batch))

            self._hooks.forward(module, on_output)

    def _batch(self) -> int:
        return self.tracker.info.batch if self.tracker.in_pass else 1

    def _store(self, key: str, site: Site, value: Tensor) -> None:
        if self._as_is:  # the common case, kept short: a detached copy the model cannot write into
            self._current[key] = value.detach().clone()
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

    def end_pass(self, tracker: PassTracker) -> None:
        """Check every site fired in the pass that just ended, then keep or sink its values."""
        values, self._current = self._current, {}
        missing = [key for key in self.cache.sites if key not in values]
        if missing:
            raise HookNotFiredError(
                f"the hook for {', '.join(missing)} did not run in this forward pass of "
                f"{self.arch.family}; the architecture map names a module the model did not call "
                "(run `mechscope doctor`)"
            )
        if self.sink is not None:
            self.sink(values, tracker.info)
        else:
            self.cache.add_pass(values, tracker.offset)


def _describe(positions: Positions) -> str:
    if isinstance(positions, str):
        return positions
    if isinstance(positions, Tensor):
        return f"tensor{tuple(positions.shape)}"
    return repr(positions)
