"""``mechscope doctor``: check that mechscope is exact on a model before trusting it.

Each check compares what mechscope's hooks see with what plain ``transformers`` computes:

* every site's hook fires in a forward pass;
* captured residuals equal ``output_hidden_states`` bit for bit;
* captured attention patterns equal eager ``output_attentions`` bit for bit;
* a left-padded batch gives the same last-token residuals as each prompt alone;
* greedy ``generate`` with the KV cache matches repeated full forward passes;
* after all of that no hook is left and the logits equal the first plain forward bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from pydantic import BaseModel
from torch import Tensor, nn

from mechscope.core.lm import LanguageModel
from mechscope.core.sites import SITE_KINDS
from mechscope.errors import MechscopeError

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


def _max_diff(a: Tensor, b: Tensor) -> float:
    return float((a.float() - b.float()).abs().max()) if a.numel() else 0.0


def _plain(lm: LanguageModel, prompts: Sequence[str], **kwargs: Any) -> Any:
    with torch.no_grad():
        return lm.model(**lm.encode(list(prompts)), **kwargs)


def check_hooks_fire(lm: LanguageModel, prompts: Sequence[str]) -> CheckResult:
    kinds = [k for k, spec in SITE_KINDS.items() if lm.arch.is_moe or not spec.moe]
    patterns = [k if k == "embed" else f"{k}.*" for k in kinds]
    patterns = [p + ".*" if SITE_KINDS[p.split(".")[0]].sub_required else p for p in patterns]
    sites = lm.sites(patterns)
    with lm.capture(sites) as cache:
        lm.forward(list(prompts[:1]))
    return CheckResult(name="every site's hook fires", passed=len(cache) == len(sites), detail=f"{len(sites)} sites")


def check_residuals(lm: LanguageModel, prompts: Sequence[str]) -> CheckResult:
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
    site = f"resid_post.{lm.arch.n_layers - 1}"
    with lm.capture([site], positions="last") as batched:
        lm.forward(list(prompts))
    worst = 0.0
    for i, prompt in enumerate(prompts):
        with lm.capture([site], positions="last") as alone:
            lm.forward([prompt])
        worst = max(worst, _max_diff(batched[site][i], alone[site][0]))
    scale = float(batched[site].abs().max())
    passed = worst <= 1e-4 * max(scale, 1.0)
    side = lm.tokenizer.padding_side
    return CheckResult(
        name=f"{side}-padded batch = unpadded", passed=passed, detail=f"max |diff| {worst:.2e} (scale {scale:.2f})"
    )


def check_generate(lm: LanguageModel, prompts: Sequence[str], steps: int = 6) -> CheckResult:
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
    ]
    results = []
    for check in checks:
        try:
            results.append(check(lm, prompts))
        except (MechscopeError, RuntimeError, ValueError) as error:
            name = (check.__doc__ or check.__name__).strip().splitlines()[0]
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
