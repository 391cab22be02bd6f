"""Token positions: which columns of a padded batch a capture reads or an intervention writes.

Positions are given in each prompt's own coordinates, so padding never shifts them: ``0`` is every
prompt's first real token and ``-1`` its last, whether the batch is padded on the left or the right.

Accepted forms (`Positions`):

* ``"all"`` — every column, padding included (shape keeps the ``pos`` axis);
* ``"last"`` — each prompt's last real token in this pass (during generation: the newest token);
* ``"mean"`` — the masked mean over real tokens (capture only);
* an ``int`` — one own-coordinate position per prompt (negative counts from the end);
* a list of ints or a ``slice`` — several positions, the same for every prompt;
* a tensor ``[batch]`` or ``[batch, k]`` — explicit own-coordinate positions per prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import torch
from torch import Tensor

from mechscope.errors import PositionError

Positions: TypeAlias = str | int | slice | Sequence[int] | Tensor

_NAMED = ("all", "last", "mean")


def check_positions(positions: Positions, *, allow_mean: bool = True) -> Positions:
    """Validate the form of ``positions`` early, before any forward pass runs.

    Examples:
        >>> check_positions("last"), check_positions([0, -1])  # valid forms come back unchanged
        ('last', [0, -1])
        >>> check_positions("mean", allow_mean=False)  # an intervention cannot write to a mean
        Traceback (most recent call last):
        ...
        mechscope.errors.PositionError: unknown positions 'mean'; use all, last, ints or a tensor
    """
    if isinstance(positions, str):
        allowed = _NAMED if allow_mean else ("all", "last")
        if positions not in allowed:
            raise PositionError(f"unknown positions '{positions}'; use {', '.join(allowed)}, ints or a tensor")
    elif isinstance(positions, Tensor):
        if positions.dim() not in (1, 2) or positions.is_floating_point():
            raise PositionError("a positions tensor must hold integers, shaped [batch] or [batch, k]")
    elif isinstance(positions, int | slice):
        pass
    elif not isinstance(positions, Sequence) or not all(isinstance(p, int) for p in positions):
        raise PositionError(
            f"positions {positions!r} are not usable; use all, last, mean, an int, a slice, a list of ints or a tensor"
        )
    return positions


@dataclass
class PassInfo:
    """The padding layout of one forward pass, from its attention mask.

    ``mask`` covers the whole sequence so far (past tokens of a KV cache included); the pass itself
    covers its last ``length`` columns. A capture's ``sink`` gets one with each pass.

    Examples:
        >>> import torch, mechscope as ms
        >>> info = PassInfo(mask=torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]]), length=4)  # row 0 left-padded
        >>> info.batch, info.offset, info.current_mask().tolist()
        (2, 0, [[False, False, True, True], [True, True, True, True]])
        >>> lm, passes = ms.load("toy"), []
        >>> with lm.capture(["resid_post.0"], sink=lambda values, info: passes.append((info.offset, info.length))):
        ...     _ = lm.generate("The capital of France is", max_new_tokens=2)
        >>> passes  # the prompt pass (7 tokens), then one token on top of the 7 in the KV cache
        [(0, 7), (7, 1)]
    """

    mask: Tensor  # [batch, offset + length], 1 for real tokens
    length: int
    #: The caller's index of each row, when `LanguageModel.forward_batches` runs the pass (else None).
    rows: Tensor | None = None
    _memo: dict[str, Tensor] = field(default_factory=dict, repr=False)

    @classmethod
    def from_forward(
        cls,
        kwargs: dict[str, Any],
        args: tuple[Any, ...],
        *,
        past: int | None = None,
        prompt_mask: Tensor | None = None,
    ) -> PassInfo:
        """Read the layout from the keyword arguments of a model's top-level forward.

        Args:
            kwargs, args: what the top module was called with.
            past: tokens already in the KV cache when the pass began (read before the layers run, since
                the cache grows during the pass); measured from ``kwargs`` when not given.
            prompt_mask: the padding mask of the prompts being generated from, for forwards that get no
                ``attention_mask`` (transformers 5's ``generate`` passes none).
        """
        ids = kwargs.get("input_ids")
        if ids is None and args and isinstance(args[0], Tensor):
            ids = args[0]
        embeds = kwargs.get("inputs_embeds")
        reference = ids if ids is not None else embeds
        if reference is None:
            raise PositionError("cannot tell the batch layout: the forward got neither input_ids nor inputs_embeds")
        batch, length = reference.shape[0], reference.shape[1]
        mask = kwargs.get("attention_mask")
        if not isinstance(mask, Tensor) or mask.dim() != 2:
            past = past_length(kwargs) if past is None else past
            total = past + length
            mask = torch.ones(batch, total, dtype=torch.long, device=reference.device)
            if prompt_mask is not None and prompt_mask.shape[0] == batch and prompt_mask.shape[1] <= total:
                mask[:, : prompt_mask.shape[1]] = prompt_mask.to(mask.device)
        return cls(mask=mask, length=length)

    @property
    def offset(self) -> int:
        """How many columns earlier passes (the KV cache) hold."""
        return int(self.mask.shape[1]) - self.length

    @property
    def batch(self) -> int:
        return int(self.mask.shape[0])

    def _get(self, key: str) -> Tensor:
        if key not in self._memo:
            mask = self.mask.bool()
            if key == "current":
                value = mask[:, self.offset :]
            elif key == "start":
                value = mask.int().argmax(dim=1)  # first real column (left padding count)
            elif key == "lengths":
                value = mask.sum(dim=1)
            else:  # "last": the last real column of this pass
                current = self._get("current")
                cols = torch.arange(self.length, device=mask.device).expand_as(current)
                value = torch.where(current, cols, -1).amax(dim=1)
                if bool((value < 0).any()):
                    raise PositionError("a prompt has no real token in this pass; remove empty prompts")
            self._memo[key] = value
        return self._memo[key]

    def current_mask(self) -> Tensor:
        """``[batch, length]`` bool: which columns of this pass are real tokens."""
        return self._get("current")

    def own_to_columns(self, own: Tensor) -> Tensor:
        """Map own-coordinate positions ``[batch, k]`` to columns of this pass, checking range."""
        lengths = self._get("lengths").unsqueeze(1)
        own = torch.where(own < 0, own + lengths, own)
        if bool(((own < 0) | (own >= lengths)).any()):
            bad = int((own < 0).logical_or(own >= lengths).nonzero()[0, 0])
            raise PositionError(
                f"a position is outside prompt {bad}, which has {int(lengths[bad, 0])} tokens; "
                "positions count from each prompt's first real token"
            )
        cols = own + self._get("start").unsqueeze(1) - self.offset
        return cols

    def explicit_columns(self, positions: Positions) -> Tensor:
        """Columns ``[batch, k]`` of this pass for int / list / slice / tensor positions."""
        device = self.mask.device
        if isinstance(positions, Tensor):
            own = positions.to(device)
            own = own.unsqueeze(1) if own.dim() == 1 else own
            if own.shape[0] != self.batch:
                raise PositionError(f"positions tensor has {own.shape[0]} rows for a batch of {self.batch}")
        elif isinstance(positions, int):
            own = torch.full((self.batch, 1), positions, device=device)
        elif isinstance(positions, slice):
            lengths = self._get("lengths").tolist()
            ranges = [range(n)[positions] for n in lengths]
            if len({len(r) for r in ranges}) != 1:
                raise PositionError("a slice selects different numbers of tokens in prompts of unequal length")
            own = torch.tensor([list(r) for r in ranges], device=device, dtype=torch.long)
        else:
            own = torch.tensor([list(positions)] * self.batch, device=device, dtype=torch.long)
        return self.own_to_columns(own.long())

    def columns(self, positions: Positions) -> Tensor | None:
        """A ``[batch, length]`` bool mask of the columns ``positions`` names; None means all."""
        if isinstance(positions, str):
            if positions == "all":
                return None
            if positions == "mean":
                raise PositionError("positions='mean' pools a capture; it cannot select columns to change")
            selected = torch.zeros(self.batch, self.length, dtype=torch.bool, device=self.mask.device)
            selected[torch.arange(self.batch, device=self.mask.device), self._get("last")] = True
            return selected
        cols = self.explicit_columns(positions)
        selected = torch.zeros(self.batch, self.length, dtype=torch.bool, device=self.mask.device)
        inside = (cols >= 0) & (cols < self.length)
        rows = torch.arange(self.batch, device=cols.device).unsqueeze(1).expand_as(cols)
        selected[rows[inside], cols[inside]] = True
        return selected


def past_length(kwargs: dict[str, Any]) -> int:
    """How many tokens the KV cache passed to a forward already holds (from its keyword arguments).

    Examples:
        >>> import torch
        >>> step = {"input_ids": torch.tensor([[5]]), "attention_mask": torch.ones(1, 8)}  # 1 new token of 8
        >>> past_length(step), past_length({"input_ids": torch.tensor([[5, 6, 7]])})  # no cache: nothing past
        (7, 0)
    """
    mask = kwargs.get("attention_mask")
    ids = kwargs.get("input_ids")
    if ids is None:
        ids = kwargs.get("inputs_embeds")
    if isinstance(mask, Tensor) and mask.dim() == 2 and isinstance(ids, Tensor):
        return int(mask.shape[1]) - int(ids.shape[1])
    return _cache_length(kwargs)


def _cache_length(kwargs: dict[str, Any]) -> int:
    # transformers 5.24 passes the KV cache to the model as ``cache``; earlier releases as ``past_key_values``.
    for key in ("past_key_values", "cache"):
        past = kwargs.get(key)
        if past is not None and hasattr(past, "get_seq_length"):
            return int(past.get_seq_length())
    return 0


def select(tensor: Tensor, positions: Positions, info: PassInfo, axis: int = 1) -> Tensor:
    """Read ``positions`` out of ``tensor`` along its position ``axis``.

    ``"last"`` and int positions drop the axis; lists, slices and ``[batch, k]`` tensors keep it with
    length ``k``; ``"mean"`` averages real tokens (in float32, cast back).

    Examples:
        >>> import torch
        >>> info = PassInfo(mask=torch.tensor([[0, 1, 1], [1, 1, 1]]), length=3)  # row 0 is left-padded
        >>> values = torch.tensor([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]])  # [batch, pos]
        >>> select(values, 0, info), select(values, "last", info)  # each prompt's own first / last token
        (tensor([1., 3.]), tensor([2., 5.]))
        >>> select(values, [0, -1], info), select(values, "mean", info)  # padding is left out of the mean
        (tensor([[1., 2.],
                [3., 5.]]), tensor([1.5000, 4.0000]))
    """
    if isinstance(positions, str) and positions == "all":
        return tensor
    moved = tensor.movedim(axis, 1)
    if isinstance(positions, str) and positions == "mean":
        mask = info.current_mask().to(device=tensor.device, dtype=torch.float32)  # device_map: layers elsewhere
        mask = mask.reshape(*mask.shape, *([1] * (moved.dim() - 2)))
        pooled = (moved.float() * mask).sum(1) / mask.sum(1).clamp(min=1)
        return pooled.to(tensor.dtype)
    rows = torch.arange(info.batch, device=tensor.device)
    if isinstance(positions, str):  # "last"
        picked = moved[rows, info._get("last").to(tensor.device)]
        return picked
    cols = info.explicit_columns(positions)  # checked where the pass's layout lives, then moved
    if bool(((cols < 0) | (cols >= info.length)).any()):
        raise PositionError("a requested position is not in this forward pass (it is in the KV cache)")
    cols = cols.to(tensor.device)
    picked = moved[rows.unsqueeze(1), cols]  # [batch, k, ...]
    single = isinstance(positions, int) or (isinstance(positions, Tensor) and positions.dim() == 1)
    if single:
        return picked[:, 0]
    return picked.movedim(1, axis) if axis != 1 else picked
