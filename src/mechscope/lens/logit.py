"""The logit lens: read every layer's residual out through the model's own final norm and unembedding.

Examples:
    >>> import mechscope as ms
    >>> lens = ms.LogitLens(ms.load("toy"))
    >>> result = lens.run(["The capital of France is"], track=[" Paris"])[0]
    >>> result.predicted_token, result.emergence_layer  # " Paris" is top-1 from the last layer (3) on
    (' Paris', 3)
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor

from mechscope.core.layers import resolve_layers
from mechscope.core.lm import LanguageModel
from mechscope.errors import InputError
from mechscope.lens.results import (
    GridCell,
    LayerPrediction,
    LayerTransition,
    LensGrid,
    LensResult,
    TokenEvolution,
    TokenScore,
)
from mechscope.lens.tuned import TunedLens


class LogitLens:
    """Layer-by-layer predictions of a decoder model, batched over prompts.

    The read-out of layer L is ``arch.logits(resid_post.L)``: the final norm, the unembedding and the
    family's output transform (soft-capping, scaling). At the last layer it equals the model's logits.
    Given a `TunedLens`, each layer's residual first goes through that layer's learned translator.

    Examples:
        >>> import mechscope as ms
        >>> lens = ms.LogitLens(ms.load("toy"))
        >>> result = lens.run(["The capital of France is"], top_k=1)[0]
        >>> [(p.layer, p.top[0].token) for p in result.layer_predictions]
        [(0, ' blue'), (1, ' a'), (2, ' late'), (3, ' Paris')]
    """

    def __init__(self, lm: LanguageModel, tuned: TunedLens | None = None) -> None:
        if lm.arch.kind != "decoder":
            raise InputError(f"{lm.arch.family} is an encoder; the logit lens needs a language-model head")
        self.lm = lm
        self.tuned = tuned

    def readout(self, layer: int, resid: Tensor) -> Tensor:
        """Logits of ``resid`` taken at ``layer`` (through the tuned lens's translator if there is one)."""
        if self.tuned is not None:
            return self.tuned.readout(self.lm, layer, resid)
        return self.lm.arch.logits(resid)

    def _check_top_k(self, top_k: int) -> None:
        vocab = self.lm.arch.vocab
        if not 1 <= top_k <= vocab:
            raise InputError(f"top-k must be between 1 and the vocabulary size {vocab}, got {top_k}")

    def _layers(self, layers: Sequence[int] | None) -> list[int]:
        return sorted(resolve_layers(layers, self.lm.arch.n_layers))

    def layer_logits(
        self, prompts: Sequence[str] | Tensor, layers: Sequence[int] | None = None, position: int = -1
    ) -> tuple[Tensor, Tensor]:
        """``(lens, final)``: lens logits ``[layer, batch, vocab]`` at ``position`` and the model's logits.

        ``prompts`` are strings (padded as a batch) or token ids ``[batch, pos]``.

        Examples:
            >>> import torch, mechscope as ms
            >>> lens, final = ms.LogitLens(ms.load("toy")).layer_logits(["The capital of France is", "Hi"])
            >>> lens.shape, torch.equal(lens[-1], final)  # the last layer's read-out is the model's output
            (torch.Size([4, 2, 2054]), True)
        """
        chosen = self._layers(layers)
        encoded = self.lm.encode(prompts if isinstance(prompts, Tensor) else list(prompts))
        batch = int(encoded["input_ids"].shape[0])
        with torch.no_grad():
            with self.lm.capture([f"resid_post.{i}" for i in chosen], positions=position) as cache:
                logits = self.lm.forward(encoded)
            final = self._final(logits, encoded, position)
            last = self.lm.arch.n_layers - 1
            # The last layer's read-out is the model's own output; taking it from the logits keeps the lens
            # bit-identical there (a [batch, d] matmul may round differently from the model's [batch, pos, d]).
            inner = [i for i in chosen if i != last]
            reads: dict[int, Tensor] = {last: final}
            if inner and self.tuned is None:
                # One read-out of all layers together reads the unembedding from memory once, not per layer.
                # With a device_map the layers' residuals sit where each layer ran: join them where the logits are.
                residuals = [cache[f"resid_post.{i}"].to(final.device) for i in inner]
                together = self.lm.arch.logits(torch.cat(residuals))
                reads.update(zip(inner, torch.split(together, batch), strict=True))
            else:
                reads.update((i, self.readout(i, cache[f"resid_post.{i}"])) for i in inner)
            stacked = torch.stack([reads[i].to(final.device) for i in chosen])
        return stacked.float(), final.float()

    def _final(self, logits: Tensor, encoded: dict[str, Tensor], position: int) -> Tensor:
        mask = encoded.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(encoded["input_ids"])
        lengths = mask.sum(dim=1)
        own = torch.full_like(lengths, position)
        own = torch.where(own < 0, own + lengths, own)
        columns = own + mask.int().argmax(dim=1)
        return logits[torch.arange(logits.shape[0]), columns.to(logits.device)]

    def run(
        self,
        prompts: Sequence[str],
        *,
        layers: Sequence[int] | None = None,
        position: int = -1,
        top_k: int = 5,
        track: Sequence[str] = (),
    ) -> list[LensResult]:
        """Apply the lens to each prompt at ``position`` (own coordinates; -1 = last token).

        Examples:
            >>> import mechscope as ms
            >>> result = ms.LogitLens(ms.load("toy")).run(["The capital of France is"], track=[" Paris"])[0]
            >>> result.predicted_token, result.emergence_layer
            (' Paris', 3)
        """
        self._check_top_k(top_k)
        chosen = self._layers(layers)
        lens, final = self.layer_logits(prompts, chosen, position)
        tracked_ids = [self.lm.token_id(t, first=True) for t in track]  # a word is tracked by its first token
        results = []
        for row, prompt in enumerate(prompts):
            results.append(self._result(prompt, position, chosen, lens[:, row], final[row], top_k, tracked_ids))
        return results

    def grid(self, prompt: str, *, layers: Sequence[int] | None = None, top_k: int = 3) -> LensGrid:
        """The lens at every position of ``prompt`` (for heatmaps): top-``top_k`` tokens per cell."""
        self._check_top_k(top_k)
        chosen = self._layers(layers)
        with torch.no_grad():
            with self.lm.capture([f"resid_post.{i}" for i in chosen]) as cache:
                logits = self.lm.forward([prompt])[0]
            last = self.lm.arch.n_layers - 1
            rows = []
            for layer in chosen:
                read = logits if layer == last else self.readout(layer, cache[f"resid_post.{layer}"][0])
                probs = read.float().softmax(-1)
                indices = probs.topk(top_k, dim=-1).indices
                rows.append(
                    [
                        GridCell(top=[self.score(read[pos], probs[pos], int(i)) for i in indices[pos]])
                        for pos in range(read.shape[0])
                    ]
                )
        ids = self.lm.tokenize([prompt])["input_ids"][0].tolist()
        return LensGrid(prompt=prompt, tokens=[self.decode(i) for i in ids], layers=chosen, cells=rows)

    def decode(self, token_id: int) -> str:
        """The text of one token id."""
        return str(self.lm.tokenizer.decode([token_id]))

    def score(self, logits: Tensor, probs: Tensor, token_id: int) -> TokenScore:
        """``token_id`` with its probability and logit under one read-out."""
        return TokenScore(
            token=self.decode(token_id),
            token_id=token_id,
            prob=float(probs[token_id]),
            logit=float(logits[token_id]),
        )

    def _result(
        self,
        prompt: str,
        position: int,
        layers: list[int],
        lens: Tensor,
        final: Tensor,
        top_k: int,
        tracked_ids: list[int],
    ) -> LensResult:
        log_final = final.log_softmax(-1)
        final_probs = log_final.exp()
        predicted = self.score(final, final_probs, int(final.argmax()))
        log_lens = lens.log_softmax(-1)
        probs = log_lens.exp()
        entropy = -(probs * log_lens).nan_to_num().sum(-1)
        kl = (final_probs * (log_final - log_lens)).nan_to_num().sum(-1)
        predictions = []
        for i, layer in enumerate(layers):
            top = probs[i].topk(top_k).indices.tolist()
            predictions.append(
                LayerPrediction(
                    layer=layer,
                    top=[self.score(lens[i], probs[i], t) for t in top],
                    entropy=max(0.0, float(entropy[i])),
                    kl_to_final=float(kl[i]),
                )
            )
        ids = [predicted.token_id, *[t for t in tracked_ids if t != predicted.token_id]]
        evolutions = [self._evolution(lens, probs, layers, t) for t in ids]
        transitions = [
            LayerTransition(layer=b.layer, from_token=a.top_token, to_token=b.top_token)
            for a, b in itertools.pairwise(predictions)
            if a.top[0].token_id != b.top[0].token_id
        ]
        tokens = self.lm.tokenizer.convert_ids_to_tokens(self.lm.tokenize([prompt])["input_ids"][0].tolist())
        return LensResult(
            prompt=prompt,
            tokens=[str(t) for t in tokens],
            position=position if position >= 0 else len(tokens) + position,
            predicted=predicted,
            layer_predictions=predictions,
            token_evolutions=evolutions,
            layer_transitions=transitions,
            emergence_layer=_stays_top1_from(layers, evolutions[0].ranks),
        )

    def _evolution(self, lens: Tensor, probs: Tensor, layers: list[int], token_id: int) -> TokenEvolution:
        ranks = (lens > lens[:, token_id : token_id + 1]).sum(-1).tolist()
        first = next((layer for layer, rank in zip(layers, ranks, strict=True) if rank == 0), None)
        return TokenEvolution(
            token=self.decode(token_id),
            token_id=token_id,
            layers=layers,
            ranks=[int(r) for r in ranks],
            probs=[float(p) for p in probs[:, token_id]],
            logits=[float(x) for x in lens[:, token_id]],
            first_top1_layer=first,
        )


def _stays_top1_from(layers: list[int], ranks: list[int]) -> int | None:
    """The first layer from which ``ranks`` stays 0 up to the last analysed layer."""
    first = None
    for layer, rank in reversed(list(zip(layers, ranks, strict=True))):
        if rank != 0:
            break
        first = layer
    return first
