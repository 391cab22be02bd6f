"""Reading concepts per token: while a model generates (`monitor`), or over given texts (`monitor_texts`).

Row ``t`` of every result here is the hidden state *at* position ``t`` — the state after the model has read
token ``t`` (and everything before it), i.e. the one that predicts token ``t + 1``. So the concepts listed
for a token are what the model holds on reading that token, not what made it produce it.

During generation the lens site is captured with a sink: the prompt pass covers every prompt token, each
later pass (one per new token, with the KV cache) covers the token it reads. With a live callback
(``on_token``) each pass's rows cost one product ``h @ W + b`` and a top-k as they arrive; without one, the
rows are kept and read together after generation — one ``[tokens, d] @ [d, K]`` product, the same scores
for a fifth of the cost (measured on toy with 10,000 lenses). ``generate`` never feeds its last token
back, so that token is read by one extra forward pass of the whole sequence after generation
(``read_last=False`` skips it). Token ids come from a streamer handed to ``generate``, which sees the
prompt and then each token as it is chosen.

Examples:
    >>> import torch, mechscope as ms
    >>> from mechscope.concepts.lenses import Lenses
    >>> lm = ms.load("toy")
    >>> lenses = Lenses(W=torch.randn(128, 3), b=torch.zeros(3), threshold=torch.zeros(3),
    ...                 concept_ids=["a", "b", "c"], terms=["a", "b", "c"], site="resid_post.2", model="toy")
    >>> result = monitor(lm, lenses, "The capital of France is", max_new_tokens=2, top_k=2)
    >>> result.generated == lm.generate("The capital of France is", max_new_tokens=2)
    True
    >>> [(t.token, len(t.concepts)) for t in result.generated_tokens()]
    [(' Paris', 2), ('.', 2)]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from pydantic import TypeAdapter
from torch import Tensor

from mechscope.concepts.lens_results import MonitorResult, MonitorToken
from mechscope.concepts.pooling import term_positions
from mechscope.errors import InputError
from mechscope.models.registry import check_provenance

if TYPE_CHECKING:
    from mechscope.concepts.lenses import Lenses
    from mechscope.core.lm import LanguageModel
    from mechscope.core.positions import PassInfo


def _site(lm: LanguageModel, lenses: Lenses, force: bool) -> tuple[str, int | None]:
    """The lenses' site as one concrete site of ``lm`` (and its layer), after checking width and provenance."""
    if not lenses.site:
        raise InputError("the lenses name no site; fit them with site='resid_post.N' or set lenses.site")
    sites = lm.sites(lenses.site)
    if len(sites) != 1:
        raise InputError(f"the lenses' site '{lenses.site}' names {len(sites)} sites; lenses read one")
    if lenses.d_model != lm.arch.d_model:
        raise InputError(
            f"the lenses read width {lenses.d_model} but {lm.arch.family} has d_model {lm.arch.d_model}; "
            "they were fitted on another model"
        )
    check_provenance(lenses.model, lm.source, "concept lenses", force=force)
    return str(sites[0]), sites[0].layer


#: Scores per block in `_top_k`: 64 was fastest for 16 to 512 rows of 10,000 scores on this project's CPUs.
_BLOCK = 64


def _top_k(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` highest scores of each row and their columns, as ``scores.topk(k)`` gives them.

    Exact, and about three times faster than `torch.topk` on many rows of many scores: each row's ``k`` best
    lie in the ``k`` blocks of `_BLOCK` columns with the highest maxima (a block that holds one of them has a
    maximum at least as high as it, and at most ``k - 1`` other blocks can hold a higher score), so only those
    blocks and the last partial one are searched. Among equal scores the columns chosen may differ from
    `torch.topk`'s, whose choice is unspecified too.
    """
    rows, n = scores.shape
    blocks = n // _BLOCK
    if rows < 2 or blocks < 2 * k:  # one row (a live pass) or few scores: topk alone is faster
        top = scores.topk(k, dim=-1)
        return top.values, top.indices
    whole = scores[:, : blocks * _BLOCK].view(rows, blocks, _BLOCK)
    best = whole.amax(-1).topk(k, dim=-1).indices  # [rows, k]: the blocks with the highest maxima
    candidates = whole.gather(1, best.unsqueeze(-1).expand(rows, k, _BLOCK)).reshape(rows, k * _BLOCK)
    columns = (best.unsqueeze(-1) * _BLOCK + torch.arange(_BLOCK, device=scores.device)).reshape(rows, k * _BLOCK)
    if blocks * _BLOCK < n:  # the last, partial block is always searched
        candidates = torch.cat([candidates, scores[:, blocks * _BLOCK :]], 1)
        tail = torch.arange(blocks * _BLOCK, n, device=scores.device).expand(rows, -1)
        columns = torch.cat([columns, tail], 1)
    values, where = candidates.topk(k, dim=-1)
    return values, columns.gather(1, where)


#: Validates a whole generation's tokens in one call (pydantic-core): a third of the cost of building them one by one.
_TOKENS: TypeAdapter[list[MonitorToken]] = TypeAdapter(list[MonitorToken])


class _Reader:
    """A capture sink (called with each pass's rows) and a streamer (``put``: the ids), emitting tokens.

    Live (``on_token``), each pass is read as it arrives and each token is handed on at once. Otherwise the
    passes' rows and the streamer's ids are only kept (no work per token while generating) and `finish` reads
    them all: one product, one batch of token texts, one validation of every `MonitorToken`.
    """

    def __init__(
        self,
        lenses: Lenses,
        key: str,
        top_k: int,
        include_prompt: bool,
        on_token: Callable[[MonitorToken], None] | None,
        token_texts: Callable[[list[int]], list[str]],
        streamer: Any,
    ) -> None:
        self.lenses = lenses
        self.key = key
        self.top_k = min(top_k, lenses.n_concepts)
        self.include_prompt = include_prompt
        self.on_token = on_token
        # As a capture sink: without a live callback the rows are only kept, so the capture need not track each
        # pass's layout (and may hand a pass over when the next one starts); live, each pass is read at its end.
        self.needs_info = on_token is not None
        self.token_texts = token_texts  # LanguageModel.token_texts: it remembers each id's text
        self.streamer = streamer  # the caller's own streamer, told everything this one is
        self.ids: list[int] = []
        self.chunks: list[Tensor] = []  # the streamer's values not yet turned into ids (no live callback)
        self.n_prompt = -1
        self.top: list[tuple[list[float], list[float], list[int]]] = []  # per row: top scores, margins, concepts
        self.skip = 0  # columns of the next pass already read (the extra pass for the last token)
        self.pending: list[Tensor] = []  # rows kept to be read together, when there is no live callback
        self.tokens: list[MonitorToken] = []
        self.read = 0  # tokens read so far (kept or, for an excluded prompt, passed over)

    # the streamer interface of transformers' generate: the prompt's ids first, then each new token's
    def put(self, value: Tensor) -> None:
        if self.streamer is not None:
            self.streamer.put(value)
        if self.n_prompt < 0:
            self.n_prompt = int(value.shape[-1])
        if self.on_token is None:
            self.chunks.append(value)
            return
        self.ids.extend(int(i) for i in value.reshape(-1).tolist())
        self._emit()

    def end(self) -> None:
        if self.streamer is not None:
            self.streamer.end()

    def all_ids(self) -> list[int]:
        """Every token id seen so far (the prompt's, then each new token's)."""
        if self.chunks:
            self.ids.extend(torch.cat([chunk.reshape(-1) for chunk in self.chunks]).tolist())
            self.chunks = []
        return self.ids

    @property
    def n_rows(self) -> int:
        """Positions captured so far (read or waiting to be read)."""
        return len(self.top) + sum(h.shape[1] for h in self.pending)

    def __call__(self, values: dict[str, Tensor], info: PassInfo) -> None:
        # the capture hands over its own copy of the values: keeping it is safe, no second copy
        h = values[self.key]  # [1, length, d]: the positions this pass adds
        if self.on_token is None:
            # kept whole (slicing a view costs more than the rest of this call) and read all at once in `finish`
            self.pending.append(h if not self.skip else h[:, self.skip :])
            return
        self._read(h[0, self.skip :])  # live: one [length, d] @ [d, K] product per pass
        self._emit()

    def finish(self) -> None:
        """Read the rows kept back (no live callback): every token's scores in one matrix product."""
        if self.pending:
            rows, self.pending = torch.cat(self.pending, dim=1)[0], []
            for start in range(0, len(rows), 512):  # bounds the [rows, K] score block
                self._read(rows[start : start + 512])
        self.all_ids()
        self._emit()

    def _read(self, h: Tensor) -> None:
        values, indices = _top_k(self.lenses.scores(h), self.top_k)
        margins = values - self.lenses.threshold[indices]
        self.top.extend(zip(values.tolist(), margins.tolist(), indices.tolist(), strict=True))

    def _emit(self) -> None:
        """Turn every token with both an id and scores into a `MonitorToken` (one validation for all of them)."""
        ready = min(len(self.ids), len(self.top))
        first = self.read if self.include_prompt else max(self.read, self.n_prompt)
        self.read = max(self.read, ready)
        if first >= ready:
            return
        texts = self.token_texts(self.ids[first:ready])
        tokens = _TOKENS.validate_python(
            [self._fields(index, text) for index, text in zip(range(first, ready), texts, strict=True)]
        )
        self.tokens.extend(tokens)
        if self.on_token is not None:
            for token in tokens:
                self.on_token(token)

    def _fields(self, index: int, text: str) -> dict[str, Any]:
        scores, margins, concepts = self.top[index]
        ids, terms = self.lenses.concept_ids, self.lenses.terms
        token_id = self.ids[index]
        return {
            "index": index,
            "token": text,
            "token_id": token_id,
            "generated": index >= self.n_prompt,
            "concepts": [
                {"id": ids[c], "term": terms[c], "score": s, "margin": m}
                for s, m, c in zip(scores, margins, concepts, strict=True)
            ],
        }


def monitor(
    lm: LanguageModel,
    lenses: Lenses,
    prompt: str,
    *,
    max_new_tokens: int = 20,
    top_k: int = 5,
    include_prompt: bool = True,
    on_token: Callable[[MonitorToken], None] | None = None,
    read_last: bool = True,
    force: bool = False,
    **generate_kwargs: Any,
) -> MonitorResult:
    """Generate from ``prompt`` (greedy unless ``do_sample=True``) and read the top concepts on every token.

    Each token's entry names the ``top_k`` concepts by score on the hidden state at that token's position
    (after reading it), with ``margin = score - threshold`` (a concept fires where it is positive).
    Capturing changes nothing the model computes: the generated text is the one `LanguageModel.generate`
    gives for the same arguments. The hooks are removed on return, and when ``on_token`` raises.

    Args:
        include_prompt: read the prompt's tokens too (they come first, ``generated=False``).
        on_token: called with each `MonitorToken` as soon as it is read (a live display).
        read_last: read the last generated token with one extra forward pass (``generate`` never feeds it
            back, so without this it has no entry).
        force: use lenses fitted on another model of the same width.
        generate_kwargs: passed to `LanguageModel.generate` (a ``streamer`` given there still gets every token).

    Examples:
        The generated tokens only, each handed to a live callback as soon as it is read:

        >>> import torch, mechscope as ms
        >>> from mechscope.concepts.lenses import Lenses
        >>> lm = ms.load("toy")
        >>> W = torch.randn(128, 3, generator=torch.Generator().manual_seed(0))  # three made-up lenses
        >>> lenses = Lenses(W=W, b=torch.zeros(3), threshold=torch.zeros(3), concept_ids=["a", "b", "c"],
        ...                 terms=["a", "b", "c"], site="resid_post.2", model="toy")
        >>> live = []
        >>> result = monitor(lm, lenses, "The capital of France is", max_new_tokens=2, top_k=1,
        ...                  include_prompt=False, on_token=live.append)
        >>> result.generated, result.site, result.layer, len(live)
        (' Paris.', 'resid_post.2', 2, 2)
        >>> [(t.index, t.token, t.concepts[0].id, round(t.concepts[0].margin, 2)) for t in result.tokens]
        [(7, ' Paris', 'c', 69.72), (8, '.', 'b', 40.06)]

    Raises:
        InputError: the lenses do not fit ``lm`` (site, width), or the prompt is unusable.
        ProvenanceError: the lenses were fitted on another model (and not ``force``).
    """
    if not isinstance(prompt, str):
        raise InputError("monitor reads one prompt at a time; give a string (loop over several)")
    key, layer = _site(lm, lenses, force)
    if top_k < 1:
        raise InputError(f"top_k must be at least 1; got {top_k}")
    lenses = lenses.to(lm.device)
    reader = _Reader(
        lenses, key, top_k, include_prompt, on_token, lm.token_texts, generate_kwargs.pop("streamer", None)
    )
    with torch.no_grad():
        with lm.capture([key], positions="all", sink=reader):
            generated = lm.generate(prompt, max_new_tokens=max_new_tokens, streamer=reader, **generate_kwargs)
        ids = reader.all_ids()  # the block is closed: every pass has reached the sink
        if read_last and reader.n_rows < len(ids):
            reader.skip = reader.n_rows
            with lm.capture([key], positions="all", sink=reader):
                lm.forward(torch.tensor([ids], device=lm.device))
        reader.finish()
    return MonitorResult(
        prompt=prompt, generated=generated, tokens=reader.tokens, site=key, layer=layer, model=str(lm.source)
    )


def _per_token(
    lm: LanguageModel,
    texts: Sequence[str],
    site: str,
    read: Callable[[Tensor], Tensor],
    batch_size: int,
) -> list[Tensor]:
    """``read(states [n_i, d])`` of each text's real tokens at ``site``, in the texts' order (on the CPU)."""
    results: list[Tensor | None] = [None] * len(texts)
    done = 0

    def sink(values: dict[str, Tensor], info: PassInfo) -> None:
        nonlocal done
        h = values[site]
        mask = info.current_mask().to(h.device)
        rows = info.rows.tolist() if info.rows is not None else list(range(done, done + h.shape[0]))
        for r, row in enumerate(rows):
            results[row] = read(h[r][mask[r]]).cpu()
        done += h.shape[0]

    with torch.no_grad(), lm.capture([site], positions="all", sink=sink):
        lm.forward_batches(list(texts), batch_size=batch_size)
    missing = [i for i, r in enumerate(results) if r is None]
    if missing:
        raise RuntimeError(f"no activations came back for text {missing[0]}")
    return [r for r in results if r is not None]


def monitor_texts(
    lm: LanguageModel, lenses: Lenses, texts: Sequence[str], *, batch_size: int = 32, force: bool = False
) -> list[Tensor]:
    """Every concept's score on every token of each text, without generating: ``[n_tokens_i, K]`` per text.

    Row ``t`` reads the hidden state at token ``t`` (special tokens such as BOS included, padding not).

    Examples:
        >>> import torch, mechscope as ms
        >>> from mechscope.concepts.lenses import Lenses
        >>> lm = ms.load("toy")
        >>> W = torch.randn(128, 3, generator=torch.Generator().manual_seed(0))  # three made-up lenses
        >>> lenses = Lenses(W=W, b=torch.zeros(3), threshold=torch.zeros(3), concept_ids=["a", "b", "c"],
        ...                 terms=["a", "b", "c"], site="resid_post.2", model="toy")
        >>> texts = ["The capital of France is", "Two plus two is"]
        >>> scores = monitor_texts(lm, lenses, texts)
        >>> [tuple(s.shape) for s in scores]  # [tokens, concepts] per text, BOS included
        [(7, 3), (11, 3)]
        >>> torch.allclose(torch.cat(scores), lenses.scores(token_states(lm, texts, "resid_post.2")), atol=1e-5)
        True

    Raises:
        InputError: the lenses do not fit ``lm``, or a text is unusable.
    """
    key, _ = _site(lm, lenses, force)
    on_device = lenses.to(lm.device)
    return _per_token(lm, texts, key, on_device.scores, batch_size)


def token_states(
    lm: LanguageModel,
    texts: Sequence[str],
    site: str,
    *,
    exclude: Sequence[str] | None = None,
    batch_size: int = 32,
) -> Tensor:
    """The hidden states of every real token of ``texts`` at ``site``, stacked: ``[sum n_tokens, d]`` float32.

    This is what `mechscope.concepts.lenses.calibrate` takes as its neutral corpus, and what
    `mechscope.concepts.lenses.fit_lenses` takes as ``background``.

    Args:
        exclude: per text, a term whose tokens (those overlapping its last occurrence) are left out: the
            other tokens of concept sentences make background rows that name no concept.

    Examples:
        >>> import mechscope as ms
        >>> lm = ms.load("toy")
        >>> texts = ["The capital of France is", "Two plus two is"]
        >>> lm.token_texts(lm.tokenize(texts[:1])["input_ids"][0])
        ['<bos>', 'The', ' capital', ' of', ' F', 'rance', ' is']
        >>> states = token_states(lm, texts, "resid_post.2")  # 7 + 11 real tokens
        >>> states.shape, states.dtype
        (torch.Size([18, 128]), torch.float32)
        >>> token_states(lm, texts[:1], "resid_post.2", exclude=["France"]).shape  # without ' F' and 'rance'
        torch.Size([5, 128])
    """
    (key,) = (str(s) for s in lm.sites(site))
    states = _per_token(lm, texts, key, lambda h: h.float(), batch_size)
    if exclude is not None:
        if len(exclude) != len(texts):
            raise InputError(f"exclude needs one term per text; got {len(exclude)} for {len(texts)} texts")
        for i, (text, term) in enumerate(zip(texts, exclude, strict=True)):
            keep = torch.ones(len(states[i]), dtype=torch.bool)
            keep[term_positions(lm, text, term)] = False
            states[i] = states[i][keep]
    return torch.cat(states)
