"""Train a sparse autoencoder on one site of a model, streaming its activations over a corpus.

Two architectures:

* **TopK** (``k=...``; Gao et al. 2024, "Scaling and evaluating sparse autoencoders"): ``f = topk(relu(h))``
  and the loss ``‖x - x̂‖² + aux_coeff · ‖e - ê‖²``, where ``e = x - x̂`` and ``ê`` is the reconstruction of
  ``e`` from the ``aux_k`` largest pre-activations among the dead features only (AuxK, ``aux_coeff = 1/32``):
  it hands dead features a gradient, which revives them.
* **ReLU + L1** (``l1_coeff=...``; Anthropic's April 2024 update): ``f = relu(h)`` and the loss
  ``‖x - x̂‖² + λ Σᵢ fᵢ ‖W_dec[i]‖``, λ ramped up linearly over the first 5% of the steps; every
  ``resample_every`` steps in the first half of training, dead features are resampled (Bricken et al. 2023):
  a dead feature's decoder row becomes a batch token's (normalised) value, drawn with probability
  proportional to the square of its reconstruction loss, its encoder column the same direction at 0.2 times
  the mean norm of the live columns, its bias and Adam moments zero.

Both keep every decoder row at unit norm: the gradient's component along each row is removed before the
step and the rows are renormalised after it (so the L1 weight ``‖W_dec[i]‖`` is 1). Inputs are scaled by one
constant so that their mean norm is ``√d_in`` (``normalize``; recorded as ``expected_average_only_in`` with its
``norm_scaling_factor``, which the SAE undoes on its reconstruction), so that learning rates and ``l1_coeff``
carry between models. ``b_dec`` starts at the geometric median of a first sample, ``W_enc`` at ``W_decᵀ``.
Adam with a linear LR warm-up (``warmup``, a share of the steps) and a linear decay to zero over the last
``decay`` share. A feature is *dead* when it was not active in any of the last ``dead_tokens`` tokens
(default: a tenth of the budget, at most 10M as in Gao et al.).

With ``out``, a checkpoint is written every ``checkpoint_every`` steps: the SAE folder (`mechscope.sae.save`,
training settings in ``cfg.json``) and ``train_state.pt`` (weights, Adam, step, stream position, dead counters,
RNG; read back with ``weights_only=True``). ``resume=True`` continues from it and ends with the same weights
as a run never interrupted.

`train_sae`'s docstring has a tiny run on the toy organism.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mechscope.core.lm import LanguageModel
from mechscope.errors import InputError
from mechscope.progress import bar
from mechscope.sae.activations import (
    ActivationSource,
    StreamState,
    corpus_hash,
    init_stats,
    split_corpus,
)
from mechscope.sae.evaluate import reconstruction_stats
from mechscope.sae.formats import CFG_NAME, resolve_site, save, site_width
from mechscope.sae.model import SAE, SAEConfig
from mechscope.sae.train_results import EvalStats, SAETrainResult, TrainRecord
from mechscope.storage.atomic import atomic_write, atomic_write_text

STATE_NAME = "train_state.pt"
RESULT_NAME = "train_result.json"
#: Settings that may change between a run and its resumption.
_FREE = ("checkpoint_every", "progress", "resume", "out", "log_every")


def _check(lm: LanguageModel, site: str, s: dict[str, Any], out: Path | None) -> None:
    """Every argument checked before anything runs or is written."""
    site_width(site, lm)
    if s["width"] < 1:
        raise InputError(f"the SAE width must be at least 1 feature, got {s['width']}")
    if (s["k"] is None) == (s["l1_coeff"] is None):
        raise InputError("give k (TopK) or l1_coeff (ReLU + L1), exactly one of them")
    if s["k"] is not None and not 1 <= s["k"] <= s["width"]:
        raise InputError(f"k must be between 1 and the width ({s['width']}), got {s['k']}")
    if s["l1_coeff"] is not None and not (math.isfinite(s["l1_coeff"]) and s["l1_coeff"] >= 0):
        raise InputError(f"the L1 coefficient must be a finite number >= 0, got {s['l1_coeff']}")
    if s["batch_size"] < 1:
        raise InputError(f"batch_size must be at least 1 token, got {s['batch_size']}")
    if s["tokens"] < s["batch_size"]:
        raise InputError(f"the token budget ({s['tokens']:,}) is below one batch ({s['batch_size']:,}); train longer")
    if not (math.isfinite(s["lr"]) and s["lr"] > 0):
        raise InputError(f"the learning rate must be a positive number, got {s['lr']}")
    if not (0 <= s["warmup"] < 1 and 0 <= s["decay"] < 1 and s["warmup"] + s["decay"] <= 1):
        raise InputError(
            f"warmup and decay are shares of the steps in [0, 1) summing to <= 1, got {s['warmup']}, {s['decay']}"
        )
    if not (math.isfinite(s["aux_coeff"]) and s["aux_coeff"] >= 0) or s["aux_k"] < 1 or s["dead_tokens"] < 1:
        raise InputError("aux_coeff must be >= 0, and aux_k and dead_tokens at least 1")
    if out is not None and out.exists() and not out.is_dir():
        raise InputError(f"'{out}' is a file; give a folder for the SAE (-o saes/run/)")
    if out is None and s["resume"]:
        raise InputError("resume needs the output folder of the run to continue (out=...)")
    if out is not None and not s["resume"] and ((out / STATE_NAME).exists() or (out / CFG_NAME).exists()):
        raise InputError(f"'{out}' already holds an SAE; pass resume to continue its run or choose another folder")


def train_sae(
    lm: LanguageModel,
    site: str,
    corpus: Sequence[str],
    *,
    width: int,
    k: int | None = None,
    l1_coeff: float | None = None,
    tokens: int = 2_000_000,
    batch_size: int = 4096,
    lr: float | None = None,
    warmup: float = 0.05,
    decay: float = 0.2,
    seed: int = 0,
    out: str | Path | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    progress: bool = False,
    eval_corpus: Sequence[str] | None = None,
    eval_tokens: int = 50_000,
    aux_k: int | None = None,
    aux_coeff: float = 1 / 32,
    dead_tokens: int | None = None,
    resample: bool = True,
    resample_every: int | None = None,
    normalize: bool = True,
    buffer_tokens: int = 65_536,
    forward_batch_size: int = 32,
    skip_first: bool = True,
    log_every: int | None = None,
    callback: Callable[[TrainRecord], None] | None = None,
) -> tuple[SAE, SAETrainResult]:
    """Train an SAE on ``site``'s activations over ``corpus`` (see the module docstring for the method).

    Args:
        site: the site (``resid_post.2``; ``head_out.L`` is read flattened to heads × head_dim).
        width: the number of features.
        k / l1_coeff: TopK with ``k`` features per token, or ReLU with this L1 coefficient (exactly one).
        tokens: the training budget in tokens (``tokens // batch_size`` steps).
        batch_size: tokens per optimizer step.
        lr: Adam's peak LR (default ``2e-4 / √(width / 2¹⁴)``, Gao et al.'s scaling).
        warmup / decay: shares of the steps of linear warm-up and of linear decay to zero at the end.
        out: the folder for the SAE and its checkpoints (None: nothing is written).
        checkpoint_every: steps between checkpoints (default: a tenth of the run); one is written at the end.
        resume: continue the run in ``out`` (same settings; the result equals an uninterrupted run's).
        progress: a bar on stderr with live L0, explained variance and dead share.
        corpus: the training documents (one string each; cycled when the budget is larger).
        eval_corpus: held-out documents for the final evaluation (default: 5% of ``corpus`` kept out of
            training; a corpus under 20 documents is evaluated on itself).
        eval_tokens: tokens of the final evaluation at most.
        aux_k / aux_coeff: AuxK's dead features per token (default: the power of two nearest ``d_in / 2``) and
            weight (0: no AuxK); TopK only.
        dead_tokens: the dead-feature window N (default ``min(10M, tokens // 10)``).
        resample / resample_every: dead-feature resampling (ReLU only) and its interval in steps (default: an
            eighth of the run; only in the first half).
        normalize: scale inputs to a mean norm of ``√d_in``.
        buffer_tokens / forward_batch_size / skip_first: the activation stream (`ActivationSource`).
        log_every: steps between history records (default: 1/200 of the run).
        callback: called with each history record (after any checkpoint of that step).

    Returns:
        The SAE (its ``config.model`` is ``lm.source``) and an `SAETrainResult`.

    Raises:
        InputError: a bad argument, an empty corpus, ``out`` a file or holding another run (without ``resume``),
            or a resumed run started with other settings.
        SiteError: a site the model lacks or an SAE cannot read.

    Examples:
        >>> import mechscope as ms
        >>> lm = ms.load("toy")
        >>> docs = ["The capital of France is Paris.", "Arr, the sea be grand, matey!"] * 50
        >>> sae, result = train_sae(lm, "resid_post.1", docs, width=64, k=4, tokens=2048, batch_size=256)
        >>> result.steps, sae.config.k, round(float(sae.W_dec.detach().norm(dim=1).mean()), 4)
        (8, 4, 1.0)
    """
    site = resolve_site(site, lm)  # stored, saved and compared in absolute layers
    d_in = site_width(site, lm)
    settings: dict[str, Any] = {
        "site": site, "architecture": "topk" if k is not None else "standard", "width": width, "k": k,
        "l1_coeff": l1_coeff, "tokens": tokens, "batch_size": batch_size, "warmup": warmup, "decay": decay,
        "seed": seed, "aux_coeff": aux_coeff, "resample": resample, "normalize": normalize,
        "buffer_tokens": buffer_tokens, "forward_batch_size": forward_batch_size, "skip_first": skip_first,
        "eval_tokens": eval_tokens, "checkpoint_every": checkpoint_every, "progress": progress, "resume": resume,
        "log_every": log_every,
    }  # fmt: skip
    steps = tokens // max(batch_size, 1)
    settings["lr"] = lr if lr is not None else 2e-4 / math.sqrt(max(width, 1) / 2**14)
    settings["aux_k"] = aux_k if aux_k is not None else 2 ** max(0, round(math.log2(max(d_in / 2, 1))))
    settings["dead_tokens"] = dead_tokens if dead_tokens is not None else max(1, min(10_000_000, tokens // 10))
    settings["resample_every"] = resample_every if resample_every is not None else max(1, steps // 8)
    folder = Path(out) if out is not None else None
    _check(lm, site, settings, folder)
    if eval_tokens < 1:
        raise InputError(f"eval_tokens must be at least 1, got {eval_tokens}")
    train_docs, held_out = split_corpus(corpus, eval_corpus, seed)
    settings["corpus"] = {"documents": len(train_docs), "sha256": corpus_hash(train_docs)}
    settings["eval_corpus"] = {"documents": len(held_out), "sha256": corpus_hash(held_out)}
    stored = _load_state(folder) if folder is not None and resume else None
    if stored is not None:
        changed = sorted(key for key in settings if key not in _FREE and stored["settings"].get(key) != settings[key])
        if changed:
            raise InputError(
                f"the run in '{folder}' was started with other {', '.join(changed)}; resume with the same settings"
            )
    source = ActivationSource(
        lm, site, train_docs, buffer_tokens=buffer_tokens, forward_batch_size=forward_batch_size, seed=seed,
        skip_first=skip_first,
    )  # fmt: skip
    return _Run(lm, source, settings, folder, stored, callback).train(held_out)


def lr_factor(step: int, total: int, warmup: float, decay: float) -> float:
    """The multiplier of the peak LR at step ``step`` (0-based) of ``total``: linear warm-up, flat, linear decay.

    Examples:
        >>> [round(lr_factor(s, 10, 0.2, 0.2), 2) for s in (0, 1, 2, 7, 8, 9)]
        [0.5, 1.0, 1.0, 1.0, 0.67, 0.33]
    """
    warm, cool = math.ceil(warmup * total), math.ceil(decay * total)
    if step < warm:
        return (step + 1) / warm
    if step >= total - cool:
        return (total - step) / (cool + 1)
    return 1.0


def _load_state(folder: Path) -> dict[str, Any] | None:
    path = folder / STATE_NAME
    if not path.is_file():
        return None
    try:
        state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a damaged or foreign file: weights_only refuses anything but plain data
        raise InputError(f"'{path}' is not a readable training state ({type(error).__name__}); start again") from None
    return state


class _Run:
    """One training run: the SAE, Adam, the stream and the counters, stepped to the end."""

    def __init__(
        self,
        lm: LanguageModel,
        source: ActivationSource,
        settings: dict[str, Any],
        folder: Path | None,
        stored: dict[str, Any] | None,
        callback: Callable[[TrainRecord], None] | None,
    ) -> None:
        self.lm, self.source, self.s, self.folder, self.callback = lm, source, settings, folder, callback
        self.total = settings["tokens"] // settings["batch_size"]
        self.device = source.device
        s = settings
        if stored is None:
            sample, _ = source.collect(0, min(s["buffer_tokens"], 16_384))
            stats = init_stats(sample)
            self.scale = math.sqrt(source.d_in) / stats.mean_norm if s["normalize"] else 1.0
            self.sae = SAE.random(
                source.d_in, s["width"], s["site"], architecture=s["architecture"], k=s["k"], seed=s["seed"]
            )
            with torch.no_grad():
                self.sae.b_dec.copy_(stats.median * self.scale)
        else:
            self.scale = float(stored["scale"])
            arch = s["architecture"]
            self.sae = SAE.random(source.d_in, s["width"], s["site"], architecture=arch, k=s["k"], seed=s["seed"])
            self.sae.load_state_dict(stored["weights"])
        self.sae.to(self.device)
        self.optimizer = torch.optim.Adam(self.sae.parameters(), lr=s["lr"])
        self.generator = torch.Generator().manual_seed(s["seed"] + 99_991)
        self.since = torch.zeros(s["width"], dtype=torch.long, device=self.device)
        self.step, self.resampled, self.seconds = 0, 0, 0.0
        self.history: list[TrainRecord] = []
        self.stream = StreamState()
        self.resumed_at: int | None = None
        if stored is not None:
            self.optimizer.load_state_dict(stored["optimizer"])
            self.generator.set_state(stored["generator"])
            self.since = stored["since"].to(self.device)
            self.step, self.resampled, self.seconds = (
                int(stored["step"]),
                int(stored["resampled"]),
                float(stored["seconds"]),
            )
            self.history = [TrainRecord.model_validate(json.loads(r)) for r in stored["history"]]
            carry = stored["stream_carry"]
            block, cursor, offset = (int(value) for value in stored["stream"])
            self.stream = StreamState(block, cursor, offset, carry if carry.numel() else None)
            self.resumed_at = self.step

    # --- the step ---------------------------------------------------------------------------------------------

    def _loss(self, x: Tensor, dead: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The loss, the features, the residual error and the squared error of batch ``x`` (normalised)."""
        sae, s = self.sae, self.s
        h = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
        f = sae.activate(h)
        err = x - (f @ sae.W_dec + sae.b_dec)
        squared = err.pow(2).sum(dim=-1)
        loss = squared.mean()
        if s["architecture"] == "topk" and s["aux_coeff"] > 0 and bool(dead.any()):
            # AuxK: the dead features' largest pre-activations reconstruct what the live ones missed
            top = torch.topk(h.masked_fill(~dead, -math.inf), min(s["aux_k"], int(dead.sum())), dim=-1)
            aux_f = torch.zeros_like(h).scatter(-1, top.indices, torch.relu(top.values))
            aux = (err.detach() - aux_f @ sae.W_dec).pow(2).sum(dim=-1).mean()
            loss = loss + s["aux_coeff"] * aux
        if s["architecture"] == "standard":
            ramp = min(1.0, (self.step + 1) / max(1, math.ceil(0.05 * self.total)))
            l1 = (f * sae.W_dec.norm(dim=1)).sum(dim=-1).mean()
            loss = loss + s["l1_coeff"] * ramp * l1
        return loss, f, err, squared

    def _update(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        s, sae = self.s, self.sae
        lr = s["lr"] * lr_factor(self.step, self.total, s["warmup"], s["decay"])
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        dead = self.since >= s["dead_tokens"]
        loss, f, err, squared = self._loss(x, dead)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        with torch.no_grad():
            grad = sae.W_dec.grad
            assert grad is not None
            # only changes of direction: the part of the gradient along each (unit) row would change its norm
            grad -= (grad * sae.W_dec).sum(dim=1, keepdim=True) * sae.W_dec
            self.optimizer.step()
            sae.W_dec.div_(sae.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))
            active = (f > 0).any(dim=0)
            self.since += x.shape[0]
            self.since[active] = 0
        return loss.detach(), f.detach(), err.detach(), squared.detach()

    def _resample(self, x: Tensor, squared: Tensor) -> None:
        """Re-initialise the dead features from batch tokens drawn ∝ their squared loss (Bricken et al.)."""
        dead = (self.since >= self.s["dead_tokens"]).nonzero().flatten()
        if dead.numel() == 0:
            return
        sae = self.sae
        weights = squared.pow(2).double().cpu() + 1e-30
        picks = torch.multinomial(
            weights, dead.numel(), replacement=dead.numel() > weights.numel(), generator=self.generator
        )
        with torch.no_grad():
            vectors = x[picks.to(x.device)] - sae.b_dec
            vectors = vectors / vectors.norm(dim=1, keepdim=True).clamp_min(1e-12)
            alive = self.since < self.s["dead_tokens"]
            norm = float(sae.W_enc[:, alive].norm(dim=0).mean()) if bool(alive.any()) else 1.0
            sae.W_dec[dead] = vectors
            sae.W_enc[:, dead] = vectors.T * 0.2 * norm
            sae.b_enc[dead] = 0.0
            for param, index in ((sae.W_dec, (dead,)), (sae.W_enc, (slice(None), dead)), (sae.b_enc, (dead,))):
                for moment in ("exp_avg", "exp_avg_sq"):
                    state = self.optimizer.state.get(param, {})
                    if moment in state:
                        state[moment][index] = 0.0
        self.since[dead] = 0
        self.resampled += int(dead.numel())

    # --- the loop ---------------------------------------------------------------------------------------------

    def train(self, held_out: list[str]) -> tuple[SAE, SAETrainResult]:
        s, total = self.s, self.total
        every = s["checkpoint_every"] or max(1, total // 10)
        log_every = s["log_every"] or max(1, total // 200)
        batches = self.source.batches(s["batch_size"], state=self.stream)
        seen_at, clock = self.step, time.perf_counter()
        with bar("training SAE", total - self.step, enabled=s["progress"]) as handle:
            while self.step < total:
                started = time.perf_counter()
                x = next(batches) * self.scale
                loss, f, err, squared = self._update(x)
                late = self.step < total // 2
                if (
                    s["architecture"] == "standard"
                    and s["resample"]
                    and late
                    and (self.step + 1) % s["resample_every"] == 0
                ):
                    self._resample(x, squared)
                self.step += 1
                self.seconds += time.perf_counter() - started
                record = None
                if self.step % log_every == 0 or self.step == total:
                    now = time.perf_counter()
                    speed = (self.step - seen_at) * s["batch_size"] / max(now - clock, 1e-9)
                    record = self._record(x, loss, f, err, speed)
                    self.history.append(record)
                    seen_at, clock = self.step, now
                if self.folder is not None and (self.step % every == 0 or self.step == total):
                    self._checkpoint(done=False)
                if handle is not None:
                    live = (
                        record
                        and f"L0 {record.l0:.1f}  EV {record.explained_variance:.3f}  dead {record.dead_fraction:.1%}"
                    )
                    handle.advance(1, note=live or None)
                if record is not None and self.callback is not None:
                    self.callback(record)
        final = self._evaluate(held_out)
        result = self._result(final)
        if self.folder is not None:
            self._checkpoint(done=True)
            atomic_write_text(self.folder / RESULT_NAME, result.model_dump_json(indent=1) + "\n")
        return self.finished(), result

    def _record(self, x: Tensor, loss: Tensor, f: Tensor, err: Tensor, speed: float) -> TrainRecord:
        variance = float((x - x.mean(dim=0)).pow(2).sum())
        return TrainRecord(
            step=self.step,
            tokens=self.step * self.s["batch_size"],
            loss=float(loss),
            mse=float(err.pow(2).mean()),
            explained_variance=1.0 - float(err.pow(2).sum()) / max(variance, 1e-30),
            l0=float((f > 0).sum(dim=-1).float().mean()),
            dead_fraction=float((self.since >= self.s["dead_tokens"]).float().mean()),
            lr=float(self.optimizer.param_groups[0]["lr"]),
            tokens_per_s=speed,
        )

    def finished(self) -> SAE:
        """The SAE under its final config: the model, the input scale and the training settings recorded."""
        s = self.s
        record = {key: value for key, value in s.items() if key not in _FREE}
        record |= {
            "steps_done": self.step,
            "tokens_done": self.step * s["batch_size"],
            "trainer": "mechscope.sae.train",
        }
        config = SAEConfig(
            d_in=self.source.d_in, d_sae=s["width"], site=s["site"], architecture=s["architecture"], k=s["k"],
            normalize_activations="expected_average_only_in" if s["normalize"] else "none",
            norm_scaling_factor=self.scale if s["normalize"] else None, model=self.lm.source,
            extra={"mechscope_training": record},
        )  # fmt: skip
        sae = SAE(config).to(self.device)
        sae.load_state_dict(self.sae.state_dict())
        return sae

    def _checkpoint(self, *, done: bool) -> None:
        assert self.folder is not None
        stream = self.source.state()
        state = {
            "settings": {key: value for key, value in self.s.items()},
            "weights": {name: tensor.detach().cpu() for name, tensor in self.sae.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "since": self.since.cpu(),
            "step": self.step, "resampled": self.resampled, "seconds": self.seconds, "scale": self.scale, "done": done,
            "history": [record.model_dump_json() for record in self.history],
            "stream": [stream.block, stream.cursor, stream.offset],
            "stream_carry": stream.carry if stream.carry is not None else torch.zeros(0),
        }  # fmt: skip
        save(self.finished(), self.folder)
        atomic_write(self.folder / STATE_NAME, lambda temporary: torch.save(state, temporary))

    def _evaluate(self, documents: list[str]) -> EvalStats:
        """The trained SAE on the held-out documents, in the site's units."""
        source = ActivationSource(
            self.lm, self.s["site"], documents, buffer_tokens=min(self.s["eval_tokens"], 65_536),
            forward_batch_size=self.s["forward_batch_size"], skip_first=self.s["skip_first"], shuffle=False,
            cycle=False, device=self.device,
        )  # fmt: skip
        return reconstruction_stats(self.finished(), source, self.s["eval_tokens"])

    def _result(self, final: EvalStats) -> SAETrainResult:
        s = self.s
        return SAETrainResult(
            model=self.lm.source, site=s["site"], architecture=s["architecture"], width=s["width"], k=s["k"],
            l1_coeff=s["l1_coeff"], steps=self.step, tokens=self.step * s["batch_size"], batch_size=s["batch_size"],
            lr=s["lr"], dead_tokens=s["dead_tokens"],
            dead_fraction=float((self.since >= s["dead_tokens"]).float().mean()), resampled=self.resampled,
            final=final, history=self.history, tokens_per_s=self.step * s["batch_size"] / max(self.seconds, 1e-9),
            resumed_at_step=self.resumed_at, out=str(self.folder) if self.folder is not None else None,
        )  # fmt: skip


__all__ = ["RESULT_NAME", "STATE_NAME", "lr_factor", "train_sae"]
