"""A streaming source of one site's activations over a corpus, for training and evaluating SAEs.

`ActivationSource` runs the corpus through the model with a capture sink (`LanguageModel.forward_batches`)
and hands out float32 token batches ``[batch_size, d_in]``: pad tokens are dropped, and so, by default, is
each document's first token (BOS on most models), whose norm is an outlier that an SAE would spend
features on. Values of ``head_out.L`` (``[batch, pos, heads, head_dim]``) are flattened to ``heads × head_dim``.

Memory stays bounded: the source fills a *block* of about ``buffer_tokens`` tokens from consecutive documents,
shuffles it, hands it out batch by batch, and only then runs the next documents; never are more than one
block (plus one forward chunk) of activations held. The fewer than ``batch_size`` tokens left over at the end of
a block open the next one, so no token is dropped. Documents are shuffled once per pass over the corpus and
the corpus is cycled when the caller wants more tokens than it has.

Everything is a pure function of the seed: each block's permutation is seeded by the block's index, each
pass's document order by the pass's index. So the position in the stream is a small `StreamState` (which
block, where its documents start, the leftover it opened with, how many of its batches were handed out):
resuming recomputes that one block and skips what was already handed out, giving the very same batches.

Examples:
    >>> import mechscope as ms
    >>> lm = ms.load("toy")
    >>> source = ActivationSource(lm, "resid_post.1", ["The capital of France is Paris."] * 8, buffer_tokens=32)
    >>> batches = source.batches(16)
    >>> [tuple(next(batches).shape) for _ in range(3)]
    [(16, 128), (16, 128), (16, 128)]
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from mechscope.core.lm import LanguageModel
from mechscope.core.positions import PassInfo
from mechscope.errors import InputError
from mechscope.sae.formats import site_width
from mechscope.sae.read import evaluated, flat_site

#: Documents run in a block's first forward chunk (later chunks are sized from the block's tokens per document).
_FIRST_CHUNK_DOCUMENTS = 64


@dataclass(frozen=True)
class StreamState:
    """Where an `ActivationSource` stream stands: enough to resume it exactly.

    Attributes:
        block: the index of the block being handed out.
        cursor: the stream index of the block's first document (pass ``cursor // n`` of an ``n``-document corpus).
        offset: batches of the block already handed out.
        carry: the leftover tokens ``[m, d_in]`` (``m < batch_size``) of the previous block, which open this one.
    """

    block: int = 0
    cursor: int = 0
    offset: int = 0
    carry: Tensor | None = None


class ActivationSource:
    """One site's activations over a corpus, streamed in shuffled batches (see the module docstring).

    Args:
        lm: the model.
        site: the site to read (``resid_post.2``, ``mlp_out.0``, ``head_out.1`` ...), one an SAE can read.
        corpus: the documents (one string each).
        buffer_tokens: tokens per shuffled block (the bound on memory: ``buffer_tokens × d_in`` floats).
        forward_batch_size: prompts per forward pass.
        max_tokens: padded tokens per forward pass at most (None: no bound beyond ``forward_batch_size``).
        seed: the seed of the document order and the shuffles.
        skip_first: drop each document's first token (BOS).
        shuffle: shuffle documents per pass and tokens per block (False: corpus order, for evaluation).
        cycle: start the corpus again when it runs out (False: one pass, then the stream ends).
        device: where the batches go (default: the model's input device).

    Raises:
        InputError: an empty corpus or a bad size.
        SiteError: a site the model lacks or an SAE cannot read.
    """

    def __init__(
        self,
        lm: LanguageModel,
        site: str,
        corpus: Sequence[str],
        *,
        buffer_tokens: int = 65_536,
        forward_batch_size: int = 32,
        max_tokens: int | None = None,
        seed: int = 0,
        skip_first: bool = True,
        shuffle: bool = True,
        cycle: bool = True,
        device: str | torch.device | None = None,
    ) -> None:
        self.d_in = site_width(site, lm)  # validates the site first: its error is the most useful one
        if not corpus:
            raise InputError("the corpus is empty; give at least one document (one per line with --prompts)")
        if buffer_tokens < 1 or forward_batch_size < 1:
            raise InputError(
                f"buffer_tokens and forward_batch_size must be at least 1, got {buffer_tokens}, {forward_batch_size}"
            )
        self.lm, self.site, self.corpus = lm, site, list(corpus)
        self.buffer_tokens, self.forward_batch_size, self.max_tokens = buffer_tokens, forward_batch_size, max_tokens
        self.seed, self.skip_first, self.shuffle, self.cycle = seed, skip_first, shuffle, cycle
        self.device = torch.device(device) if device is not None else lm.device
        self._order: tuple[int, list[int]] = (-1, [])
        self._state = StreamState()

    # --- documents -------------------------------------------------------------------------------------------

    def document(self, index: int) -> str:
        """The document at stream index ``index`` (pass ``index // len(corpus)``, shuffled per pass)."""
        n = len(self.corpus)
        epoch, within = divmod(index, n)
        if not self.shuffle:
            return self.corpus[within]
        if self._order[0] != epoch:
            order = list(range(n))
            random.Random(f"mechscope-sae-documents:{self.seed}:{epoch}").shuffle(order)
            self._order = (epoch, order)
        return self.corpus[self._order[1][within]]

    def _run(self, documents: list[str]) -> Tensor:
        """The activations ``[n, d_in]`` (float32, on ``device``) of ``documents``' kept tokens.

        In order without ``shuffle``; with it, documents are run shortest first (the block is shuffled after).
        """
        parts: list[Tensor] = []

        def sink(values: dict[str, Tensor], info: PassInfo) -> None:
            value = values[self.site]
            keep = evaluated(info.current_mask(), self.skip_first).to(value.device)
            parts.append(flat_site(value)[keep].to(device=self.device, dtype=torch.float32))

        if self.shuffle:
            # the block is shuffled anyway: run documents of like length together, so that batches carry
            # little padding (forward_batches cannot reorder a capture that keeps every position)
            documents = sorted(documents, key=len)
        with self.lm.capture([self.site], positions="all", sink=sink):
            self.lm.forward_batches(documents, batch_size=self.forward_batch_size, max_tokens=self.max_tokens)
        if not parts:
            return torch.zeros(0, self.d_in, device=self.device)
        return torch.cat(parts)

    def collect(self, cursor: int, need: int) -> tuple[Tensor, int]:
        """At least ``need`` tokens' activations from the documents at ``cursor`` on, and the next cursor.

        Without ``cycle`` it returns fewer when the corpus ends. The chunking depends only on ``cursor`` and
        ``need``, so the same call gives the same values (the batches of a forward pass are the same).

        Raises:
            InputError: a whole pass over the corpus yields no token (every document is one token long).
        """
        parts: list[Tensor] = []
        got, start, chunk = 0, cursor, _FIRST_CHUNK_DOCUMENTS
        end = math.inf if self.cycle else len(self.corpus)
        while got < need and cursor < end:
            stop = int(min(cursor + chunk, end))
            values = self._run([self.document(i) for i in range(cursor, stop)])
            parts.append(values)
            got += values.shape[0]
            cursor = stop
            if got == 0 and cursor - start >= len(self.corpus):
                raise InputError(
                    f"the corpus gives no tokens at {self.site}"
                    f"{' once each first token is dropped' if self.skip_first else ''}; give longer documents"
                )
            per_document = max(got / (cursor - start), 1e-3)
            # size the next chunk to what is still missing, a little over, and at least one forward batch
            chunk = max(self.forward_batch_size, math.ceil(1.1 * (need - got) / per_document))
        values = torch.cat(parts) if parts else torch.zeros(0, self.d_in, device=self.device)
        return values, cursor

    # --- the stream ------------------------------------------------------------------------------------------

    def state(self) -> StreamState:
        """The position after the last batch handed out (pass it to `batches` to resume there)."""
        return self._state

    def _block(self, state: StreamState, batch_size: int) -> tuple[Tensor, int]:
        """Block ``state.block``: its carry and documents' tokens, permuted; and the next block's cursor."""
        carry = state.carry if state.carry is not None else torch.zeros(0, self.d_in)
        carry = carry.to(device=self.device, dtype=torch.float32)
        # a block holds at least one batch, so that every block hands one out
        need = max(self.buffer_tokens, batch_size) - carry.shape[0]
        values, next_cursor = self.collect(state.cursor, max(1, need))
        values = torch.cat([carry, values])
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + state.block)
            values = values[torch.randperm(values.shape[0], generator=generator).to(values.device)]
        return values, next_cursor

    def batches(self, batch_size: int, *, state: StreamState | None = None) -> Iterator[Tensor]:
        """Batches ``[batch_size, d_in]`` from ``state`` on (default: the start), for as long as asked.

        Without ``cycle`` the stream ends with the corpus, its last batch possibly smaller. `state` tells where
        the stream stands after each batch.

        Raises:
            InputError: ``batch_size`` below 1.
        """
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        current = state if state is not None else StreamState()
        self._state = current
        while True:
            values, next_cursor = self._block(current, batch_size)
            full = values.shape[0] // batch_size
            leftover = values[full * batch_size :]
            following = StreamState(block=current.block + 1, cursor=next_cursor, offset=0, carry=leftover.cpu())
            for index in range(current.offset, full):
                # the state names the next batch: the end of the block is the start of the next one
                self._state = following if index == full - 1 else replace(current, offset=index + 1)
                yield values[index * batch_size : (index + 1) * batch_size]
            if not self.cycle and next_cursor >= len(self.corpus):
                if leftover.shape[0]:
                    self._state = replace(following, carry=None)
                    yield leftover
                return
            self._state = following
            current = following


def geometric_median(points: Tensor, *, max_iter: int = 100, tol: float = 1e-6) -> Tensor:
    """The geometric median of ``points`` (``[n, d]``) by Weiszfeld's iteration, in float64.

    The point minimising the summed distance to all points: a centre that outliers move less than the mean.

    Raises:
        InputError: no points.
    """
    if points.shape[0] == 0:
        raise InputError("the geometric median needs at least one point")
    data = points.detach().double()
    median = data.mean(dim=0)
    for _ in range(max_iter):
        distances = (data - median).norm(dim=1).clamp_min(1e-12)
        weights = 1.0 / distances
        moved = (weights[:, None] * data).sum(dim=0) / weights.sum()
        shift = float((moved - median).norm())
        median = moved
        if shift <= tol * max(1.0, float(median.norm())):
            break
    return median.to(points.dtype)


@dataclass(frozen=True)
class InitStats:
    """Statistics of a first sample of activations, for initialising an SAE.

    Attributes:
        mean: the mean ``[d_in]``.
        median: the geometric median ``[d_in]`` (the usual ``b_dec`` initialisation).
        mean_norm: the mean L2 norm of a token's value.
        variance: the mean squared distance of a token from ``mean`` (the denominator of explained variance).
        tokens: how many tokens the sample had.
    """

    mean: Tensor
    median: Tensor
    mean_norm: float
    variance: float
    tokens: int


def init_stats(sample: Tensor, *, median_tokens: int = 8192) -> InitStats:
    """`InitStats` of ``sample`` (``[n, d_in]``); the geometric median from its first ``median_tokens`` rows.

    Raises:
        InputError: an empty sample.
    """
    if sample.shape[0] == 0:
        raise InputError("the activation sample is empty; give a corpus with more tokens")
    data = sample.double()
    mean = data.mean(dim=0)
    return InitStats(
        mean=mean.float(),
        median=geometric_median(sample[:median_tokens]).float(),
        mean_norm=float(data.norm(dim=1).mean()),
        variance=float((data - mean).pow(2).sum(dim=1).mean()),
        tokens=int(sample.shape[0]),
    )


# --- corpora and held-out measurement ----------------------------------------------------------------------


def corpus_hash(documents: Sequence[str]) -> str:
    """A short SHA-256 of the documents in order (recorded with a run, checked when it resumes)."""
    digest = hashlib.sha256()
    for document in documents:
        digest.update(document.encode("utf-8") + b"\n")
    return digest.hexdigest()[:16]


def split_corpus(
    corpus: Sequence[str], held_out: Sequence[str] | None = None, seed: int = 0
) -> tuple[list[str], list[str]]:
    """The training and held-out documents of a run.

    Without ``held_out``, 5% of ``corpus``, chosen by ``seed``, is kept out of training; a corpus under 20
    documents is too small to spare any and is its own held-out set.

    Raises:
        InputError: an empty corpus.
    """
    documents = [str(document) for document in corpus]
    if not documents:
        raise InputError("the corpus is empty; give at least one document (one per line with --prompts)")
    if held_out is not None:
        return documents, list(held_out)
    if len(documents) < 20:
        return documents, documents
    order = list(range(len(documents)))
    random.Random(f"mechscope-sae-holdout:{seed}").shuffle(order)
    cut = max(1, len(documents) // 20)
    return [documents[i] for i in sorted(order[cut:])], [documents[i] for i in sorted(order[:cut])]


__all__ = ["ActivationSource", "InitStats", "StreamState", "corpus_hash", "geometric_median"]
__all__ += ["init_stats", "split_corpus"]
