"""Changing activations at sites during forward passes: the engine behind ``LanguageModel.intervene``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

import torch
from torch import Tensor, nn

from mechscope.core.capture import plan_hooks
from mechscope.core.hooks import HookSet, PassTracker
from mechscope.core.ops import Op, OpContext, Patch
from mechscope.core.points import POINTS, ExpertCall, expert_output, read, write
from mechscope.core.sites import Site, expand_sites
from mechscope.errors import InterventionError
from mechscope.models.archmap import ModelMap

OpSpec = Op | Sequence[Op]


def plan(arch: ModelMap, spec: Mapping[str | Site, OpSpec]) -> dict[Site, list[Op]]:
    """Expand site patterns and check that every site can be written and every op is an op."""
    result: dict[Site, list[Op]] = {}
    for pattern, ops in spec.items():
        op_list = [ops] if isinstance(ops, Op) else list(ops)
        for op in op_list:
            if not isinstance(op, Op):
                raise InterventionError(f"{op!r} is not an op; build one with mechscope.ops.add/zero/...")
        for site in expand_sites([pattern], arch):
            if not site.spec.writable:
                raise InterventionError(
                    f"{site} is read-only: the model computes its outputs from values this hook cannot "
                    "change; intervene on head_out, attn_out, mlp_out or the residual instead"
                )
            result.setdefault(site, []).extend(op_list)
    return result


class Intervention:
    """Context manager that applies ops at sites on every forward pass (``forward`` and ``generate``).

    Hooks are removed on exit, also when the body raises.
    """

    def __init__(self, arch: ModelMap, tracker: PassTracker, ops: dict[Site, list[Op]]) -> None:
        self.arch = arch
        self.tracker = tracker
        self.ops = ops
        self._hooks = HookSet()
        self.needs_layout = any(site.kind == "expert_out" for site in ops) or any(
            not (isinstance(op.positions, str) and op.positions == "all")
            or isinstance(op, Patch)
            or bool(getattr(op, "needs_layout", False))  # custom ops that read ctx.info declare it
            for site_ops in ops.values()
            for op in site_ops
        )

    def __enter__(self) -> Intervention:
        try:
            for group in plan_hooks(self.ops, self.arch):
                self._register(group.module, list(group.sites))
            self.tracker.attach(self)
        except BaseException:
            self._close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._close()

    def _close(self) -> None:
        self._hooks.close()
        self.tracker.detach(self)

    def end_pass(self, tracker: PassTracker) -> None:
        """Nothing to do when a pass ends; interventions act inside it."""

    def _register(self, module: nn.Module, sites: list[Site]) -> None:
        if sites[0].kind == "expert_out":

            def on_experts(mod: nn.Module, args: Any, kwargs: Any, output: Tensor) -> Tensor:
                for site in sites:
                    output = self._apply_expert(site, (args, kwargs, output, mod))
                return output

            self._hooks.forward(module, on_experts, with_kwargs=True)
        elif POINTS[sites[0].kind].phase == "in":

            def on_input(mod: nn.Module, args: Any, kwargs: Any) -> Any:
                payload = (args, kwargs)
                for site in sites:
                    payload = write(site, self.arch, payload, self._apply(site, read(site, self.arch, payload, 0)))
                return payload

            self._hooks.pre(module, on_input, with_kwargs=True)
        else:

            def on_output(mod: nn.Module, args: Any, output: Any) -> Any:
                for site in sites:
                    output = write(site, self.arch, output, self._apply(site, read(site, self.arch, output, 0)))
                return output

            self._hooks.forward(module, on_output)

    def _apply(self, site: Site, value: Tensor) -> Tensor:
        """Run ``site``'s ops in order, each written only at its positions."""
        ctx = OpContext(str(site), self.tracker)
        for op in self.ops[site]:
            new = op.apply(value, ctx)
            if isinstance(op.positions, str) and op.positions == "all":
                value = new
                continue
            columns = self.tracker.info.columns(op.positions)
            if columns is not None:
                selector = columns.reshape(*columns.shape, *([1] * (value.dim() - 2))).to(value.device)
                new = torch.where(selector, new, value)
            value = new
        return value

    def _apply_expert(self, site: Site, payload: tuple[Any, Any, Tensor, nn.Module]) -> Tensor:
        """Change one expert's output where it is used: out += weight × (op(expert) − expert)."""
        assert site.index is not None
        output = payload[2]
        batch = self.tracker.info.batch
        before = expert_output(site, payload, batch)
        after = self._apply(site, before)
        weight = ExpertCall.from_payload(payload).weight_of(site.index).to(output.dtype)
        delta = (after - before).reshape(output.shape) * weight.unsqueeze(-1)
        return output + delta
