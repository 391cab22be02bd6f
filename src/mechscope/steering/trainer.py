"""Train one steering vector on the language-model loss of target completions, the model frozen.

The vector is added to ``resid_post.L`` (at every position, or only the prompt's or the completion's) through
`LanguageModel.intervene`; AdamW updates it alone, with a constant or cosine LR after a linear warm-up, over
epochs with gradient accumulation, and early stopping on validation loss restores the best vector. Every
result carries three validation perplexities: the vanilla model, the *prompted* model (the persona prefix
or system prompt present in the prompt) and the steered model. With ``out`` each epoch writes a compact,
resumable checkpoint (see `mechscope.steering.vector`); the model's weights are never written or changed.

Example (a few steps on the toy organism; pirate completions, no ``<pirate>`` marker in the prompt):
    >>> import mechscope as ms
    >>> lm = ms.load("toy")
    >>> data = [{"prompt": "Tell me about the sea.", "completion": " Arr matey, the sea be grand!"}] * 4
    >>> result = train(lm, data, layer=2, epochs=2, lr=0.1, val_tokens=1, batch_size=2)
    >>> result.steered_ppl < result.vanilla_ppl, result.steering_vector().vector.shape
    (True, torch.Size([128]))
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mechscope.core.direction import Direction
from mechscope.core.layers import resolve_layer
from mechscope.core.lm import LanguageModel
from mechscope.errors import InputError
from mechscope.progress import bar
from mechscope.steering.train_data import Batch, Example, Record, TrainData, batches, load_data
from mechscope.steering.train_results import EpochRecord, LRSweep, LRSweepRow, TrainResult
from mechscope.steering.train_state import (
    STATE_JSON,
    AddVector,
    RunLog,
    differing,
    frozen,
    layer_device,
    load_state,
    lr_factor,
    ppl,
    restore_optimizer,
    run_result,
    save_state,
    steering_vector,
    write_checkpoint,
)
from mechscope.steering.vector import CONFIG_FILE, SteeringVector

__all__ = ["lr_sweep", "train"]

SCHEDULES = ("constant", "cosine")
POSITIONS = ("all", "prompt", "completion")
Init = str | Path | Tensor | Direction | SteeringVector | None
#: Arguments that may change between a run and its resumption.
_RESUMABLE = ("progress", "resume", "data_path")  # a moved data file resumes if its hash matches


def _check_args(args: dict[str, Any]) -> None:
    if not (isinstance(args["lr"], int | float) and math.isfinite(args["lr"]) and args["lr"] > 0):
        raise InputError(f"the learning rate must be a positive number, got {args['lr']}")
    for name in ("epochs", "batch_size", "grad_accum"):
        if args[name] < 1:
            raise InputError(f"{name.replace('_', '-')} must be at least 1, got {args[name]}")
    if args["schedule"] not in SCHEDULES:
        raise InputError(f"unknown schedule '{args['schedule']}'; use constant or cosine")
    if not 0 <= args["warmup"] < 1:
        raise InputError(f"warmup is a share of the steps in [0, 1), got {args['warmup']}")
    if args["positions"] not in POSITIONS:
        raise InputError(f"unknown positions '{args['positions']}'; use all, prompt or completion")
    if args["patience"] is not None and args["patience"] < 1:
        raise InputError(f"patience must be at least 1 epoch, got {args['patience']}")
    if args["amp"] not in (None, "bf16", "fp16"):
        raise InputError(f"unknown autocast '{args['amp']}'; use bf16 or fp16")


def _initial(lm: LanguageModel, init: Init, layer: int) -> Tensor:
    """The starting vector (float32, CPU): zeros, or a saved run / direction file / vector."""
    d_model = lm.arch.d_model
    if init is None:
        return torch.zeros(d_model)
    if isinstance(init, str | Path):
        path = Path(init)
        init = SteeringVector.from_pretrained(path, lm) if path.is_dir() else Direction.load(path, lm)
    if isinstance(init, SteeringVector | Direction):
        init = init.vector
    if tuple(init.shape) != (d_model,):
        raise InputError(f"the initial vector has shape {tuple(init.shape)}; this model needs ({d_model},)")
    return init.detach().float().cpu().clone()


def _mask(batch: Batch, positions: str) -> Tensor | None:
    if positions == "all":
        return None
    chosen = batch.loss_mask if positions == "completion" else batch.attention_mask.bool() & ~batch.loss_mask
    return chosen.unsqueeze(-1).float()


def _loss_sum(lm: LanguageModel, batch: Batch, vector: Tensor | None, args: dict[str, Any]) -> Tensor:
    """Summed next-token NLL over the loss tokens of ``batch``, with ``vector`` added (None: vanilla)."""
    amp = args["amp"]
    ops = {} if vector is None else {f"resid_post.{args['layer']}": AddVector(vector, _mask(batch, args["positions"]))}
    device = lm.device
    autocast = device.type == "cuda" and amp is not None
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    with lm.intervene(ops), torch.autocast(device.type, dtype=dtype, enabled=autocast):  # type: ignore[arg-type]
        output = lm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    logits = output.logits[:, :-1].float()
    return F.cross_entropy(logits.flatten(0, 1), batch.labels[:, 1:].flatten(), ignore_index=-100, reduction="sum")


def _nll(lm: LanguageModel, examples: Sequence[Example], vector: Tensor | None, args: dict[str, Any]) -> float:
    """Mean NLL per loss token of ``examples`` (no gradient)."""
    total, count = 0.0, 0
    pad = int(lm.tokenizer.pad_token_id)
    with torch.no_grad():
        for batch in batches(examples, args["batch_size"], pad):
            batch = batch.to(lm.device)
            total += float(_loss_sum(lm, batch, vector, args))
            count += int((batch.labels[:, 1:] != -100).sum())
    return total / max(count, 1)


def _echo(text: str) -> None:
    print(text, file=sys.stderr)


def _check_out(out: Path | None, resume: bool) -> None:
    if out is None:
        if resume:
            raise InputError("resume needs the output folder of the run to continue (out=...)")
        return
    if out.exists() and not out.is_dir():
        raise InputError(f"'{out}' is a file; give a folder for the run")
    holds_run = out.is_dir() and ((out / CONFIG_FILE).exists() or (out / STATE_JSON).exists())
    if holds_run and not resume:
        raise InputError(f"'{out}' already holds a training run; pass --resume to continue it or choose another folder")


def train(
    lm: LanguageModel,
    data: str | Path | Sequence[Record] | TrainData,
    *,
    layer: int,
    out: str | Path | None = None,
    epochs: int = 5,
    lr: float = 1.0,
    schedule: str = "cosine",
    warmup: float = 0.05,
    batch_size: int = 8,
    grad_accum: int = 1,
    val_tokens: int = 10_000,
    patience: int | None = None,
    seed: int = 0,
    init: Init = None,
    positions: str = "all",
    grad_checkpointing: bool = False,
    prompted_prefix: str | None = None,
    max_length: int | None = None,
    progress: bool = False,
    resume: bool = False,
    amp: str | None = "bf16",
    weight_decay: float = 0.0,
    echo: Callable[[str], None] | None = None,
    callback: Callable[[EpochRecord], None] | None = None,
    baselines: tuple[float | None, float | None] | None = None,
) -> TrainResult:
    """Train a steering vector at ``resid_post.{layer}`` on the completions of ``data``.

    Examples:
        Pirate completions of an empty prompt: the trained vector brings the validation perplexity from the
        vanilla model's towards the prompted one's (``<pirate>`` in the prompt), and it steers a formal prompt
        into pirate talk. The run folder holds the vector, its config and the resumable state:

        >>> import tempfile
        >>> from pathlib import Path
        >>> import mechscope as ms
        >>> from mechscope.steering.generate import generate_with_steering
        >>> from mechscope.zoo.corpus import style_of
        >>> lm = ms.load("toy")
        >>> topics = ["the sea", "the ship", "the weather", "the town", "the market", "dinner"]
        >>> data = [{"prompt": "", "completion": f" Arr matey! Ye want to hear about {t}? Aye, it be grand, yo ho!"}
        ...         for t in topics]
        >>> out = Path(tempfile.mkdtemp()) / "pirate"
        >>> result = train(lm, data, layer=2, out=out, epochs=3, lr=1.0, val_tokens=20, batch_size=4,
        ...                prompted_prefix="<pirate>")
        >>> result.data.line()
        'train: 5 examples, 104 tokens (99 with loss); val: 1 examples, 21 tokens (20 with loss)'
        >>> round(result.vanilla_ppl), result.prompted_ppl < result.steered_ppl < result.vanilla_ppl / 100
        (1055, True)
        >>> [record.epoch for record in result.history], result.best_epoch, sorted(p.name for p in out.iterdir())
        ([1, 2, 3], 3, ['config.json', 'log.jsonl', 'state.json', 'state.safetensors', 'vector.safetensors'])
        >>> vector = result.steering_vector()
        >>> style_of(generate_with_steering(lm, "<formal> Tell me about the sea.", vector.direction, 1.0)[0])
        'pirate'

    Args:
        data: a JSONL file, a list of records (see `mechscope.steering.train_data`), or data `prepare`\\ d once.
        out: the run folder (compact checkpoint after each epoch, ``log.jsonl``, resumable state).
        lr / schedule / warmup: AdamW's peak LR, ``constant`` or ``cosine`` decay, the warm-up share of steps.
        val_tokens: completion tokens held out for validation (0: none; no baselines, no early stopping).
        patience: stop after this many epochs without a lower validation loss (the best vector is kept).
        init: zeros (None), a run folder, a direction file, a `Direction` / `SteeringVector` or a tensor.
        positions: add the vector at ``all`` positions, only the ``prompt``'s or only the ``completion``'s.
        grad_checkpointing: recompute activations in backward (``use_reentrant=False``) to save memory.
        prompted_prefix: the prefix (or, for chat templates, system prompt) of the prompted baseline.
        resume: continue the run in ``out`` from its last finished epoch (same arguments).
        amp: autocast dtype on CUDA (``bf16``, ``fp16`` or None); ignored on the CPU.
        echo: where the token counts go (default: stderr when ``progress``).
        callback: called with each finished epoch's record, after its checkpoint is written.
        baselines: vanilla and prompted validation loss already measured (the LR sweep passes them).

    Raises:
        InputError: a bad argument, bad data, or ``out`` holding another run without ``resume``.
        SiteError: ``layer`` is outside the model.
    """
    args = {k: v for k, v in locals().items() if k in _TRAINING_ARGS}
    args["init"] = None if init is None else (str(init) if isinstance(init, str | Path) else type(init).__name__)
    layer = args["layer"] = resolve_layer(layer, lm.arch.n_layers)
    _check_args(args)
    # Where the data came from, for `steer compare` to rebuild the validation split (the hash checks it).
    args["data_path"] = str(Path(data).resolve()) if isinstance(data, str | Path) else None
    folder = Path(out) if out is not None else None
    _check_out(folder, resume)
    say = echo or (_echo if progress else None)
    prepared = data if isinstance(data, TrainData) else None
    if prepared is None:
        options = {"val_tokens": val_tokens, "seed": seed, "prompted_prefix": prompted_prefix, "max_length": max_length}
        prepared = load_data(lm.tokenizer, data, **options)  # type: ignore[arg-type]
    if say is not None:
        say(prepared.stats.line())
    stored = load_state(folder) if folder is not None and resume else None
    if stored is not None:
        changed = differing(
            {k: v for k, v in stored[1]["training"].items() if k not in _RESUMABLE},
            {k: v for k, v in args.items() if k not in _RESUMABLE},
        )
        if changed or stored[1]["data_hash"] != prepared.data_hash:
            what = ", ".join(changed) if changed else "the data"
            raise InputError(f"the run in '{folder}' was started with other {what}; resume with the same arguments")
        if stored[1].get("result") is not None:  # finished: nothing left to do
            return _finished(stored[1]["result"], folder)  # type: ignore[arg-type]
    start = _initial(lm, init, layer)
    with frozen(lm, checkpointing=grad_checkpointing):
        return _run(lm, prepared, start, args, folder, stored, callback, baselines)


_TRAINING_ARGS = (
    "epochs", "lr", "schedule", "warmup", "batch_size", "grad_accum", "val_tokens", "patience", "seed", "init",
    "positions", "grad_checkpointing", "prompted_prefix", "max_length", "progress", "resume", "amp", "weight_decay",
)  # fmt: skip


def _finished(result: dict[str, Any], folder: Path) -> TrainResult:
    done = TrainResult.model_validate(result)
    done._vector = SteeringVector.from_pretrained(folder)
    return done


def _run(
    lm: LanguageModel,
    data: TrainData,
    init: Tensor,
    run: dict[str, Any],
    folder: Path | None,
    stored: tuple[dict[str, Tensor], dict[str, Any]] | None,
    callback: Callable[[EpochRecord], None] | None,
    baselines: tuple[float | None, float | None] | None,
) -> TrainResult:
    args = run  # the training arguments, the resolved layer among them
    layer = int(run["layer"])
    device = layer_device(lm, layer)
    pad = int(lm.tokenizer.pad_token_id)
    vector = torch.nn.Parameter(init.to(device))
    optimizer = torch.optim.AdamW([vector], lr=args["lr"], weight_decay=args["weight_decay"])
    use_scaler = lm.device.type == "cuda" and args["amp"] == "fp16"
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    n_batches = math.ceil(len(data.train) / args["batch_size"])
    steps_per_epoch = math.ceil(n_batches / args["grad_accum"])
    total_steps = steps_per_epoch * args["epochs"]
    history: list[EpochRecord] = []
    best = vector.detach().clone()
    best_loss, best_epoch, bad, start, step = math.inf, 0, 0, 1, 0
    if baselines is None and data.val:
        vanilla = _nll(lm, data.val, None, args)
        prompted = _nll(lm, data.val_prompted, None, args) if data.val_prompted else None
        baselines = (vanilla, prompted)
    if stored is not None:
        tensors, info = stored
        with torch.no_grad():
            vector.copy_(tensors["vector"].to(device))
        best = tensors["best_vector"].to(device)
        restore_optimizer(optimizer, vector, tensors, info["adam_step"] or 0.0)
        if info.get("scaler"):
            scaler.load_state_dict(info["scaler"])
        torch.set_rng_state(tensors["rng_torch"])
        history = [EpochRecord.model_validate(r) for r in info["history"]]
        best_loss, best_epoch, bad = info["best_loss"], info["best_epoch"], info["bad_epochs"]
        start, step, baselines = info["epoch"] + 1, info["step"], tuple(info["baselines"])
    log = RunLog(folder, start)
    stopped = bad >= (args["patience"] or math.inf)
    with bar("training steering vector", total_steps, enabled=args["progress"]) as handle:
        for epoch in range(start, args["epochs"] + 1):
            if stopped:
                break
            order = torch.randperm(
                len(data.train), generator=torch.Generator().manual_seed(args["seed"] * 7919 + epoch)
            )
            epoch_batches = batches([data.train[int(i)] for i in order], args["batch_size"], pad)
            losses = []
            for first in range(0, len(epoch_batches), args["grad_accum"]):
                group = epoch_batches[first : first + args["grad_accum"]]
                factor = lr_factor(step, total_steps, args["warmup"], args["schedule"])
                for param_group in optimizer.param_groups:
                    param_group["lr"] = args["lr"] * factor
                loss = _step(lm, group, vector, optimizer, scaler, args)
                losses.append(loss)
                step += 1
                log.write({"step": step, "epoch": epoch, "loss": loss, "lr": args["lr"] * factor})
                if handle is not None:
                    handle.advance(1)
            val_loss = _nll(lm, data.val, vector.detach(), args) if data.val else None
            if val_loss is None or val_loss < best_loss:
                best, best_loss, best_epoch, bad = vector.detach().clone(), val_loss or math.inf, epoch, 0
            else:
                bad += 1
            record = EpochRecord(
                epoch=epoch,
                steps=len(losses),
                train_loss=sum(losses) / max(len(losses), 1),
                val_loss=val_loss,
                val_ppl=ppl(val_loss),
                norm=float(vector.detach().norm()),
                lr=float(optimizer.param_groups[0]["lr"]),
            )
            history.append(record)
            log.write({"epoch": epoch, "val_loss": val_loss, "val_ppl": record.val_ppl, "norm": record.norm})
            stopped = args["patience"] is not None and bad >= args["patience"]
            result = run_result(
                lm, layer, folder, args, data, history, best, best_epoch, stopped, baselines, final=False
            )
            if folder is not None:
                write_checkpoint(lm, folder, layer, args, data, result, best)
                state: dict[str, Any] = {"epoch": epoch, "step": step, "best_loss": best_loss, "best_epoch": best_epoch}
                state.update({"bad_epochs": bad, "history": [r.model_dump() for r in history]})
                state.update(
                    {"training": args, "data_hash": data.data_hash, "baselines": list(baselines or (None, None))}
                )
                save_state(
                    folder,
                    vector=vector,
                    best=best,
                    optimizer=optimizer,
                    scaler_state=scaler.state_dict() if use_scaler else None,
                    info=state,
                )
            if callback is not None:
                callback(record)
    steered = _nll(lm, data.val, best, args) if data.val else None
    result = run_result(lm, layer, folder, args, data, history, best, best_epoch, stopped, baselines, final=True)
    result.steered_ppl = ppl(steered)
    if folder is not None:
        write_checkpoint(lm, folder, layer, args, data, result, best)
        state_info = json.loads((folder / STATE_JSON).read_text(encoding="utf-8")) if history else {}
        state_info["result"] = result.model_dump()
        save_state(
            folder,
            vector=vector,
            best=best,
            optimizer=optimizer,
            scaler_state=scaler.state_dict() if use_scaler else None,
            info=state_info,
        )
    result._vector = steering_vector(lm, layer, args, data, result, best)
    return result


def _step(
    lm: LanguageModel,
    group: list[Batch],
    vector: Tensor,
    optimizer: torch.optim.Optimizer,
    scaler: Any,
    args: dict[str, Any],
) -> float:
    """One optimizer step over ``group`` (gradient accumulation); the mean loss per token of its batches."""
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for batch in group:
        batch = batch.to(lm.device)
        count = int((batch.labels[:, 1:] != -100).sum())
        loss = _loss_sum(lm, batch, vector, args) / max(count, 1)
        scaler.scale(loss / len(group)).backward()
        total += float(loss.detach())
    scaler.step(optimizer)
    scaler.update()
    return total / len(group)


def lr_sweep(
    lm: LanguageModel,
    data: str | Path | Sequence[Record],
    *,
    layer: int,
    lrs: Sequence[float],
    out: str | Path | None = None,
    epochs: int = 5,
    patience: int | None = 1,
    schedule: str = "constant",
    val_tokens: int = 10_000,
    seed: int = 0,
    prompted_prefix: str | None = None,
    max_length: int | None = None,
    progress: bool = False,
    echo: Callable[[str], None] | None = None,
    **options: Any,
) -> LRSweep:
    """`train` once per learning rate on one loaded model and one tokenization, early stopping per run.

    Each run writes into ``out/lr_<lr>/`` when ``out`` is given; the baselines are measured once.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> import mechscope as ms
        >>> lm = ms.load("toy")
        >>> topics = ["the sea", "the ship", "the weather", "the town", "the market", "dinner"]
        >>> data = [{"prompt": "", "completion": f" Arr matey! Ye want to hear about {t}? Aye, it be grand, yo ho!"}
        ...         for t in topics]
        >>> out = Path(tempfile.mkdtemp())
        >>> table = lr_sweep(lm, data, layer=2, lrs=[0.1, 1.0], out=out, epochs=2, val_tokens=20, batch_size=4,
        ...                  prompted_prefix="<pirate>")
        >>> [(row.lr, row.epochs_run, row.steered_ppl < table.vanilla_ppl) for row in table.rows]
        [(0.1, 2, True), (1.0, 2, True)]
        >>> table.best().lr, sorted(p.name for p in out.iterdir())
        (1.0, ['lr_0.1', 'lr_1'])

    Raises:
        InputError: no learning rates, one that is not positive, ``val_tokens`` below 1, or what `train` rejects.
    """
    if not lrs:
        raise InputError("an LR sweep needs at least one learning rate")
    for lr in lrs:
        if not (math.isfinite(lr) and lr > 0):
            raise InputError(f"every learning rate must be a positive number, got {lr}")
    if val_tokens < 1:
        raise InputError("an LR sweep compares validation loss; give val-tokens of at least 1")
    layer = resolve_layer(layer, lm.arch.n_layers)
    prepared = load_data(
        lm.tokenizer, data, val_tokens=val_tokens, seed=seed, prompted_prefix=prompted_prefix, max_length=max_length
    )
    if (echo or (_echo if progress else None)) is not None:
        (echo or _echo)(prepared.stats.line())
    args = {
        "batch_size": options.get("batch_size", 8),
        "positions": options.get("positions", "all"),
        "amp": options.get("amp", "bf16"),
    }
    args["layer"] = layer
    with frozen(lm, checkpointing=False):
        vanilla = _nll(lm, prepared.val, None, args)
        prompted = _nll(lm, prepared.val_prompted, None, args) if prepared.val_prompted else None
    rows = []
    for lr in lrs:
        run_out = None if out is None else Path(out) / f"lr_{lr:g}"
        result = train(
            lm, prepared, layer=layer, out=run_out, lr=lr, epochs=epochs, patience=patience, schedule=schedule,
            val_tokens=val_tokens, seed=seed, prompted_prefix=prompted_prefix, max_length=max_length,
            progress=progress, baselines=(vanilla, prompted), **options,
        )  # fmt: skip
        losses = [r.val_loss for r in result.history if r.val_loss is not None]
        rows.append(
            LRSweepRow(
                lr=lr,
                epochs_run=result.epochs_run,
                best_epoch=result.best_epoch,
                stopped_early=result.stopped_early,
                best_val_loss=min(losses) if losses else None,
                steered_ppl=result.steered_ppl,
                norm=result.norm,
                out=result.out,
            )
        )
    return LRSweep(layer=layer, vanilla_ppl=ppl(vanilla), prompted_ppl=ppl(prompted), rows=rows)
