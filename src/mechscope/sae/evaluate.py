"""How good an SAE is on a model: reconstruction, sparsity, and the loss of running the model through it.

`evaluate` streams a corpus batch by batch (never more than one batch of activations in memory) and runs
three forward passes per batch: clean (capturing the site), with the site's value replaced by the SAE's
reconstruction (`Splice` with the SAE), and with it zeroed (`Splice` without one). Every number is defined
in `mechscope.sae.results.Evaluation`; in short:

* the evaluation tokens are the real tokens of each prompt, less its first one (BOS on most models; its
  outlier norm is left out of training too, see `mechscope.sae.activations`) unless ``skip_first=False``;
  the splices change the site only at those tokens, so the first token runs as it always does;
* ``mse`` is the squared error summed over the site's dimensions, averaged over tokens; ``normalized_mse``
  divides the summed error by ``Σ‖x‖²``; ``explained_variance`` is ``1 − Σ‖x − x_hat‖² / Σ‖x − x̄‖²``
  (the field's definition, over all evaluation tokens at once, with one mean ``x̄``);
* ``l0`` counts active features (``> 0``) per token; a feature is dead if it is never active, dense if it
  is active on more than `DENSE_THRESHOLD` (10%) of the tokens;
* the losses are mean next-token cross-entropies over the predictions made at evaluation tokens (each of
  which has a real next token), padding excluded; ``loss_recovered = (ce_zero − ce_sae) / (ce_zero − ce_clean)``.

Sums are kept in float64; the mean of ``x`` is merged batch by batch (Chan et al.'s pairwise update), so
explained variance does not lose precision to ``Σ‖x‖² − N‖x̄‖²`` cancelling.

Examples:
    >>> import mechscope as ms
    >>> lm = ms.load("toy")
    >>> sae = ms.sae.SAE.random(lm.arch.d_model, 256, "resid_post.2", k=8)
    >>> result = evaluate(lm, sae, ["The capital of France is Paris.", "Two plus two is four."])
    >>> result.l0 <= 8, result.tokens
    (True, 21)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from mechscope.core.lm import LanguageModel
from mechscope.core.ops import OpContext
from mechscope.core.positions import Positions
from mechscope.errors import InputError
from mechscope.sae.activations import ActivationSource
from mechscope.sae.model import SAE
from mechscope.sae.read import check_sae, evaluated, flat_site, token_batches
from mechscope.sae.results import DENSE_THRESHOLD, Evaluation
from mechscope.sae.train_results import EvalStats


@dataclass(frozen=True)
class Splice:
    """An op that replaces a site's value with the SAE's reconstruction (``sae=None``: with zeros).

    Only evaluation tokens change: real tokens, less each prompt's first when ``skip_first``; the others keep
    their value. Use it as any op: ``lm.intervene({sae.site: Splice(sae)})``.

    Examples:
        >>> import mechscope as ms
        >>> lm = ms.load("toy")
        >>> sae = SAE.random(lm.arch.d_model, 256, "resid_post.2", k=8, seed=0)
        >>> with lm.capture([sae.site]) as clean:
        ...     _ = lm.forward("The capital of France is")
        >>> with lm.intervene({sae.site: Splice(sae)}), lm.capture([sae.site]) as spliced:
        ...     _ = lm.forward("The capital of France is")
        >>> x, new = clean[sae.site][0], spliced[sae.site][0]
        >>> torch.equal(new[0], x[0]), torch.allclose(new[1:], sae(x[1:]))  # the first token (BOS) kept
        (True, True)
        >>> with lm.intervene({sae.site: Splice(None)}), lm.capture([sae.site]) as zeroed:
        ...     _ = lm.forward("The capital of France is")
        >>> bool((zeroed[sae.site][0, 1:] == 0).all())  # no SAE: zero ablation
        True
    """

    sae: SAE | None
    skip_first: bool = True
    positions: Positions = "all"
    #: Read by `Intervention`: this op reads the pass's padding layout (``ctx.info``).
    needs_layout: bool = field(default=True, repr=False)

    def apply(self, x: Tensor, ctx: OpContext) -> Tensor:
        """``x`` with the reconstruction (or zeros) written at the evaluation tokens."""
        info = ctx.info
        where = evaluated(info.mask, self.skip_first)[:, info.offset :]  # this pass's columns
        new = torch.zeros_like(x) if self.sae is None else self.sae(flat_site(x)).reshape(x.shape)
        selector = where.reshape(*where.shape, *([1] * (x.dim() - 2))).to(x.device)
        return torch.where(selector, new, x)


@dataclass
class Totals:
    """Running sums over the evaluation tokens (float64 on the CPU; counts as ints); `evaluate` and the
    training run's held-out `reconstruction_stats` both fold their batches in here.

    Examples:
        Sums folded in batch by batch are those of all tokens at once:

        >>> sae = SAE.random(16, 64, "resid_post.2", k=4, seed=0)
        >>> x = torch.randn(10, 16, generator=torch.Generator().manual_seed(0))
        >>> totals = Totals(d_in=16, d_sae=64)
        >>> with torch.no_grad():
        ...     for part in (x[:6], x[6:]):
        ...         features = sae.encode(part)
        ...         totals.add_values(part, sae.decode(features), features)
        >>> spread = float((x.double() - x.double().mean(dim=0)).pow(2).sum())
        >>> totals.tokens, abs(totals.spread - spread) < 1e-9, int(totals.active.sum()) / totals.tokens  # l0
        (10, True, 4.0)
    """

    d_in: int
    d_sae: int
    tokens: int = 0
    error: float = 0.0  # Σ‖x − x_hat‖²
    energy: float = 0.0  # Σ‖x‖²
    mean: Tensor | None = None  # x̄ so far
    spread: float = 0.0  # Σ‖x − x̄‖² so far
    active: Tensor | None = None  # per feature: tokens where it is active
    loss_tokens: int = 0
    losses: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # Σ CE: clean, sae, zero

    def add_values(self, x: Tensor, x_hat: Tensor, features: Tensor) -> None:
        """Fold in one batch's evaluation tokens: ``x``, ``x_hat`` ``[n, d_in]``, ``features`` ``[n, d_sae]``."""
        n = x.shape[0]
        if n == 0:
            return
        x64 = x.double().cpu()
        self.error += float((x64 - x_hat.double().cpu()).pow(2).sum())
        self.energy += float(x64.pow(2).sum())
        mean = x64.mean(dim=0)
        spread = float((x64 - mean).pow(2).sum())
        if self.mean is None:
            self.mean, self.spread = mean, spread
        else:  # Chan et al.: merge two groups' means and sums of squared deviations
            total = self.tokens + n
            delta = mean - self.mean
            self.spread += spread + float(delta.pow(2).sum()) * self.tokens * n / total
            self.mean = self.mean + delta * (n / total)
        counts = (features > 0).sum(dim=0).cpu().long()
        self.active = counts if self.active is None else self.active + counts
        self.tokens += n

    def add_losses(self, logits: tuple[Tensor, Tensor, Tensor], ids: Tensor, predicts: Tensor) -> None:
        """Fold in one batch's summed cross-entropies at the ``predicts`` columns ``[batch, pos - 1]``."""
        targets = ids[:, 1:][predicts]
        self.loss_tokens += int(predicts.sum())
        for i, run in enumerate(logits):
            picked = run[:, :-1][predicts.to(run.device)].float()
            self.losses[i] += float(F.cross_entropy(picked, targets.to(run.device), reduction="sum").double())

    def result(self, site: str, prompts: int, skip_first: bool) -> Evaluation:
        """The `Evaluation` the sums add up to (raises `InputError` when no token was counted)."""
        if self.tokens == 0 or self.active is None:
            first = " after each prompt's first" if skip_first else ""
            raise InputError(f"the prompts have no token{first} to evaluate; give longer prompts")
        if self.loss_tokens == 0:
            raise InputError(
                "no evaluated token has a next token to predict, so there is no loss to compare; give prompts of "
                f"at least {3 if skip_first else 2} tokens"
            )
        clean, spliced, zeroed = (total / self.loss_tokens for total in self.losses)
        frequency = self.active.double() / self.tokens
        gap = zeroed - clean
        return Evaluation(
            site=site,
            prompts=prompts,
            tokens=self.tokens,
            d_in=self.d_in,
            d_sae=self.d_sae,
            skip_first=skip_first,
            mse=self.error / self.tokens,
            mse_per_dim=self.error / (self.tokens * self.d_in),
            normalized_mse=self.error / self.energy if self.energy > 0 else 0.0,
            explained_variance=1.0 - self.error / self.spread if self.spread > 0 else 0.0,
            l0=float(self.active.sum()) / self.tokens,
            dead=int((self.active == 0).sum()),
            dense=[int(f) for f in (frequency > DENSE_THRESHOLD).nonzero().flatten()],
            dense_threshold=DENSE_THRESHOLD,
            loss_tokens=self.loss_tokens,
            ce_clean=clean,
            ce_sae=spliced,
            ce_zero=zeroed,
            delta_loss=spliced - clean,
            loss_recovered=(zeroed - spliced) / gap if gap != 0 else None,
        )


def evaluate(
    lm: LanguageModel,
    sae: SAE,
    prompts: Sequence[str],
    *,
    batch_size: int = 32,
    max_tokens: int | None = None,
    skip_first: bool = True,
    progress: bool = False,
) -> Evaluation:
    """Reconstruction, sparsity and loss metrics of ``sae`` on ``lm`` over ``prompts`` (see the module docstring).

    Args:
        lm: the model (a decoder: the losses need next-token predictions).
        sae: the SAE; its site must exist on ``lm`` with its width.
        prompts: the corpus, one string per prompt.
        batch_size: prompts per forward pass.
        max_tokens: padded tokens per forward pass at most (as `LanguageModel.forward_batches`).
        skip_first: leave each prompt's first token (BOS) out of the metrics and the splices.
        progress: show a progress bar on stderr.

    Returns:
        The metrics, as an `Evaluation`.

    Examples:
        >>> import mechscope as ms
        >>> lm = ms.load("toy")
        >>> sae = SAE.random(lm.arch.d_model, 256, "resid_post.2", k=8, seed=0)
        >>> result = evaluate(lm, sae, ["The capital of France is Paris.", "Two plus two is four."])
        >>> result.tokens, result.l0, result.loss_tokens  # BOS left out; each prompt's last token predicts nothing
        (21, 8.0, 19)
        >>> result.ce_clean < result.ce_sae < result.ce_zero, round(result.loss_recovered, 2)
        (True, 0.86)

    Raises:
        InputError: no prompts, an empty prompt, prompts too short to have an evaluated token with a next
            token, an encoder model, a bad batch size, or an SAE whose width is not its site's.
        SiteError: the SAE's site does not exist on ``lm``.
    """
    if lm.arch.kind != "decoder":
        raise InputError(f"{lm.arch.family} is an encoder; the SAE's loss metrics need next-token predictions")
    check_sae(lm, sae)
    totals = Totals(d_in=sae.config.d_in, d_sae=sae.d_sae)
    spliced, zeroed = Splice(sae, skip_first), Splice(None, skip_first)
    batches = token_batches(
        lm, prompts, batch_size=batch_size, max_tokens=max_tokens, progress=progress, what="evaluating"
    )
    for _, inputs in batches:
        with lm.capture([sae.site]) as cache:
            clean = lm.forward(inputs)
        x = flat_site(cache[sae.site])
        where = evaluated(inputs["attention_mask"], skip_first).to(x.device)
        with torch.no_grad():  # the SAE's weights are parameters; evaluating needs no graph
            tokens = x[where].float()
            features = sae.encode(tokens)
            totals.add_values(tokens, sae.decode(features, like=tokens), features)
        with lm.intervene({sae.site: spliced}):
            through_sae = lm.forward(inputs)
        with lm.intervene({sae.site: zeroed}):
            ablated = lm.forward(inputs)
        mask = inputs["attention_mask"].bool()
        predicts = (where.to(mask.device)[:, :-1] & mask[:, 1:]).cpu()  # evaluated tokens with a real next token
        totals.add_losses((clean, through_sae, ablated), inputs["input_ids"].cpu(), predicts)
    return totals.result(sae.site, len(prompts), skip_first)


def reconstruction_stats(sae: SAE, source: ActivationSource, tokens: int) -> EvalStats:
    """MSE per dimension, explained variance, L0 and never-active share of ``sae`` over the first ``tokens``
    of ``source`` (the same sums as `evaluate`, without the loss passes; one batch held at a time).

    Examples:
        >>> import mechscope as ms
        >>> lm = ms.load("toy")
        >>> sae = SAE.random(lm.arch.d_model, 256, "resid_post.2", k=8, seed=0)
        >>> corpus = ["The capital of France is Paris.", "Two plus two is four."]
        >>> source = ActivationSource(lm, sae.site, corpus, shuffle=False, cycle=False)
        >>> stats = reconstruction_stats(sae, source, tokens=16)
        >>> stats.tokens, stats.l0, 0 < stats.never_active_fraction < 1
        (16, 8.0, True)

    Raises:
        InputError: the source gives no tokens.
    """
    totals = Totals(d_in=source.d_in, d_sae=sae.d_sae)
    with torch.no_grad():
        for batch in source.batches(4096):
            x = batch[: tokens - totals.tokens]
            f = sae.encode(x)
            totals.add_values(x, sae.decode(f, like=x), f)
            if totals.tokens >= tokens:
                break
    if totals.tokens == 0 or totals.active is None:
        raise InputError("the held-out documents give no tokens; give longer evaluation documents")
    n = totals.tokens
    return EvalStats(
        tokens=n,
        mse=totals.error / (n * source.d_in),
        explained_variance=1.0 - totals.error / totals.spread if totals.spread > 0 else 0.0,
        l0=float(totals.active.sum()) / n,
        never_active_fraction=float((totals.active == 0).double().mean()),
    )


__all__ = ["Splice", "Totals", "evaluate", "reconstruction_stats"]
