"""SAE training throughput (issue 23): streaming `train_sae` next to its two parts measured alone, CPU.

Three numbers in tokens per second, on the bundled ``toy`` (4 layers, d_model 128) or ``--model gpt2s`` (a
random GPT-2-small-shaped model, 12 layers, d_model 768, built into a temporary folder), a TopK SAE of
``--width-mult`` × d_model features (k 32) at ``resid_post.2``, batches of 4096 tokens, the organisms' corpus:

* ``plain forward``: `forward_batches` over the documents the stream read, nothing captured (the model's
  own share of the stream);
* ``bare capture``: the activation stream alone (`ActivationSource`: forward passes with the capture sink,
  pads and BOS dropped, shuffled blocks), no optimisation;
* ``optimisation on pre-collected``: the very update `train_sae` runs (encode, TopK, AuxK, backward, the
  decoder-norm projection, Adam, renormalisation, dead counters) on activations collected beforehand;
* ``train_sae (streaming)``: the whole run, stream and optimisation interleaved.

Running the two parts one after the other could at best reach ``1 / (1/capture + 1/optimise)``; the last
column is the streaming run's share of that bound (1.0: the pipeline adds nothing).

    .venv/bin/python benchmarks/bench_sae.py                   # toy, 200K tokens
    .venv/bin/python benchmarks/bench_sae.py --model gpt2s --tokens 40K
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

SITE = "resid_post.2"
BATCH = 4096


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=("toy", "gpt2s"), default="toy")
    parser.add_argument("--tokens", default="200K", help="training tokens (200K, 1M ...)")
    parser.add_argument("--width-mult", type=int, default=8, help="features per d_model")
    args = parser.parse_args()

    import mechscope as ms
    from mechscope.cli.inputs import token_count
    from mechscope.testing.tiny_models import build_gpt2_small

    with tempfile.TemporaryDirectory() as tmp:
        lm = ms.load("toy" if args.model == "toy" else build_gpt2_small(Path(tmp) / "gpt2s"))
        run(lm, args.model, token_count(args.tokens, "--tokens"), args.width_mult)


def run(lm: Any, name: str, tokens: int, width_mult: int) -> None:
    """Measure and print the three throughputs on ``lm``."""
    from mechscope.sae.activations import ActivationSource
    from mechscope.sae.train import _Run, train_sae
    from mechscope.zoo.corpus import text_documents

    documents = [d.text for d in text_documents(0, max(2000, tokens // 8))]
    held = documents[:100]
    steps = tokens // BATCH
    width = width_mult * lm.arch.d_model
    settings = {"width": width, "k": 32, "tokens": steps * BATCH, "batch_size": BATCH, "eval_corpus": held}

    # bare capture (the same stream train_sae reads, drained) and plain forward passes over the documents it
    # read, nothing captured: alternated three times after a warm-up, medians
    def drain() -> tuple[list[torch.Tensor], int]:
        source = ActivationSource(lm, SITE, documents)
        with torch.no_grad():
            stream = source.batches(BATCH)
            return [next(stream) for _ in range(steps)], source.state().cursor

    collected, cursor = drain()
    used = [ActivationSource(lm, SITE, documents).document(i) for i in range(cursor)]
    seconds: dict[str, list[float]] = {"capture": [], "plain": []}
    for _ in range(3):
        start = time.perf_counter()
        collected, _ = drain()
        seconds["capture"].append(time.perf_counter() - start)
        start = time.perf_counter()
        with torch.no_grad():
            lm.forward_batches(used, batch_size=32)
        seconds["plain"].append(time.perf_counter() - start)
    capture = steps * BATCH / statistics.median(seconds["capture"])
    plain = steps * BATCH / statistics.median(seconds["plain"])
    source = ActivationSource(lm, SITE, documents)

    # the optimisation alone on the collected batches (one warm-up step first)
    train_sae(lm, SITE, documents, **(settings | {"tokens": BATCH}))  # type: ignore[arg-type]
    full = {
        "site": SITE, "architecture": "topk", "l1_coeff": None, "warmup": 0.05, "decay": 0.2, "seed": 0,
        "aux_coeff": 1 / 32, "resample": False, "normalize": True, "buffer_tokens": 65_536,
        "forward_batch_size": 32, "skip_first": True, "eval_tokens": 1000, "checkpoint_every": None,
        "progress": False, "resume": False, "log_every": None, "lr": 2e-4 / (width / 2**14) ** 0.5,
        "aux_k": 2 ** round(torch.log2(torch.tensor(lm.arch.d_model / 2)).item()),
        "dead_tokens": max(1, tokens // 10), "resample_every": 1, "width": width, "k": 32,
        "tokens": steps * BATCH, "batch_size": BATCH,
    }  # fmt: skip
    trainer = _Run(lm, source, full, None, None, None)
    trainer._update(collected[0] * trainer.scale)
    start = time.perf_counter()
    for batch in collected:
        trainer._update(batch * trainer.scale)
        trainer.step += 1
    optimise = steps * BATCH / (time.perf_counter() - start)

    start = time.perf_counter()
    _, result = train_sae(lm, SITE, documents, **settings)  # type: ignore[arg-type]
    streaming = result.tokens_per_s
    wall = steps * BATCH / (time.perf_counter() - start)
    bound = 1 / (1 / capture + 1 / optimise)

    print(f"\n{name}, TopK SAE {lm.arch.d_model}->{width} k=32 at {SITE}, {steps} steps x {BATCH} tokens, "
          f"torch threads {torch.get_num_threads()}\n")  # fmt: skip
    print("| measured | tokens/s |\n|---|---:|")
    print(f"| plain forward passes over the same documents (no capture; tokens kept by the stream) | {plain:,.0f} |")
    print(f"| bare capture (stream only) | {capture:,.0f} |")
    print(f"| optimisation on pre-collected activations | {optimise:,.0f} |")
    print(f"| train_sae, streaming (training loop) | {streaming:,.0f} |")
    print(f"| train_sae, streaming (wall, with set-up and held-out evaluation) | {wall:,.0f} |")
    print(f"| sequential bound 1/(1/capture + 1/optimise) | {bound:,.0f} |")
    print(f"\nstreaming / bound: {streaming / bound:.3f}")


if __name__ == "__main__":
    main()
