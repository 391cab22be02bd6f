"""One steering-vector training step next to a plain forward + backward of the same model and batch (issue 18).

The training step is what `mechscope.steering.trainer` runs per batch: the vector added at ``resid_post.L``
through `lm.intervene`, forward through the frozen model, the loss on the completion half, backward (the
gradient reaches the vector only) and an AdamW step. The reference is a plain forward + backward of the same
batch with the gradient going only to the input embeddings (``inputs_embeds`` requiring grad). Target: <= 1.1x.
The vector's backward stops at its layer, so adding it late is cheaper than the reference; layer 0 is the
worst case. CPU float32 unless ``--device cuda``.

    .venv/bin/python benchmarks/bench_steer_train.py [--device cuda] [--reps 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import mechscope as ms
from mechscope.core.lm import LanguageModel
from mechscope.steering.train_data import Batch
from mechscope.steering.train_state import frozen
from mechscope.steering.trainer import _step

SHAPE = {"n_layer": 12, "n_embd": 768, "n_head": 12, "vocab_size": 50257, "n_inner": 3072, "n_positions": 1024}


def timed(fns: dict[str, Callable[[], object]], reps: int, sync: Callable[[], None]) -> dict[str, float]:
    for fn in fns.values():
        fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def make_batch(lm: LanguageModel, batch: int, length: int) -> Batch:
    generator = torch.Generator().manual_seed(0)
    vocab = int(getattr(lm.model, "config").vocab_size)  # noqa: B009
    ids = torch.randint(0, vocab, (batch, length), generator=generator)
    loss_mask = torch.zeros((batch, length), dtype=torch.bool)
    loss_mask[:, length // 2 :] = True
    labels = torch.where(loss_mask, ids, torch.full_like(ids, -100))
    return Batch(ids, torch.ones_like(ids), labels, loss_mask).to(lm.device)


def bench(name: str, lm: LanguageModel, layers: list[int], batch: int, length: int, reps: int) -> None:
    data = make_batch(lm, batch, length)
    sync = torch.cuda.synchronize if lm.device.type == "cuda" else (lambda: None)
    embed = lm.arch.embed_module()

    def plain() -> None:
        embeds = embed(data.input_ids).detach().requires_grad_(True)
        logits = lm.model(inputs_embeds=embeds, attention_mask=data.attention_mask, use_cache=False).logits
        loss = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), data.labels[:, 1:].flatten(), ignore_index=-100)
        loss.backward()  # type: ignore[no-untyped-call]

    fns: dict[str, Callable[[], object]] = {"plain forward + backward (grad to inputs_embeds)": plain}
    with frozen(lm, checkpointing=False):
        for layer in layers:
            vector = torch.nn.Parameter(torch.zeros(lm.arch.d_model, device=lm.device))
            optimizer = torch.optim.AdamW([vector], lr=0.1)
            scaler = torch.amp.GradScaler("cuda", enabled=False)
            args: dict[str, object] = {"layer": layer, "positions": "all", "amp": None}

            def step(
                v: torch.Tensor = vector,
                o: torch.optim.Optimizer = optimizer,
                s: object = scaler,
                a: dict[str, object] = args,
            ) -> float:
                return _step(lm, [data], v, o, s, a)

            fns[f"training step, vector at layer {layer}"] = step
        medians = timed(fns, reps, sync)
    base = medians["plain forward + backward (grad to inputs_embeds)"]
    tokens = batch * length
    print(f"\n### {name}: batch {batch} x {length} tokens, {lm.device}\n")
    print("| variant | median | tokens/s | ratio to plain |\n|---|---:|---:|---:|")
    for label, value in medians.items():
        print(f"| {label} | {value * 1e3:.1f} ms | {tokens / value:,.0f} | {value / base:.3f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reps", type=int, default=5)
    options = parser.parse_args()
    torch.manual_seed(0)
    toy = ms.load("toy", device=options.device)
    bench("toy", toy, [0, 2], batch=8, length=128, reps=options.reps)
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(**SHAPE, attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0)).to(options.device)
    bench("GPT-2-small shape (random)", ms.wrap(gpt2.eval()), [0, 6], batch=4, length=128, reps=options.reps)


if __name__ == "__main__":
    main()
