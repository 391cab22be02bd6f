"""Where the fixed per-call cost of ``lm.capture`` + ``lm.forward`` goes (tiny 2-layer d=64 GPT-2, ids 1x16).

Run from the repository root:

    .venv/bin/python benchmarks/profile_capture.py [--calls 3000]

Prints three things:

1. a phase breakdown, variants interleaved as in bench_core.py: plain forward, ``lm.forward`` alone,
   building the Capture, entering+exiting it with no forward, the full call, and "enter/exit, then a
   separate lm.forward" (to show that the set-up work also slows the forward that follows it);
2. direct timings of the mechscope internals that run on every call (guarded: internals may change);
3. cProfile of ``--calls`` full capture calls, restricted to functions in src/mechscope.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import TINY, _quiet_transformers, build, measure, random_ids


def direct(fn: Callable[[], Any], n: int = 2000, reps: int = 11) -> float:
    """Median microseconds per call of a small function."""
    for _ in range(200):
        fn()
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        samples.append((time.perf_counter() - start) / n)
    return statistics.median(samples) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000, help="capture calls under cProfile")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    _quiet_transformers()
    import mechscope as ms

    with tempfile.TemporaryDirectory(prefix="mechscope-prof-") as tmp:
        folder = build(Path(tmp), "tiny-gpt2", TINY)
        lm = ms.load(folder, dtype="float32", device="cpu")
    model = lm.model
    ids = random_ids((1, 16), model.config.vocab_size)
    sites = ["resid_post.*"]

    def plain() -> None:
        with torch.no_grad():
            model(input_ids=ids)

    def forward_only() -> None:
        lm.forward(ids)

    def build_only() -> None:
        lm.capture(sites)

    def enter_exit() -> None:
        with lm.capture(sites):
            pass

    def full() -> None:
        with lm.capture(sites):
            lm.forward(ids)

    def enter_exit_then_forward() -> None:
        enter_exit()
        lm.forward(ids)

    layers = list(model.transformer.h)

    def bare() -> None:
        store = {}
        handles = [
            layer.register_forward_hook(lambda m, a, o, i=i: store.__setitem__(i, o)) for i, layer in enumerate(layers)
        ]
        with torch.no_grad():
            model(input_ids=ids)
        for handle in handles:
            handle.remove()

    def bare_like_mechscope() -> None:
        # What the same guarantees cost with nothing else: clone per site, a top-level pre-hook with
        # kwargs and a post-hook that checks every site fired, all registered and removed per call.
        store: dict[int, torch.Tensor] = {}

        def post(m: Any, a: Any, o: Any) -> None:
            if len(store) != len(layers):
                raise RuntimeError("a hook did not fire")

        handles = [
            layer.register_forward_hook(lambda m, a, o, i=i: store.__setitem__(i, o.detach().clone()))
            for i, layer in enumerate(layers)
        ]
        handles.append(model.register_forward_pre_hook(lambda m, a, k: None, with_kwargs=True))
        handles.append(model.register_forward_hook(post))
        with torch.no_grad():
            model(input_ids=ids)
        for handle in handles:
            handle.remove()

    variants = {
        "plain (no_grad model call)": plain,
        "lm.forward, no capture": forward_only,
        "lm.capture(...) object only": build_only,
        "capture enter+exit, no forward": enter_exit,
        "capture + lm.forward (full call)": full,
        "enter+exit, then lm.forward": enter_exit_then_forward,
        "bare torch hooks (2 layers)": bare,
        "bare hooks + clone + top-level pre/post hooks": bare_like_mechscope,
    }
    samples = measure(variants, reps=40, warmup=50, inner=20)
    base = statistics.median(samples["plain (no_grad model call)"])
    print("## 1. Phase breakdown (median us per call, interleaved)\n")
    print("| phase | us | minus plain |")
    print("|---|---:|---:|")
    for name, values in samples.items():
        med = statistics.median(values)
        extra = f"{(med - base) * 1e6:+.0f}" if med > base / 2 else ""
        print(f"| {name} | {med * 1e6:.0f} | {extra} |")

    # Hooks firing, without per-call set-up: one capture (with a sink) held open across all calls.
    # Not interleaved with the table above, since the open capture would hook every variant.
    outside = statistics.median(measure({"f": forward_only}, reps=30, warmup=50, inner=20)["f"])
    with lm.capture(sites, sink=lambda values, info: None):
        inside = statistics.median(measure({"f": forward_only}, reps=30, warmup=50, inner=20)["f"])
    print(
        f"\nlm.forward with one capture held open across calls: {inside * 1e6:.0f} us vs {outside * 1e6:.0f} us "
        f"without ({(inside - outside) * 1e6:+.0f} us: hooks firing in the pass, no set-up)"
    )

    print("\n## 2. Direct timings of per-call internals (us)\n")
    checks: dict[str, Callable[[], Any]] = {
        "lm.sites(['resid_post.*'])  (expand_sites)": lambda: lm.sites(sites),
        "lm.device  (embed_module -> get_submodule + next(parameters()))": lambda: lm.device,
        "lm.arch.layer(0)  (get_submodule of the layer list, every call)": lambda: lm.arch.layer(0),
    }
    try:
        from mechscope.core.capture import plan_capture
        from mechscope.core.points import module_for

        site_objs = lm.sites(sites)
        checks["module_for(site)  (once per site list, memoised in the plan)"] = lambda: module_for(
            site_objs[0], lm.arch
        )
        checks["plan_capture(2 sites)  (once per site list)"] = lambda: plan_capture(site_objs, lm.arch)
    except Exception as exc:
        print(f"(internals changed: {exc})")
    try:
        from mechscope.core.positions import PassInfo

        kwargs = {"input_ids": ids}
        checks["PassInfo.from_forward  (per pass, for the offset; allocates a ones mask)"] = lambda: (
            PassInfo.from_forward(kwargs, ())
        )
    except Exception as exc:
        print(f"(internals changed: {exc})")
    x = torch.randn(1, 16, model.config.hidden_size)
    checks["x.detach().clone() for one 1x16x64 site  (_store, positions='all')"] = lambda: x.detach().clone()
    built = lm.capture(sites)
    checks["Capture.__enter__ + __exit__ of an already built capture"] = lambda: (
        built.__enter__(),
        built.__exit__(None, None, None),
    )
    checks["lm.encode(ids)  (inside lm.forward)"] = lambda: lm.encode(ids)
    checks["register + remove one forward hook"] = lambda: layers[0].register_forward_hook(lambda *a: None).remove()

    # The hook work of one pass, called by hand: the 2 layer hooks of an untracked capture, then the flush
    # that closes the pass.
    try:
        capture = lm.capture(sites)
        capture.__enter__()
        hooks = [next(iter(layer._forward_hooks.values())) for layer in layers]

        def one_pass() -> None:
            for layer, hook in zip(layers, hooks, strict=True):
                hook(layer, (x,), x)
            capture._flush()

        checks["hook work of one pass by hand (2 layer hooks + closing the pass)"] = one_pass
    except Exception as exc:
        capture = None
        print(f"(internals changed: {exc})")
    print("| what | us |")
    print("|---|---:|")
    for name, fn in checks.items():
        print(f"| {name} | {direct(fn):.1f} |")
    if capture is not None:
        capture.__exit__(None, None, None)

    print(f"\n## 3. cProfile of {args.calls} full capture calls (functions in src/mechscope)\n")
    for _ in range(100):
        full()
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(args.calls):
        full()
    profiler.disable()
    stats = pstats.Stats(profiler)
    total = stats.total_tt  # type: ignore[attr-defined]
    inside = sum(
        tt
        for (path, _, _), (_, _, tt, _, _) in stats.stats.items()
        if "src/mechscope" in path  # type: ignore[attr-defined]
    )
    print(
        f"total {total / args.calls * 1e6:.0f} us/call under the profiler (which inflates Python-heavy code); "
        f"own time in src/mechscope functions {inside / args.calls * 1e6:.0f} us/call\n"
    )
    for key in ("cumulative", "tottime"):
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats(key).print_stats("mechscope", args.top)
        text = out.getvalue()
        print(f"### sorted by {key}\n\n```")
        print(text[text.find("   ncalls") :].rstrip().replace(str(Path.cwd()) + "/", ""))
        print("```\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
