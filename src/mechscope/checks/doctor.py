"""``mechscope doctor``: check that mechscope is exact on a model before trusting it.

Each check compares what mechscope's hooks see with what plain ``transformers`` computes:

* every site's hook fires in a forward pass;
* captured residuals equal ``output_hidden_states`` bit for bit;
* captured attention patterns equal eager ``output_attentions`` bit for bit;
* a left-padded batch gives the same last-token residuals as each prompt alone;
* greedy ``generate`` with the KV cache matches repeated full forward passes;
* the lens read-out of the last layer's ``resid_post``, computed through the map's own final norm,
  unembedding and output transform, equals the model's logits;
* ``resid_pre + attn_out + mlp_out = resid_post`` on every layer (times the family's residual multiplier);
* ``head_out`` pushed through the attention output projection equals ``attn_out`` on every layer;
* after all of that no hook is left and the logits equal the first plain forward bit for bit.

Checks that compare two computations which may round differently (padding and the last three) pass when the
largest difference is within `archmap.tolerance` of the reference's scale (``max(1, max |reference|)``):
1e-4 relative in float32, 2e-2 in 16-bit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from pydantic import BaseModel
from torch import Tensor, nn

from mechscope.core.lm import LanguageModel
from mechscope.core.sites import SITE_KINDS
from mechscope.errors import ArchitectureError, MechscopeError
from mechscope.models.archmap import gap, tolerance

DEFAULT_PROMPTS = ("The capital of France is", "Two plus two is four, and three")


class CheckResult(BaseModel):
    """One check: its name, whether it passed, and what was measured."""

    name: str
    passed: bool
    detail: str


class DoctorReport(BaseModel):
    """All checks run on one model."""

    model: str
    family: str
    checks: list[CheckResult]

    @property
    def passed(self) -> bool:
        """Whether every check passed."""
        return all(check.passed for check in self.checks)


def hook_count(model: nn.Module) -> int:
    """How many of mechscope's own hooks are registered on any module of ``model``.

    transformers installs hooks of its own (to collect ``output_hidden_states``); they are not counted.
    """
    return sum(
        getattr(fn, "__module__", "").startswith("mechscope")
        for m in model.modules()
        for hooks in (m._forward_hooks, m._forward_pre_hooks)
        for fn in hooks.values()
    )


def _plain(lm: LanguageModel, prompts: Sequence[str], **kwargs: Any) -> Any:
    with torch.no_grad():
        return lm.model(**lm.encode(list(prompts)), **kwargs)


def check_hooks_fire(lm: LanguageModel, prompts: Sequence[str]) -> CheckResult:
    """Every site of every kind the model has is captured by one forward pass (its hook fires)."""
    kinds = [k for k, spec in SITE_KINDS.items() if lm.arch.is_moe or not spec.moe]
    patterns = [k if k == "embed" else f"{k}.*" for k in kinds]
    patterns = [p + ".*" if SITE_KINDS[p.split(".")[0]].sub_required else p for p in patterns]
    sites = lm.sites(patterns)
    with lm.capture(sites) as cache:
        lm.forward(list(prompts[:1]))
    return CheckResult(name="every site's hook fires", passed=len(cache) == len(sites), detail=f"{len(sites)} sites")


def check_residuals(lm: LanguageModel, prompts: Sequence[str]) -> CheckResult:
    """The residuals equal plain transformers' hidden states bit for bit (the last one through the final norm)."""
    n = lm.arch.n_layers
    with lm.capture(["resid_pre.*", "resid_post.*"]) as cache:
        lm.forward(list(prompts[:1]))
    hidden = _plain(lm, prompts[:1], output_hidden_states=True).hidden_states
    mismatched = [f"resid_pre.{i}" for i in range(n) if not torch.equal(cache[f"resid_pre.{i}"], hidden[i])]
    mismatched += [f"resid_post.{i}" for i in range(n - 1) if not torch.equal(cache[f"resid_post.{i}"], hidden[i + 1])]
    last = cache[f"resid_post.{n - 1}"]
    norm = lm.arch.final_norm()
    with torch.no_grad():
        final = norm(last) if norm is not None else last
    if not torch.equal(final, hidden[n]):
        mismatched.append(f"resid_post.{n - 1} (through the final norm)")
    detail = "bit-identical to output_hidden_states" if not mismatched else "differ: " + ", ".join(mismatched)
    return CheckResult(name="residuals = output_hidden_states", passed=not mismatched, detail=detail)


def check_patterns(lm: LanguageModel, prompts: Sequence[str]) -> CheckResult:
    """``attn_pattern`` is bit-identical to eager attention's ``output_attentions``, layer by layer."""
    with lm.capture(["attn_pattern.*"]) as cache:
        lm.forward(list(prompts[:1]))
    config: Any = lm.model.config
    previous = config._attn_implementation
    lm.model.set_attn_implementation("eager")  # type: ignore[operator]
    try:
        attentions = _plain(lm, prompts[:1], output_attentions=True).attentions
    finally:
        lm.model.set_attn_implementation(previous)  # type: ignore[operator]
    bad = [i for i in range(lm.arch.n_layers) if not torch.equal(cache[f"attn_pattern.{i}"], attentions[i])]
    detail = f"bit-identical to eager output_attentions (model runs {previous})"
    return CheckResult(
        name="attn_pattern = output_attentions",
        passed=not bad,
        detail=detail if not bad else f"layers {bad} differ",
    )


def check_padding(lm: LanguageModel, prompts: Sequence[str]) -> CheckResult:
    """Padding changes nothing: each prompt's last-token state in a padded batch equals its own pass alone."""
    site = f"resid_post.{lm.arch.n_layers - 1}"
    with lm.capture([site], positions="last") as batched:
        lm.forward(list(prompts))
    with lm.capture([site], positions="last") as alone:
        for prompt in prompts:
            lm.forward([prompt])  # one pass per prompt: rows stack along the batch axis
    ratio, detail = _within(batched[site], alone[site])
    return CheckResult(name=f"{lm.tokenizer.padding_side}-padded batch = unpadded", passed=ratio <= 1.0, detail=detail)


def check_generate(lm: LanguageModel, prompts: Sequence[str], steps: int = 6) -> CheckResult:
    """``generate`` with the KV cache picks the same greedy tokens as full forward passes without one."""
    if lm.arch.kind != "decoder":
        return CheckResult(name="generate (KV cache) = full forward", passed=True, detail="skipped: encoder")
    encoded = lm.tokenize(list(prompts[:1]))
    with torch.no_grad():
        cached = lm.model.generate(  # type: ignore[operator]
            **encoded, max_new_tokens=steps, do_sample=False, pad_token_id=lm.tokenizer.pad_token_id
        )
        ids = encoded["input_ids"]
        for _ in range(steps):
            logits = lm.model(input_ids=ids).logits
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    n = min(cached.shape[1], ids.shape[1])
    passed = torch.equal(cached[:, :n], ids[:, :n])
    return CheckResult(
        name="generate (KV cache) = full forward",
        passed=passed,
        detail=f"{steps} greedy tokens {'match' if passed else 'differ'}",
    )


def _within(value: Tensor, reference: Tensor) -> tuple[float, str]:
    """``(ratio, detail)``: the largest difference over the allowed one (at most 1 passes) and what was measured."""
    worst, scale = gap(value, reference)
    tol = max(tolerance(value.dtype), tolerance(reference.dtype))
    ratio = worst / (tol * scale) if worst == worst else float("inf")  # NaN never passes
    return ratio, f"max |diff| {worst:.2e} (scale {scale:.2f}, tolerance {tol:g} relative)"


def _per_layer(name: str, pairs: Sequence[tuple[Tensor, Tensor]], note: str) -> CheckResult:
    """One check over layers: passes when every layer's pair is equal within tolerance; reports the worst."""
    measured = [_within(value, reference) for value, reference in pairs]
    bad = [layer for layer, (ratio, _) in enumerate(measured) if ratio > 1.0]
    worst = max(measured)[1] if measured else "no layers"
    where = f"all {len(pairs)} layers" if not bad else f"layers {bad} differ"
    return CheckResult(name=name, passed=not bad, detail=f"{where}{note}; worst {worst}")


def check_readout(lm: LanguageModel, prompts: Sequence[str]) -> CheckResult:
    """The map's read-out (final norm, unembedding, output transform) of the last residual equals the logits."""
    name = "lens read-out of the last layer = logits"
    if lm.arch.kind != "decoder" or lm.arch.unembed() is None:
        return CheckResult(name=name, passed=True, detail="skipped: no unembedding (no lens)")
    site = f"resid_post.{lm.arch.n_layers - 1}"
    with torch.no_grad():
        with lm.capture([site]) as cache:
            logits = lm.forward(list(prompts[:1]))
        try:
            read = lm.arch.logits(cache[site])  # the map's own final norm, unembedding and output transform
        except ArchitectureError as error:
            return CheckResult(name=name, passed=False, detail=str(error))
    ratio, detail = _within(read, logits)
    applied = ", ".join(lm.arch.spec.output_transform) or "no output transform"
    return CheckResult(name=name, passed=ratio <= 1.0, detail=f"{detail}; applies {applied}")


def check_decomposition(lm: LanguageModel, prompts: Sequence[str]) -> CheckResult:
    """``resid_pre + attn_out + mlp_out = resid_post`` at every layer, within tolerance (decoders)."""
    name = "resid_pre + attn_out + mlp_out = resid_post"
    if lm.arch.kind == "encoder":
        return CheckResult(name=name, passed=True, detail="skipped: post-LayerNorm encoder (a norm follows each sum)")
    with torch.no_grad(), lm.capture(["resid_pre.*", "attn_out.*", "mlp_out.*", "resid_post.*"]) as cache:
        lm.forward(list(prompts[:1]))
    m = lm.arch.residual_scale
    pairs = [
        (
            cache[f"resid_pre.{i}"] + cache[f"attn_out.{i}"] * m + cache[f"mlp_out.{i}"] * m,
            cache[f"resid_post.{i}"],
        )
        for i in range(lm.arch.n_layers)
    ]
    return _per_layer(name, pairs, f" (attn_out and mlp_out x {lm.arch.spec.residual_scale} = {m:g})" if m != 1 else "")


def check_head_out(lm: LanguageModel, prompts: Sequence[str]) -> CheckResult:
    """The output projection of the concatenated ``head_out`` gives ``attn_out`` at every layer, within tolerance."""
    name = "o_proj(head_out) = attn_out"
    spec = lm.arch.spec
    # attn_out is the attention module's output (the projection's), the projection's own output (BERT), or
    # the norm applied to it (post-norm families): then the projection's output goes through that norm too.
    through = spec.attn_out not in (spec.attn, spec.o_proj)
    with torch.no_grad():
        with lm.capture(["head_out.*", "attn_out.*"]) as cache:
            lm.forward(list(prompts[:1]))
        pairs = []
        for i in range(lm.arch.n_layers):
            heads = cache[f"head_out.{i}"]
            out = lm.arch.part("o_proj", i)(heads.reshape(*heads.shape[:-2], -1))
            if through:
                out = lm.arch.part("attn_out", i)(out)
            pairs.append((out, cache[f"attn_out.{i}"]))
    return _per_layer(name, pairs, f" (then through '{spec.attn_out}')" if through else "")


def run_doctor(lm: LanguageModel, prompts: Sequence[str] = DEFAULT_PROMPTS) -> DoctorReport:
    """Run every check on ``lm`` and report; a check that raises is reported as failed."""
    hooks_before = hook_count(lm.model)
    reference = _plain(lm, prompts[:1])
    checks: list[Callable[[LanguageModel, Sequence[str]], CheckResult]] = [
        check_hooks_fire,
        check_residuals,
        check_patterns,
        check_padding,
        check_generate,
        check_readout,
        check_decomposition,
        check_head_out,
    ]
    results = []
    for check in checks:
        try:
            results.append(check(lm, prompts))
        except (MechscopeError, RuntimeError, ValueError) as error:
            # it raised before naming its result: name it after its function
            name = check.__name__.removeprefix("check_").replace("_", " ")
            results.append(CheckResult(name=name, passed=False, detail=f"{type(error).__name__}: {error}"))
    after = _plain(lm, prompts[:1])
    left = hook_count(lm.model) - hooks_before
    same = torch.equal(_output(reference), _output(after))
    results.append(
        CheckResult(
            name="hooks removed, outputs unchanged",
            passed=left == 0 and same,
            detail=f"{left} hooks left; outputs {'bit-identical' if same else 'CHANGED'}",
        )
    )
    return DoctorReport(model=lm.source, family=lm.arch.family, checks=results)


def _output(output: Any) -> Tensor:
    logits = getattr(output, "logits", None)
    result: Tensor = logits if logits is not None else output.last_hidden_state
    return result
