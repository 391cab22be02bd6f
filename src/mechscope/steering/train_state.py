"""The trainer's pieces that are not the loop: freezing the model, the add op, schedules, resumable state."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mechscope.core.lm import LanguageModel, execution_device
from mechscope.core.ops import OpContext
from mechscope.errors import InputError
from mechscope.steering.train_data import TrainData
from mechscope.steering.train_results import EpochRecord, TrainResult
from mechscope.steering.vector import SteeringVector, checkpoint_config
from mechscope.storage.atomic import atomic_write_text
from mechscope.storage.tensors import load_tensors, save_tensors

STATE_TENSORS = "state.safetensors"
STATE_JSON = "state.json"


@dataclass(frozen=True)
class AddVector:
    """``x + mask * vector`` (an op for `LanguageModel.intervene`; differentiable in ``vector``)."""

    vector: Tensor
    mask: Tensor | None = None  # [batch, pos, 1] floats; None adds at every position
    positions: str = "all"

    def apply(self, x: Tensor, ctx: OpContext) -> Tensor:
        """``x`` plus the vector, at the masked positions only when the op has a mask."""
        # A device_map model computes late layers elsewhere than the batch (and its mask) lives.
        vector = self.vector.to(device=x.device, dtype=x.dtype)
        if self.mask is None:
            return x + vector
        return x + self.mask[:, : x.shape[1]].to(device=x.device, dtype=x.dtype) * vector


@contextmanager
def frozen(lm: LanguageModel, *, checkpointing: bool) -> Iterator[None]:
    """The model in eval mode with no parameter requiring grad; flags and modes restored on exit.

    With ``checkpointing``, gradient checkpointing is switched on (``use_reentrant=False``) and each
    checkpointing layer (only that module, not its children: dropout stays off) marked as training, since
    transformers checkpoints only in training mode.
    """
    model = lm.model
    flags = [(p, p.requires_grad) for p in model.parameters()]
    modes = [(m, m.training) for m in model.modules()]
    probe = "is_activation_checkpointing"
    if not hasattr(model, probe):
        probe = "is_gradient_checkpointing"
    was_checkpointing = bool(getattr(model, probe, False))
    try:
        model.eval()
        for parameter, _ in flags:
            parameter.requires_grad_(False)
        if checkpointing:
            _enable_checkpointing(lm)
        yield
    finally:
        if checkpointing and not was_checkpointing:
            name = "activation_checkpointing_disable"
            getattr(model, name if hasattr(model, name) else "gradient_checkpointing_disable")()
        for module, mode in modes:
            module.training = mode
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


def _enable_checkpointing(lm: LanguageModel) -> None:
    """Non-reentrant checkpointing on ``lm``'s layers, without the input-embedding grad hook transformers adds.

    The vector requires grad, so the graph starts at its layer; making the embeddings require grad as well
    would only backpropagate through the layers below it for nothing.
    """
    model = lm.model
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise InputError(f"{lm.arch.family} does not support gradient checkpointing; drop the flag")
    had_hook = hasattr(model, "_require_grads_hook")
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})  # type: ignore[operator]
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})  # type: ignore[operator]
    if not had_hook and hasattr(model, "_require_grads_hook"):
        model.disable_input_require_grads()  # type: ignore[operator]
    for module in model.modules():
        if getattr(module, "gradient_checkpointing", False) is True:
            module.training = True  # the layer module only: its dropout children stay in eval mode


def lr_factor(step: int, total: int, warmup: float, schedule: str) -> float:
    """The multiplier of the peak LR at optimizer step ``step`` (0-based) of ``total``: linear warm-up, then
    constant or cosine decay to zero.

    >>> [round(lr_factor(s, 10, 0.2, "cosine"), 3) for s in (0, 1, 2, 6, 9)]
    [0.5, 1.0, 1.0, 0.5, 0.038]
    """
    warm = math.ceil(warmup * total)
    if step < warm:
        return (step + 1) / warm
    if schedule == "constant":
        return 1.0
    span = max(1, total - warm)
    return 0.5 * (1.0 + math.cos(math.pi * (step - warm) / span))


def layer_device(lm: LanguageModel, layer: int) -> torch.device:
    """Where layer ``layer`` computes (for ``device_map`` models the vector goes there, not to offloaded weights)."""
    return execution_device(lm.arch.layer(layer)) or lm.device


def save_state(
    folder: Path,
    *,
    vector: Tensor,
    best: Tensor,
    optimizer: torch.optim.Optimizer,
    scaler_state: dict[str, Any] | None,
    info: dict[str, Any],
) -> None:
    """Write what resuming needs (vector, best vector, AdamW moments, RNG; never model weights), atomically."""
    state = optimizer.state_dict()["state"].get(0, {})
    tensors = {"vector": vector.detach(), "best_vector": best.detach(), "rng_torch": torch.get_rng_state()}
    for key in ("exp_avg", "exp_avg_sq"):
        if key in state:
            tensors[key] = state[key]
    step = state.get("step")
    info = {**info, "adam_step": float(step) if step is not None else None, "scaler": scaler_state}
    save_tensors(folder / STATE_TENSORS, tensors, kind="steering_train_state")
    atomic_write_text(folder / STATE_JSON, json.dumps(info, indent=1, sort_keys=True) + "\n")


def load_state(folder: Path) -> tuple[dict[str, Tensor], dict[str, Any]] | None:
    """The tensors and JSON of a resumable state in ``folder``, or None when there is none."""
    if not (folder / STATE_JSON).is_file() or not (folder / STATE_TENSORS).is_file():
        return None
    try:
        info = json.loads((folder / STATE_JSON).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InputError(f"'{folder / STATE_JSON}' is damaged; delete the run folder and start again") from None
    return load_tensors(folder / STATE_TENSORS, kind="steering_train_state").tensors, info


def restore_optimizer(optimizer: torch.optim.Optimizer, param: Tensor, tensors: dict[str, Tensor], step: float) -> None:
    """Put saved AdamW moments back into ``optimizer`` (whose only parameter is ``param``)."""
    if "exp_avg" not in tensors:
        return
    state = optimizer.state_dict()
    state["state"] = {
        0: {
            "step": torch.tensor(step),
            "exp_avg": tensors["exp_avg"].to(param.device),
            "exp_avg_sq": tensors["exp_avg_sq"].to(param.device),
        }
    }
    optimizer.load_state_dict(state)


def differing(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The training arguments whose values differ between a stored run and this call."""
    return sorted(key for key in set(stored) | set(current) if stored.get(key) != current.get(key))


def ppl(loss: float | None) -> float | None:
    """``exp(loss)``, capped against overflow; None for no loss."""
    return None if loss is None else float(math.exp(min(loss, 700.0)))


class RunLog:
    """``log.jsonl``: per-step loss and per-epoch validation lines; on resume, lines of later epochs dropped."""

    def __init__(self, folder: Path | None, start: int) -> None:
        self.path = None if folder is None else folder / "log.jsonl"
        if self.path is None:
            return
        folder.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
        kept = []
        if start > 1 and self.path.is_file():
            kept = [
                line for line in self.path.read_text(encoding="utf-8").splitlines() if json.loads(line)["epoch"] < start
            ]
        self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def write(self, row: dict[str, Any]) -> None:
        """Append one JSON line (nothing when the log has no file)."""
        if self.path is not None:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")


def run_result(
    lm: LanguageModel,
    layer: int,
    folder: Path | None,
    args: dict[str, Any],
    data: TrainData,
    history: list[EpochRecord],
    best: Tensor,
    best_epoch: int,
    stopped: bool,
    baselines: tuple[float | None, float | None] | None,
    *,
    final: bool,
) -> TrainResult:
    """The `TrainResult` of a run: settings, data statistics, history, best epoch and the baselines' perplexities."""
    vanilla, prompted = baselines or (None, None)
    best_record = next((r for r in history if r.epoch == best_epoch), None)
    return TrainResult(
        out=None if folder is None else str(folder),
        model=lm.source,
        layer=layer,
        site="resid_post",
        positions=args["positions"],
        lr=args["lr"],
        epochs_run=len(history),
        best_epoch=best_epoch,
        stopped_early=stopped,
        norm=float(best.float().norm()),
        vanilla_ppl=ppl(vanilla),
        prompted_ppl=ppl(prompted),
        steered_ppl=None if final or best_record is None else best_record.val_ppl,
        data=data.stats,
        history=list(history),
    )


def steering_vector(
    lm: LanguageModel, layer: int, args: dict[str, Any], data: TrainData, result: TrainResult, best: Tensor
) -> SteeringVector:
    """The `SteeringVector` checkpoint of ``best``: its config records the training settings, data hash and metrics."""
    config = checkpoint_config(lm, layer, positions=args["positions"])
    config.update({"training": copy.deepcopy(args), "data_hash": data.data_hash, "metrics": result.metrics()})
    if result.out is not None:
        config["run_dir"] = result.out
    return SteeringVector(best.detach().float().cpu().clone(), layer, "resid_post", config)


def write_checkpoint(
    lm: LanguageModel,
    folder: Path,
    layer: int,
    args: dict[str, Any],
    data: TrainData,
    result: TrainResult,
    best: Tensor,
) -> None:
    """Save ``best`` as a `SteeringVector` checkpoint in ``folder``."""
    steering_vector(lm, layer, args, data, result, best).save(folder)
