"""Vocabulary contribution of experts: the tokens each expert's output pushes up and down, as the lens reads it.

Definitions (``v`` is a vector an expert adds to the residual stream, ``d`` = d_model):

* **Direct read-out** (direct logit attribution). The lens reads a residual ``r`` as ``T(W_U norm(r))``: the
  final norm, the unembedding ``W_U [vocab, d]`` and the family's output transform ``T``. For an RMSNorm
  ``norm(r) = γ ⊙ r / rms(r)``, so the residual's logits are a sum over the components ``v`` written into it
  of ``logits(v) = c · W_U (γ ⊙ v)``, each divided by the same ``rms(r)``. That ``1 / rms(r)`` depends on the
  whole residual at a position, not on the expert, and is the same for every component there, so it is left
  out: ``logits(v)`` ranks tokens exactly as ``v``'s share of the real logits does, and the size of ``v`` is
  reported separately (`VocabReadout.norm`). A LayerNorm also centres: ``logits(v) = c · W_U (γ ⊙ (v -
  mean(v)))``. The norm's bias and the unembedding's bias are left out: they are added once per position and
  belong to no expert. ``γ`` is the norm's effective scale (Gemma's ``1 + w`` included), identified by
  checking the module's own output on a probe (`mechscope.moe.readout`). ``c`` is the product of the linear output
  transforms (Granite's ``1 / logits_scaling``, Cohere's ``logit_scale``); soft-capping is not linear in the
  residual, has no per-component share, and is left out (no MoE family of the map uses it).
* **Residual share of an expert.** What the MoE block adds to the residual for expert ``e`` at token ``t`` is
  ``v = s · w_e(t) · E_e(x_t)``: its own output ``E_e`` (the ``expert_out.<layer>.<e>`` site, computed at
  routing weight 1) times its routing weight ``w_e(t)`` and the family's residual multiplier ``s`` (Granite;
  1 elsewhere). Shared experts (Qwen2-MoE) are not routed experts and are not included.
* **From a corpus.** ``v_e = s · Σ_t w_e(t) E_e(x_t) / N_e``, the mean over the ``N_e`` real corpus tokens routed
  to ``e`` (one of their top-k slots) of what the block adds for ``e`` there, then the direct read-out. The
  corpus is streamed: running float64 sums, one batch of captures in memory (all experts of the asked layers
  for one batch: ``layers x experts x batch tokens x d`` values; lower ``batch_size`` or ``max_tokens`` or
  pass fewer ``layers`` for a large model).
* **From the weights alone.** ``u_e = s · E_{x ~ N(μ, diag γ_mlp²)}[E_e(x)]``: the expert's expected output
  (at routing weight 1) when its input is Gaussian with the pre-MLP norm's scale ``γ_mlp`` and bias ``μ`` (0
  for an RMSNorm), i.e. a normalised input that favours no direction but the norm's own. Per hidden unit
  ``j`` the gate and up pre-activations ``a_j = g_j · x + b_g,j`` and ``b_j = u_j · x + b_u,j`` are jointly
  Gaussian with moments read off the weights, so ``u_e = s · (D_e m + b_down)`` with ``m_j = E[φ(a_j, b_j)]``
  computed by a Gauss-Hermite product rule (`QUADRATURE_NODES` per axis) through the module's own gating
  function ``_apply_gate`` (GPT-OSS's clamped, biased GLU included). For the usual ``act(a) · b`` gate with
  ``act(a) - act(-a) = a`` (SiLU, GELU, ReLU) and no biases this is exact and closed-form: ``m_j = ½ Σ_k
  g_jk γ_k² u_jk`` (Stein's lemma; the rule integrates it exactly, its nodes being symmetric). Only one
  expert's tensors are copied at a time, never the layer's 3-D tensors.

  Why this: the column mean of ``D_e`` or its top singular direction ignore which mixtures of hidden units the
  expert produces (and a singular vector has no sign). Measured on toy-moe (400 organism documents, Pearson
  over the vocabulary against the corpus read-out): 0.78 with the same expert on average, 0.41 with the other
  experts of its layer, and each expert's own corpus read-out is its best match (by ≥ 0.09) on every layer;
  the column mean reaches 0.04, the signed top singular direction 0.35, the output on the router's direction 0.39.
* **Agreement.** `ExpertVocab.agreement` is the Pearson correlation over the vocabulary between the two
  read-outs of an expert, ``others_agreement`` the mean correlation of its weights read-out with the other
  experts' corpus read-outs (the baseline), ``overlap`` the size of the intersection of the two top-k
  promoted lists.

Examples:
    >>> import mechscope as ms
    >>> lm = ms.load("toy-moe")
    >>> result = vocab(lm, layers=[3], top_k=5, prompts=["The capital of France is", "Two plus two is"])
    >>> row = result.layer(3).expert(0)
    >>> len(row.weights.promoted), row.routed > 0, -1 <= row.agreement <= 1
    (5, True, True)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from mechscope.errors import ArchitectureError, InputError
from mechscope.moe.info import moe_layers
from mechscope.moe.readout import DirectReadout, NormAffine, direct_readout, norm_affine
from mechscope.moe.vocab_results import ExpertVocab, LayerVocab, VocabContribution, VocabReadout, VocabToken

if TYPE_CHECKING:
    from torch import Tensor, nn

    from mechscope.core.lm import LanguageModel

#: Gauss-Hermite nodes per axis of the weights-only expectation (a product rule: this squared points per unit).
QUADRATURE_NODES = 32
#: Pre-activation values evaluated at once by the quadrature (points x hidden units x 2).
_QUADRATURE_BATCH = 1 << 22


def _expert(module: nn.Module, expert: int) -> dict[str, Tensor]:
    """One expert's float64 tensors in ``nn.Linear`` orientation: ``gate, up [h, d]``, ``down [d, h]``, biases."""
    from mechscope.moe.packed import read_experts

    if not hasattr(module, "_apply_gate"):
        raise ArchitectureError(
            f"{type(module).__name__} does not declare its gate (transformers' use_experts_implementation); "
            "the weights-only read-out runs it"
        )
    views = read_experts(module, copy=False).expert(expert)  # views of the packed tensors: one expert copied
    return {name: tensor.double() for name, tensor in views.items()}


def expected_output(module: nn.Module, expert: int, inputs: NormAffine, nodes: int = QUADRATURE_NODES) -> Tensor:
    """``[d_model]`` float64: expert ``expert``'s mean output (routing weight 1) on ``x ~ N(bias, diag scale²)``.

    ``inputs`` is the pre-MLP norm's affine part (``bias`` None: mean 0). See the module docstring.
    """
    import numpy as np
    import torch

    t = _expert(module, expert)
    device = t["down"].device
    var = inputs.scale.to(device).pow(2)
    mean = torch.zeros_like(var) if inputs.bias is None else inputs.bias.to(device)
    gate, up = t["gate"], t["up"]
    mu_a, mu_b = gate @ mean + t.get("gate_bias", 0), up @ mean + t.get("up_bias", 0)
    sd_a = (gate.pow(2) @ var).sqrt()
    cov = (gate * up) @ var
    # b = mu_b + slope * z1 + rest * z2 with a = mu_a + sd_a * z1: the Cholesky factor of the pair's covariance.
    slope = torch.where(sd_a > 0, cov / sd_a.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
    rest = (up.pow(2) @ var - slope.pow(2)).clamp_min(0).sqrt()
    z, w = np.polynomial.hermite_e.hermegauss(nodes)
    z1 = torch.tensor(z, dtype=torch.float64, device=device).repeat_interleave(nodes)[:, None]
    z2 = torch.tensor(z, dtype=torch.float64, device=device).repeat(nodes)[:, None]
    weights = torch.tensor(np.outer(w, w).reshape(-1) / (2 * math.pi), dtype=torch.float64, device=device)
    apply_gate: Callable[[Tensor], Tensor] = getattr(module, "_apply_gate")  # noqa: B009 (an untyped attribute)
    hidden = gate.shape[0]
    step = max(1, _QUADRATURE_BATCH // (2 * nodes * nodes))
    means = []
    with torch.no_grad():
        for lo in range(0, hidden, step):
            units = slice(lo, lo + step)
            a = mu_a[units] + sd_a[units] * z1
            b = mu_b[units] + slope[units] * z1 + rest[units] * z2
            # The module's own gating on [points, 2 * units] in its own layout: [gate; up] or interleaved.
            both = torch.cat([a, b], dim=1) if module.is_concatenated else torch.stack([a, b], dim=2).flatten(1)
            means.append(weights @ apply_gate(both).double())
    out: Tensor = t["down"] @ torch.cat(means) + t.get("down_bias", 0)
    return out


def expected_outputs(lm: LanguageModel, layer: int) -> tuple[Tensor, Literal["mlp_norm", "identity"]]:
    """``([expert, d_model] float64, input scale)``: every expert's weights-only vector ``u_e`` at ``layer``.

    The vectors include the residual multiplier (what the block would add at routing weight 1).

    Raises:
        ArchitectureError: the experts module does not declare its packed layout and gate.
    """
    import torch

    from mechscope.models.archmap import get_submodule
    from mechscope.models.block_weights import BLOCK_WEIGHTS

    arch = lm.arch
    row = BLOCK_WEIGHTS.get(arch.family)
    path = None if row is None else row.mlp_norm
    scale: Literal["mlp_norm", "identity"] = "identity" if path is None else "mlp_norm"
    norm = None if path is None else get_submodule(arch.layer(layer), path)
    inputs = norm_affine(norm, arch.d_model, f"pre-MLP norm of layer {layer}")
    module = arch.part("experts", layer)
    rows = [expected_output(module, e, inputs).cpu() for e in range(arch.n_experts)]
    return torch.stack(rows) * arch.residual_scale, scale


@dataclass(frozen=True)
class CorpusOutputs:
    """What each expert added to the residual over a corpus, on average (see the module docstring).

    Attributes:
        means: layer -> ``[expert, d_model]`` float64 mean router-weighted output (zero rows: never routed).
        routed: layer -> ``[expert]`` tokens routed to each expert.
        tokens: real corpus tokens.
    """

    means: dict[int, Tensor]
    routed: dict[int, Tensor]
    tokens: int


def mean_outputs(
    lm: LanguageModel,
    prompts: Sequence[str],
    layers: Sequence[int],
    *,
    batch_size: int = 16,
    max_tokens: int | None = None,
    progress: bool = False,
) -> CorpusOutputs:
    """Stream ``prompts`` and average each expert's router-weighted output over the tokens routed to it.

    Raises:
        InputError: the corpus is empty, a prompt is empty or too long, or the batch size is below 1.
    """
    import torch

    from mechscope.moe.packed import corpus_batches
    from mechscope.progress import bar

    if isinstance(prompts, str):
        raise InputError("the vocabulary contribution takes a list of prompts (a corpus), not one string")
    if len(prompts) == 0:
        raise InputError("the corpus is empty; give at least one prompt (one per line of the prompts file)")
    if batch_size < 1:
        raise InputError(f"the batch size must be at least 1, got {batch_size}")
    arch = lm.arch
    n, d = arch.n_experts, arch.d_model
    batches = list(corpus_batches(lm, prompts, batch_size, max_tokens))  # checks every prompt before running
    sites = [f"{kind}.{layer}" for layer in layers for kind in ("expert_index", "expert_weight")]
    sites += [f"expert_out.{layer}.{e}" for layer in layers for e in range(n)]
    # The sums stay where each layer's captures are (no host sync per expert and batch); moved to the CPU at the end.
    sums: dict[int, Tensor] = {}
    routed: dict[int, Tensor] = {}
    tokens = 0
    experts = torch.arange(n)
    with bar("experts' outputs", len(batches), enabled=progress) as shown:
        for encoded in batches:
            with lm.capture(sites) as cache, torch.no_grad():
                lm.model(**encoded, use_cache=False)
            mask = encoded["attention_mask"].bool()
            tokens += int(mask.sum())
            for layer in layers:
                index = cache[f"expert_index.{layer}"]
                device = index.device
                real = mask.to(device)
                if layer not in sums:
                    sums[layer] = torch.zeros(n, d, dtype=torch.float64, device=device)
                    routed[layer] = torch.zeros(n, dtype=torch.long, device=device)
                hit = index[real][..., None] == experts.to(device)  # [tokens, top_k, expert]
                weight = (cache[f"expert_weight.{layer}"][real][..., None].double() * hit).sum(dim=1)
                routed[layer] += hit.any(dim=1).sum(dim=0)
                for e in range(n):  # what the block adds for e: its weight times its own output
                    sums[layer][e] += weight[:, e] @ cache[f"expert_out.{layer}.{e}"][real].double()
            if shown is not None:
                shown.advance(1)
    scale = arch.residual_scale
    counts = {layer: routed[layer].cpu() for layer in layers}
    means = {layer: sums[layer].cpu() * scale / counts[layer].clamp_min(1)[:, None].double() for layer in layers}
    return CorpusOutputs(means, counts, tokens)


def vocab(
    lm: LanguageModel,
    *,
    layers: Sequence[int] | None = None,
    top_k: int = 30,
    prompts: Sequence[str] | None = None,
    batch_size: int = 16,
    max_tokens: int | None = None,
    progress: bool = False,
) -> VocabContribution:
    """The tokens each expert promotes and suppresses, from its weights and (given ``prompts``) a corpus.

    Args:
        layers: MoE layers to read (negative from the end; default: every MoE layer).
        top_k: tokens listed each way per read-out.
        prompts: the corpus; None reads the weights only.
        batch_size, max_tokens: at most this many prompts, and padded tokens, per forward pass.
        progress: a progress bar on stderr (only on a terminal).

    Examples:
        >>> import mechscope as ms
        >>> lm = ms.load("toy-moe")
        >>> calls = [
        ...     "<user> Tell me the local time in Bern. <assistant> <call>time(city=Bern)</call>",
        ...     "<user> Look up hotels in Ankara. <assistant> <call>search(query=hotels Ankara)</call>",
        ... ]
        >>> result = vocab(lm, layers=[1], top_k=3, prompts=calls)
        >>> row = result.layer(1).expert(2)  # the planted tool-call expert
        >>> [t.token for t in row.weights.promoted], [t.token for t in row.corpus.promoted], row.routed
        ([' I', ' Ahoy', ' is'], ["'s", ' in', ' lives'], 26)
        >>> same, others = result.layer(1).agreement()  # each expert's two read-outs, against other experts'
        >>> round(same, 2), round(others, 2)
        (0.71, 0.41)

    Raises:
        MoEError: the model has no experts.
        SiteError: a layer is outside the model or has no router (the message lists the MoE layers).
        InputError: ``top_k`` is not between 1 and the vocabulary size, or the corpus is empty or unusable.
        ArchitectureError: the model's read-out or experts are not of a kind this reads.
    """
    chosen = moe_layers(lm, layers)
    readout = direct_readout(lm)
    if isinstance(top_k, bool) or not 1 <= top_k <= readout.vocab:
        raise InputError(f"top-k must be between 1 and the vocabulary size {readout.vocab}, got {top_k}")
    corpus = None
    if prompts is not None:
        corpus = mean_outputs(lm, prompts, chosen, batch_size=batch_size, max_tokens=max_tokens, progress=progress)
    rows, scale = [], "mlp_norm"
    for layer in chosen:
        vectors, scale = expected_outputs(lm, layer)
        rows.append(LayerVocab(layer=layer, experts=_layer_rows(lm, readout, vectors, corpus, layer, top_k)))
    return VocabContribution(
        model=lm.source,
        family=lm.arch.family,
        top_k=top_k,
        input_scale="identity" if scale == "identity" else "mlp_norm",
        readout=readout.description,
        prompts=0 if prompts is None else len(prompts),
        tokens=0 if corpus is None else corpus.tokens,
        layers=rows,
    )


def _layer_rows(
    lm: LanguageModel,
    readout: DirectReadout,
    vectors: Tensor,
    corpus: CorpusOutputs | None,
    layer: int,
    top_k: int,
) -> list[ExpertVocab]:
    """One row per expert of ``layer``: both read-outs, their agreement and overlap."""
    weights_logits = readout.logits(vectors)
    n = vectors.shape[0]
    if corpus is None:
        return [ExpertVocab(expert=e, weights=_tokens(lm, weights_logits[e], vectors[e], top_k)) for e in range(n)]
    routed = corpus.routed[layer]
    means = corpus.means[layer]
    corpus_logits = readout.logits(means)
    corr = _pearson(weights_logits, corpus_logits)  # [weights expert, corpus expert]
    seen = [e for e in range(n) if int(routed[e]) > 0]
    rows = []
    for e in range(n):
        weights = _tokens(lm, weights_logits[e], vectors[e], top_k)
        if e not in seen:
            rows.append(ExpertVocab(expert=e, weights=weights))
            continue
        mine = _tokens(lm, corpus_logits[e], means[e], top_k)
        others = [corr[e][o] for o in seen if o != e and math.isfinite(corr[e][o])]
        shared = {t.token_id for t in weights.promoted} & {t.token_id for t in mine.promoted}
        rows.append(
            ExpertVocab(
                expert=e,
                weights=weights,
                corpus=mine,
                routed=int(routed[e]),
                agreement=corr[e][e] if math.isfinite(corr[e][e]) else None,
                others_agreement=sum(others) / len(others) if others else None,
                overlap=len(shared),
            )
        )
    return rows


def _pearson(a: Tensor, b: Tensor) -> list[list[float]]:
    """``[i][j]``: Pearson correlation of row i of ``a`` with row j of ``b`` (NaN where a row is constant)."""
    import torch

    def unit(x: Tensor) -> Tensor:
        centred = x - x.mean(dim=-1, keepdim=True)
        norm = centred.norm(dim=-1, keepdim=True)
        return torch.where(norm > 0, centred / norm.clamp_min(torch.finfo(x.dtype).tiny), torch.nan)

    matrix: list[list[float]] = (unit(a) @ unit(b).T).clamp(-1, 1).cpu().tolist()
    return matrix


def _tokens(lm: LanguageModel, logits: Tensor, vector: Tensor, top_k: int) -> VocabReadout:
    """The ``top_k`` promoted and suppressed tokens of one read-out."""
    top = logits.topk(top_k)
    bottom = (-logits).topk(top_k)

    def listed(ids: Tensor, values: Tensor) -> list[VocabToken]:
        texts = lm.token_texts(ids.cpu())
        return [
            VocabToken(token=text, token_id=int(i), logit=float(v))
            for text, i, v in zip(texts, ids.tolist(), values.tolist(), strict=True)
        ]

    return VocabReadout(
        promoted=listed(top.indices, top.values),
        suppressed=listed(bottom.indices, -bottom.values),
        norm=float(vector.norm()),
    )
