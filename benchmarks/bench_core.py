"""Core overhead benchmarks for mechscope: capture and intervention cost next to a plain forward.

Run from the repository root:

    .venv/bin/python benchmarks/bench_core.py                 # full run (a few minutes on 2 cores)
    .venv/bin/python benchmarks/bench_core.py --quick         # fewer repetitions (smoke test)
    .venv/bin/python benchmarks/bench_core.py --json out.json # also write every sample as JSON

Benchmarks (all CPU, float32):

1. ``fixed``:    per-call cost on a tiny 2-layer d=64 GPT-2, input ids 1 x 16.
2. ``gpt2s``:    capture of resid_post on a GPT-2-small-shaped random model, batch 8 x 128.
3. ``generate``: 32 greedy tokens on the same model, with and without a steering intervention.

Method: every benchmark warms each variant up first, then runs ``reps`` repetitions; inside one
repetition every variant runs once (each "run" being ``inner`` calls timed together with
``time.perf_counter``), in an order shuffled per repetition so that noise on the shared machine
hits all variants alike. We report the median seconds per call, the ratio of that median to the
median of the plain transformers forward measured in the same process on the same inputs under
``torch.no_grad()``, and the median of the per-repetition paired ratios (variant / plain in the
same repetition), which is less sensitive to slow drifts in machine load.

Peers (nnsight, TransformerLens) are measured in benchmark 1 when they import in this interpreter
(see benchmarks/README.md for the separate venv they live in); otherwise their rows say why not.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

# --------------------------------------------------------------------------- timing


@dataclass
class Row:
    """One measured variant of one benchmark."""

    bench: str
    variant: str
    median_s: float | None = None
    ratio: float | None = None  # median(variant) / median(plain)
    paired_ratio: float | None = None  # median over reps of variant/plain in the same rep
    target: float | None = None
    note: str = ""
    samples_s: list[float] = field(default_factory=list)

    @property
    def met(self) -> str:
        if self.target is None or self.ratio is None:
            return ""
        return "yes" if self.ratio <= self.target else "NO"


def measure(
    variants: dict[str, Callable[[], Any]],
    *,
    reps: int,
    warmup: int,
    inner: int,
    seed: int = 0,
) -> dict[str, list[float]]:
    """Seconds per call of each variant, one sample per repetition, variants interleaved."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    order = list(variants)
    rng = random.Random(seed)
    for _ in range(reps):
        rng.shuffle(order)
        for name in order:
            fn = variants[name]
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            samples[name].append((time.perf_counter() - start) / inner)
    return samples


def summarise(
    bench: str,
    samples: dict[str, list[float]],
    *,
    baseline: str = "plain",
    targets: dict[str, float] | None = None,
    notes: dict[str, str] | None = None,
) -> list[Row]:
    targets = targets or {}
    notes = notes or {}
    base = samples[baseline]
    base_median = statistics.median(base)
    rows = []
    for name, values in samples.items():
        median = statistics.median(values)
        paired = statistics.median(v / b for v, b in zip(values, base, strict=True))
        rows.append(
            Row(
                bench=bench,
                variant=name,
                median_s=median,
                ratio=median / base_median,
                paired_ratio=paired,
                target=targets.get(name),
                note=notes.get(name, ""),
                samples_s=values,
            )
        )
    return rows


# --------------------------------------------------------------------------- models


def _quiet_transformers() -> None:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    with contextlib.suppress(Exception):
        import huggingface_hub.utils as hf_utils

        hf_utils.disable_progress_bars()
    warnings.filterwarnings("ignore")


TINY = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4}
from mechscope.testing.tiny_models import GPT2_SMALL  # noqa: E402 - after the warning filters above


def build(workdir: Path, name: str, config: dict[str, Any]) -> Path:
    from mechscope.testing.tiny_models import build_tiny_model

    folder = workdir / name
    if (folder / "config.json").exists():
        return folder
    return build_tiny_model("gpt2", folder, **config)


def hf_model(folder: Path, **kwargs: Any) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kwargs)
    return model.eval()


def random_ids(shape: tuple[int, int], vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


def layer_list(model: torch.nn.Module) -> list[torch.nn.Module]:
    return list(model.transformer.h)  # GPT-2 layout


def bare_hooks_call(model: torch.nn.Module, ids: torch.Tensor) -> Callable[[], dict[int, torch.Tensor]]:
    """Register a forward hook per layer storing its output, run, remove the hooks."""
    layers = layer_list(model)

    def run() -> dict[int, torch.Tensor]:
        store: dict[int, torch.Tensor] = {}
        handles = []
        for i, layer in enumerate(layers):

            def hook(module: Any, args: Any, output: Any, i: int = i) -> None:
                store[i] = output[0] if isinstance(output, tuple) else output

            handles.append(layer.register_forward_hook(hook))
        try:
            with torch.no_grad():
                model(input_ids=ids)
        finally:
            for handle in handles:
                handle.remove()
        return store

    return run


def plain_call(model: torch.nn.Module, ids: torch.Tensor) -> Callable[[], Any]:
    def run() -> Any:
        with torch.no_grad():
            return model(input_ids=ids)

    return run


# --------------------------------------------------------------------------- peers


def nnsight_variant(folder: Path, ids: torch.Tensor, n_layers: int) -> tuple[Callable[[], Any] | None, str]:
    try:
        import nnsight
        from nnsight import NNsight
    except Exception as exc:
        return None, f"not importable here ({type(exc).__name__}: {exc})"[:160]
    wrapped = NNsight(hf_model(folder))

    def run() -> list[torch.Tensor]:
        saved = []
        with torch.no_grad(), wrapped.trace(input_ids=ids):
            for i in range(n_layers):
                saved.append(wrapped.transformer.h[i].output.save())
        return saved

    return run, f"nnsight {getattr(nnsight, '__version__', '?')}: NNsight(model).trace + .save() per layer"


def transformer_lens_variants(
    folder: Path, ids: torch.Tensor, n_layers: int
) -> tuple[Callable[[], Any] | None, Callable[[], Any] | None, str]:
    """TransformerLens run_with_cache, and a plain eager-attention forward (its own baseline)."""
    try:
        from importlib.metadata import version

        from transformer_lens.model_bridge import TransformerBridge
        from transformers import AutoTokenizer

        tl_version = version("transformer-lens")
    except Exception as exc:
        return None, None, f"not importable here ({type(exc).__name__}: {exc})"[:160]
    bridge = TransformerBridge.boot_transformers(
        str(folder), hf_model=hf_model(folder), tokenizer=AutoTokenizer.from_pretrained(folder)
    )
    names = [f"blocks.{i}.hook_resid_post" for i in range(n_layers)]

    def run() -> Any:
        with torch.no_grad():
            return bridge.run_with_cache(ids, names_filter=names)

    eager = hf_model(folder, attn_implementation="eager")
    note = (
        f"transformer-lens {tl_version}: TransformerBridge.boot_transformers(hf_model=...)."
        "run_with_cache(names_filter=hook_resid_post x all layers); the bridge forces eager attention"
    )
    return run, plain_call(eager, ids), note


# --------------------------------------------------------------------------- benchmarks


def bench_fixed(workdir: Path, args: argparse.Namespace, ms: Any) -> list[Row]:
    folder = build(workdir, "tiny-gpt2", TINY)
    lm = ms.load(folder, dtype="float32", device="cpu")
    ids = random_ids((1, 16), lm.model.config.vocab_size)
    n_layers = TINY["num_hidden_layers"]

    def mechscope_capture() -> Any:
        with lm.capture(["resid_post.*"], positions="all") as cache:
            lm.forward(ids)
        return cache

    variants: dict[str, Callable[[], Any]] = {
        "plain": plain_call(lm.model, ids),
        "mechscope capture": mechscope_capture,
        "bare torch hooks": bare_hooks_call(lm.model, ids),
    }
    notes = {
        "plain": "lm.model(input_ids=ids) under torch.no_grad()",
        "mechscope capture": 'with lm.capture(["resid_post.*"]) as c: lm.forward(ids)',
        "bare torch hooks": "register_forward_hook per layer, run, remove",
    }
    unavailable: list[Row] = []

    # Reference values every variant must reproduce (so all do the same work).
    reference = bare_hooks_call(lm.model, ids)()
    cache = mechscope_capture()
    for i in range(n_layers):
        torch.testing.assert_close(cache[f"resid_post.{i}"], reference[i])

    if not args.no_peers:
        run_nn, note = nnsight_variant(folder, ids, n_layers)
        if run_nn is None:
            unavailable.append(Row("fixed", "nnsight trace+save", note=note))
        else:
            saved = run_nn()
            for i in range(n_layers):
                torch.testing.assert_close(saved[i], reference[i])
            if saved[0].requires_grad:
                note += " (WARNING: outputs require grad)"
            variants["nnsight trace+save"] = run_nn
            notes["nnsight trace+save"] = note
        run_tl, run_eager, note = transformer_lens_variants(folder, ids, n_layers)
        if run_tl is None or run_eager is None:
            unavailable.append(Row("fixed", "TransformerLens run_with_cache", note=note))
        else:
            _, tl_cache = run_tl()
            for i in range(n_layers):
                torch.testing.assert_close(tl_cache[f"blocks.{i}.hook_resid_post"], reference[i])
            variants["TransformerLens run_with_cache"] = run_tl
            notes["TransformerLens run_with_cache"] = note
            variants["plain, eager attention"] = run_eager
            notes["plain, eager attention"] = "separate HF copy loaded with attn_implementation='eager'"

    samples = measure(variants, reps=args.reps_fixed, warmup=args.warmup_fixed, inner=args.inner_fixed)
    rows = summarise("fixed", samples, targets={"mechscope capture": 1.10}, notes=notes)
    eager = next((r for r in rows if r.variant == "plain, eager attention"), None)
    tl = next((r for r in rows if r.variant == "TransformerLens run_with_cache"), None)
    if eager and tl and eager.median_s and tl.median_s:
        tl.note += f"; vs the eager plain forward: {tl.median_s / eager.median_s:.2f}x"
    return rows + unavailable


def bench_gpt2s(workdir: Path, args: argparse.Namespace, ms: Any) -> list[Row]:
    folder = build(workdir, "gpt2-small-random", GPT2_SMALL)
    lm = ms.load(folder, dtype="float32", device="cpu")
    ids = random_ids((8, 128), GPT2_SMALL["vocab_size"])

    def capture(**kwargs: Any) -> Callable[[], Any]:
        def run() -> Any:
            with lm.capture(["resid_post.*"], **kwargs) as cache:
                lm.forward(ids)
            return cache

        return run

    variants = {
        "plain": plain_call(lm.model, ids),
        "capture all positions": capture(positions="all"),
        'capture to="cpu" dtype=float16': capture(positions="all", to="cpu", dtype="float16"),
        'capture positions="last"': capture(positions="last"),
        "bare torch hooks": bare_hooks_call(lm.model, ids),
    }
    targets = {
        "capture all positions": 1.03,
        'capture to="cpu" dtype=float16': 1.05,
        'capture positions="last"': 1.05,
    }
    # Sanity: the fp16 and last-position captures hold what they should.
    cache = variants['capture to="cpu" dtype=float16']()
    assert cache["resid_post.11"].dtype == torch.float16 and cache["resid_post.11"].shape == (8, 128, 768)
    cache = variants['capture positions="last"']()
    assert cache["resid_post.11"].shape == (8, 768)
    samples = measure(variants, reps=args.reps_gpt2s, warmup=args.warmup_gpt2s, inner=1)
    return summarise("gpt2s", samples, targets=targets, notes={"bare torch hooks": "reference, not a target"})


PROMPT = "The capital of France is Paris. The cat is"  # 16 tokens with the tiny tokenizer


def bench_generate(workdir: Path, args: argparse.Namespace, ms: Any) -> list[Row]:
    folder = build(workdir, "gpt2-small-random", GPT2_SMALL)
    lm = ms.load(folder, dtype="float32", device="cpu")
    vector = torch.randn(GPT2_SMALL["hidden_size"], generator=torch.Generator().manual_seed(1))
    new = 32
    kwargs = {"max_new_tokens": new, "min_new_tokens": new}

    def plain() -> str:
        return lm.generate(PROMPT, **kwargs)

    def steered() -> str:
        with lm.intervene({"resid_post.6": ms.ops.add(vector, coeff=4.0)}):
            return lm.generate(PROMPT, **kwargs)

    # Sanity: both produce exactly `new` tokens and the steering changes them.
    encoded = lm.tokenize(PROMPT)
    prompt_len = encoded["input_ids"].shape[1]
    options = {"do_sample": False, "pad_token_id": lm.tokenizer.pad_token_id, **kwargs}
    with torch.no_grad():
        out_plain = lm.model.generate(**encoded, **options)
        with lm.intervene({"resid_post.6": ms.ops.add(vector, coeff=4.0)}):
            out_steer = lm.model.generate(**encoded, **options)
    assert out_plain.shape[1] - prompt_len == new and out_steer.shape[1] - prompt_len == new
    changed = int((out_plain[:, prompt_len:] != out_steer[:, prompt_len:]).sum())

    samples = measure(
        {"plain": plain, "steered (resid_post.6 add)": steered},
        reps=args.reps_generate,
        warmup=args.warmup_generate,
        inner=1,
    )
    return summarise(
        "generate",
        samples,
        targets={"steered (resid_post.6 add)": 1.05},
        notes={
            "plain": f"lm.generate, prompt {prompt_len} tokens, {new} new tokens (greedy)",
            "steered (resid_post.6 add)": f"ms.ops.add(randn(768), coeff=4.0); {changed}/{new} tokens differ",
        },
    )


# --------------------------------------------------------------------------- report

TITLES = {
    "fixed": "1. Fixed per-call cost: tiny GPT-2 (2 layers, d=64), ids 1x16",
    "gpt2s": "2. GPT-2-small-shaped random model (12 layers, d=768), ids 8x128",
    "generate": "3. generate 32 new tokens (greedy), GPT-2-small-shaped, 1 prompt",
}


def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    if seconds < 1e-2:
        return f"{seconds * 1e6:.0f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.3f} s"


def table(rows: list[Row]) -> str:
    lines = []
    for bench in TITLES:
        selected = [r for r in rows if r.bench == bench]
        if not selected:
            continue
        lines.append(f"\n### {TITLES[bench]}\n")
        lines.append("| variant | median / call | ratio to plain | paired ratio | target | met | note |")
        lines.append("|---|---:|---:|---:|---:|:---:|---|")
        for r in selected:
            ratio = f"{r.ratio:.3f}x" if r.ratio is not None else "n/a"
            paired = f"{r.paired_ratio:.3f}x" if r.paired_ratio is not None else "n/a"
            target = f"<= {r.target:.2f}x" if r.target is not None else ""
            lines.append(
                f"| {r.variant} | {fmt_time(r.median_s)} | {ratio} | {paired} | {target} | {r.met} | {r.note} |"
            )
    return "\n".join(lines)


def environment(args: argparse.Namespace) -> dict[str, Any]:
    import transformers

    env: dict[str, Any] = {
        "date": _dt.date.today().isoformat(),
        "python": platform.python_version(),
        "executable": sys.executable,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "quick": args.quick,
    }
    for name, dist in (("nnsight", "nnsight"), ("transformer_lens", "transformer-lens")):
        try:
            from importlib.metadata import version

            env[name] = version(dist)
        except Exception:
            env[name] = None
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (smoke test)")
    parser.add_argument("--json", type=Path, help="write results (with every sample) to this file")
    parser.add_argument(
        "--only", nargs="+", choices=list(TITLES), default=list(TITLES), help="run only these benchmarks"
    )
    parser.add_argument("--no-peers", action="store_true", help="skip nnsight / TransformerLens")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--workdir", type=Path, help="keep the built models here (default: a temp dir)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:
        args.reps_fixed, args.inner_fixed, args.warmup_fixed = 15, 10, 20
        args.reps_gpt2s, args.warmup_gpt2s = 3, 1
        args.reps_generate, args.warmup_generate = 3, 1
    else:
        args.reps_fixed, args.inner_fixed, args.warmup_fixed = 60, 20, 50
        args.reps_gpt2s, args.warmup_gpt2s = 15, 1
        args.reps_generate, args.warmup_generate = 15, 2

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    _quiet_transformers()
    import mechscope as ms

    env = environment(args)
    print(
        f"torch {env['torch']}, transformers {env['transformers']}, threads {env['torch_threads']}, "
        f"cpus {env['cpu_count']}, nnsight {env['nnsight']}, transformer-lens {env['transformer_lens']}",
        flush=True,
    )
    env["loadavg_start"] = os.getloadavg()
    rows: list[Row] = []
    runners = {"fixed": bench_fixed, "gpt2s": bench_gpt2s, "generate": bench_generate}
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mechscope-bench-")))
        workdir.mkdir(parents=True, exist_ok=True)
        for bench in args.only:
            start = time.perf_counter()
            new_rows = runners[bench](workdir, args, ms)
            rows += new_rows
            print(table(new_rows), flush=True)
            print(f"({bench}: {time.perf_counter() - start:.0f} s wall)", flush=True)
    env["loadavg_end"] = os.getloadavg()
    print(f"\nload average start {env['loadavg_start']}, end {env['loadavg_end']}")
    missed = [r for r in rows if r.met == "NO"]
    print(
        "targets: " + ("all met" if not missed else "NOT met: " + ", ".join(f"{r.bench}/{r.variant}" for r in missed))
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"env": env, "rows": [asdict(r) for r in rows]}, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
