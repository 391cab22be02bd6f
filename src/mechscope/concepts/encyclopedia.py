"""The encyclopedia file: per-concept activation statistics and samples in one HDF5 file.

Layout (activations float16, variances float32 — a square overflows float16 — chunked, shuffle + gzip):

* attributes: ``format``, ``format_version``, ``model``, ``revision``, ``layers`` (absolute indices),
  ``model_layers``, ``d_model``, ``stage`` (the highest stage run), ``samples_per_concept`` (mean count),
  ``pooling`` (``mean``: masked mean over the text's tokens), ``code_version``, ``concepts_sha256``;
* ``concepts/{id,term,category,parent,json}`` (strings), ``concepts/count`` (training samples behind the
  mean) and ``concepts/stage`` (the last stage that refined the concept);
* ``layer_{i}/mean`` and ``layer_{i}/variance`` ``[K, d]`` — the running mean and population variance
  (ddof 0) of the concept's *training* samples at layer ``i``;
* ``samples/layer_{i}`` ``[M, d]`` with ``samples/{concept,template,split,stage}`` ``[M]``: every sample,
  so that readers train on samples, not means. ``split`` is 0 for training and 1 for held-out contexts
  (templates never used for a mean or for training); ``template`` is the template's index in its bank, -1
  for the bare term (stage 0) and -2 for a generated context (stage 2).

Changes go through `mechscope.storage.hdf5.rewrite` (copy, change, swap): a failure never loses data.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mechscope.concepts.concept import Concept, ConceptList
from mechscope.errors import InputError
from mechscope.storage.hdf5 import GZIP_LEVEL, gzip_datasets, open_h5, read_text, rewrite, text_dataset

FORMAT = "mechscope-encyclopedia"
FORMAT_VERSION = 1
TRAIN, HELD_OUT = 0, 1
BARE, GENERATED = -1, -2
SPLITS = {"train": TRAIN, "held-out": HELD_OUT}


def concepts_digest(concepts: Sequence[Concept]) -> str:
    """SHA-256 of the concept list (ids, terms and everything else, in order).

    Examples:
        >>> from mechscope.concepts.concept import from_terms
        >>> digest = concepts_digest(from_terms(["dog", "cat"]))
        >>> len(digest), digest == concepts_digest(from_terms(["dog", "cat"]))
        (64, True)
        >>> digest == concepts_digest(from_terms(["cat", "dog"]))  # the order is part of the list
        False
    """
    digest = hashlib.sha256()
    for concept in concepts:
        digest.update(concept.to_json().encode("utf-8") + b"\n")
    return digest.hexdigest()


@dataclass(frozen=True)
class EncyclopediaInfo:
    """What an encyclopedia was built from (the file's attributes).

    Examples:
        >>> from pathlib import Path
        >>> info = EncyclopediaInfo(model="toy", revision="", layers=(3,), model_layers=4, d_model=128, stage=0,
        ...                         samples_per_concept=1.0, pooling="mean", code_version="0", concepts_sha256="")
        >>> attrs = info.attrs()  # what the HDF5 file's attributes hold
        >>> attrs["format"], attrs["format_version"], attrs["layers"]
        ('mechscope-encyclopedia', 1, array([3]))
        >>> EncyclopediaInfo.from_attrs(attrs, Path("enc.h5")) == info
        True
        >>> EncyclopediaInfo.from_attrs({"format": "other"}, Path("enc.h5"))
        Traceback (most recent call last):
        mechscope.errors.InputError: 'enc.h5' is an HDF5 file but not a mechscope encyclopedia; build one with bootstrap
    """

    model: str
    revision: str
    layers: tuple[int, ...]
    model_layers: int
    d_model: int
    stage: int
    samples_per_concept: float
    pooling: str
    code_version: str
    concepts_sha256: str

    def attrs(self) -> dict[str, Any]:
        """The HDF5 attributes."""
        values: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION}
        values.update({name: getattr(self, name) for name in self.__dataclass_fields__})
        values["layers"] = np.asarray(self.layers, dtype=np.int64)
        return values

    @classmethod
    def from_attrs(cls, attrs: Any, path: Path) -> EncyclopediaInfo:
        if attrs.get("format") != FORMAT:
            raise InputError(f"'{path}' is an HDF5 file but not a mechscope encyclopedia; build one with bootstrap")
        if int(attrs.get("format_version", 0)) > FORMAT_VERSION:
            raise InputError(f"'{path}' was written by a newer mechscope; upgrade mechscope to read it")
        return cls(
            model=str(attrs["model"]),
            revision=str(attrs["revision"]),
            layers=tuple(int(x) for x in attrs["layers"]),
            model_layers=int(attrs["model_layers"]),
            d_model=int(attrs["d_model"]),
            stage=int(attrs["stage"]),
            samples_per_concept=float(attrs["samples_per_concept"]),
            pooling=str(attrs["pooling"]),
            code_version=str(attrs["code_version"]),
            concepts_sha256=str(attrs["concepts_sha256"]),
        )


@dataclass
class Samples:
    """Samples read from an encyclopedia: ``x`` ``[m, n_layers, d]`` float32 and, per sample, its concept etc.

    Examples:
        `Encyclopedia.samples` reads them; `where` keeps some (here the held-out one):

        >>> import numpy as np
        >>> samples = Samples(x=np.zeros((3, 1, 4), np.float32), concept=np.array([0, 1, 1]),
        ...                   template=np.array([-1, 0, 2]), split=np.array([0, 0, 1]), stage=np.array([0, 1, 1]),
        ...                   layers=(3,))
        >>> held_out = samples.where(samples.split == 1)
        >>> len(samples), len(held_out), held_out.concept.tolist(), held_out.x.shape, held_out.layers
        (3, 1, [1], (1, 1, 4), (3,))
    """

    x: np.ndarray
    concept: np.ndarray
    template: np.ndarray
    split: np.ndarray
    stage: np.ndarray
    layers: tuple[int, ...]

    def __len__(self) -> int:
        return int(self.concept.shape[0])

    def where(self, keep: np.ndarray) -> Samples:
        """The samples where the boolean mask ``keep`` holds."""
        return Samples(
            self.x[keep], self.concept[keep], self.template[keep], self.split[keep], self.stage[keep], self.layers
        )


class Encyclopedia:
    """A read-only view of an encyclopedia file; arrays are read on demand.

    Examples:
        >>> import tempfile, pathlib
        >>> import mechscope as ms
        >>> from mechscope.concepts.bootstrap import bootstrap
        >>> from mechscope.concepts.concept import ConceptList
        >>> from mechscope.concepts.sources import toyworld_concepts
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "enc.h5"
        >>> concepts = ConceptList(toyworld_concepts().concepts[:3])  # three countries
        >>> _ = bootstrap(ms.load("toy"), concepts, out, layers=[-2, -1], progress=False)
        >>> enc = Encyclopedia(out)
        >>> len(enc), enc.concepts[0].id, enc.info.layers, enc.info.stage, enc.layer(-1)
        (3, 'toy:country:France', (2, 3), 0, 3)
        >>> enc.mean(-1).shape, float(enc.variance(3).max()), enc.count().tolist(), enc.stage().tolist()
        ((3, 128), 0.0, [1, 1, 1], [0, 0, 0])
        >>> samples = enc.samples([-1], split="train")  # stage 0: one bare-term sample per concept
        >>> samples.x.shape, samples.concept.tolist(), samples.template.tolist()
        ((3, 1, 128), [0, 1, 2], [-1, -1, -1])
        >>> enc.layer(0)
        Traceback (most recent call last):
        mechscope.errors.InputError: layer 0 is not in this encyclopedia; it has layers [2, 3]

    Raises:
        InputError: the file is missing, corrupt, or not an encyclopedia.
    """

    def __init__(self, path: str | os.PathLike[str], *, written_from: ConceptList | None = None) -> None:
        """Open ``path``; ``written_from`` is the concept list the file was just written from (not parsed again)."""
        self.path = Path(path)
        with open_h5(self.path) as handle:
            self.info = EncyclopediaInfo.from_attrs(handle.attrs, self.path)
            if "concepts/json" not in handle:
                raise InputError(f"'{self.path}' has no concept table; it is incomplete: rebuild it")
            table = handle["concepts/json"]
            if written_from is not None and len(table) != len(written_from):
                raise InputError(f"'{self.path}' holds {len(table)} concepts, not the {len(written_from)} written")
            rows = read_text(table) if written_from is None else []
        self.concepts = written_from or ConceptList([Concept.from_json(row) for row in rows])

    def __len__(self) -> int:
        return len(self.concepts)

    def layer(self, layer: int) -> int:
        """``layer`` (absolute, or negative from the model's end) as one of the stored layers.

        Raises:
            InputError: the layer was not captured.
        """
        absolute = layer + self.info.model_layers if layer < 0 else layer
        if absolute not in self.info.layers:
            raise InputError(f"layer {layer} is not in this encyclopedia; it has layers {list(self.info.layers)}")
        return absolute

    def _read(self, name: str, rows: np.ndarray | None = None) -> np.ndarray:
        with open_h5(self.path) as handle:
            try:
                dataset = handle[name]
            except KeyError as error:
                raise InputError(f"'{self.path}' has no {name}; it is incomplete: rebuild it") from error
            values = dataset[()] if rows is None else dataset[np.sort(rows)]
        return np.asarray(values)

    def mean(self, layer: int) -> np.ndarray:
        """``[K, d]`` float32: each concept's mean training activation at ``layer``."""
        return self._read(f"layer_{self.layer(layer)}/mean").astype(np.float32)

    def variance(self, layer: int) -> np.ndarray:
        """``[K, d]`` float32: each concept's population variance (ddof 0) at ``layer``."""
        return self._read(f"layer_{self.layer(layer)}/variance").astype(np.float32)

    def count(self) -> np.ndarray:
        """``[K]``: training samples behind each mean."""
        return self._read("concepts/count").astype(np.int64)

    def stage(self) -> np.ndarray:
        """``[K]``: the last stage that refined each concept."""
        return self._read("concepts/stage").astype(np.int64)

    def samples(self, layers: Sequence[int] | None = None, split: str | None = None) -> Samples:
        """Every stored sample at ``layers`` (default all), optionally of one split (``train``/``held-out``).

        Raises:
            InputError: unknown split or layer.
        """
        if split is not None and split not in SPLITS:
            raise InputError(f"unknown split '{split}'; use {' or '.join(SPLITS)}")
        chosen = tuple(self.layer(layer) for layer in (layers if layers is not None else self.info.layers))
        with open_h5(self.path) as handle:
            splits = np.asarray(handle["samples/split"][()])
            keep = np.ones(len(splits), dtype=bool) if split is None else splits == SPLITS[split]
            index = np.flatnonzero(keep)
            meta = {name: np.asarray(handle[f"samples/{name}"][()])[index] for name in ("concept", "template", "stage")}
            blocks = [_rows(handle[f"samples/layer_{layer}"], keep) for layer in chosen]
        x = np.stack(blocks, axis=1) if blocks else np.zeros((len(index), 0, self.info.d_model), np.float32)
        return Samples(x, meta["concept"], meta["template"], splits[index], meta["stage"], chosen)


def _rows(dataset: Any, keep: np.ndarray) -> np.ndarray:
    """The rows of ``dataset`` where ``keep``, read chunk by chunk (h5py's mask indexing is slow)."""
    out = np.empty((int(keep.sum()), dataset.shape[1]), dtype=np.float32)
    step, filled = 65536, 0
    for start in range(0, dataset.shape[0], step):
        mask = keep[start : start + step]
        if mask.any():
            block = np.asarray(dataset[start : start + len(mask)])[mask]
            out[filled : filled + len(block)] = block
            filled += len(block)
    return out


# --------------------------------------------------------------------------- writing


def _chunks(rows: int, d: int) -> tuple[int, int]:
    return (max(1, min(rows, max(1, 262144 // max(d, 1)))), d)  # about 512 KiB of float16 per chunk


def _array(handle: Any, name: str, values: np.ndarray, resizable: bool = False) -> None:
    values = np.asarray(values)
    options: dict[str, Any] = {}
    if values.ndim == 2:
        options = {"chunks": _chunks(max(values.shape[0], 1), values.shape[1]), "compression": "gzip"}
        options.update(compression_opts=GZIP_LEVEL, shuffle=True)
    if resizable:
        options["maxshape"] = (None, *values.shape[1:])
        if values.ndim == 1:
            options["chunks"] = (65536,)
    handle.create_dataset(name, data=values, **options)


def write_tables(
    handle: Any,
    info: EncyclopediaInfo,
    concepts: Sequence[Concept],
    means: dict[int, np.ndarray],
    count: np.ndarray,
) -> None:
    """Write a fresh encyclopedia into an open, empty file: attributes, concepts, stage-0 means and samples.

    The stage-0 samples are the means themselves (one bare-term sample per concept, variance 0).

    Examples:
        >>> import tempfile, pathlib
        >>> import numpy as np
        >>> from mechscope.concepts.concept import from_terms
        >>> from mechscope.storage.hdf5 import create
        >>> concepts = from_terms(["dog", "cat"])
        >>> info = EncyclopediaInfo("toy", "", (3,), 4, 8, 0, 1.0, "mean", "0", concepts_digest(concepts))
        >>> means = {3: np.arange(16, dtype=np.float32).reshape(2, 8)}
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "enc.h5"
        >>> enc = Encyclopedia(create(path, lambda handle: write_tables(handle, info, concepts, means, np.ones(2))))
        >>> enc.concepts.ids(), enc.mean(3)[1, :3].tolist(), float(enc.variance(3).max()), len(enc.samples())
        (['dog', 'cat'], [8.0, 9.0, 10.0], 0.0, 2)
    """
    handle.attrs.update(info.attrs())
    text_dataset(handle, "concepts/id", [c.id for c in concepts])
    text_dataset(handle, "concepts/term", [c.term for c in concepts])
    text_dataset(handle, "concepts/category", [c.category for c in concepts])
    text_dataset(handle, "concepts/parent", [c.parent or "" for c in concepts])
    text_dataset(handle, "concepts/json", [c.to_json() for c in concepts])
    _array(handle, "concepts/count", count.astype(np.int32))
    _array(handle, "concepts/stage", np.zeros(len(concepts), np.int8))
    for layer, mean in means.items():
        half = mean.astype(np.float16)
        chunks = _chunks(max(half.shape[0], 1), half.shape[1])
        samples = f"samples/layer_{layer}"  # stage 0's samples are its means: compressed once for both
        gzip_datasets(handle, [f"layer_{layer}/mean", samples], half, chunks, resizable=[samples])
        # a variance of zeros is left to the fill value: no chunk is written until a refinement writes one
        handle.create_dataset(
            f"layer_{layer}/variance",
            shape=half.shape,
            dtype=np.float32,
            chunks=chunks,
            compression="gzip",
            compression_opts=GZIP_LEVEL,
            shuffle=True,
            fillvalue=0,
        )
    k = len(concepts)
    _array(handle, "samples/concept", np.arange(k, dtype=np.int32), resizable=True)
    _array(handle, "samples/template", np.full(k, BARE, np.int16), resizable=True)
    _array(handle, "samples/split", np.full(k, TRAIN, np.int8), resizable=True)
    _array(handle, "samples/stage", np.zeros(k, np.int8), resizable=True)


def combine(
    count: np.ndarray, mean: np.ndarray, variance: np.ndarray, values: np.ndarray, owner: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fold new samples into running per-concept statistics (Chan et al.'s parallel update, float64).

    Args:
        count, mean, variance: ``[K]``, ``[K, d]``, ``[K, d]`` running statistics (population variance).
        values: ``[m, d]`` new samples; owner: ``[m]`` the concept of each.

    Returns:
        The new ``(count, mean, variance)``; concepts without new samples are unchanged.

    Examples:
        Concept 0 has one sample (2.0) and gets two more (4.0 and 6.0); concept 1 gets none:

        >>> import numpy as np
        >>> count, mean, variance = np.array([1, 0]), np.array([[2.0], [0.0]]), np.zeros((2, 1))
        >>> count, mean, variance = combine(count, mean, variance, np.array([[4.0], [6.0]]), np.array([0, 0]))
        >>> count.tolist(), mean.ravel().tolist(), variance.ravel().round(4).tolist()  # var(2, 4, 6) = 8/3
        ([3, 0], [4.0, 0.0], [2.6667, 0.0])
    """
    k = count.shape[0]
    n_b = np.bincount(owner, minlength=k).astype(np.float64)
    sums = np.zeros((k, values.shape[1]), np.float64)
    np.add.at(sums, owner, values.astype(np.float64))
    touched = n_b > 0
    mean_b = np.zeros_like(sums)
    mean_b[touched] = sums[touched] / n_b[touched, None]
    squares = np.zeros_like(sums)
    np.add.at(squares, owner, (values.astype(np.float64) - mean_b[owner]) ** 2)
    n_a = count.astype(np.float64)
    n = n_a + n_b
    safe = np.where(n > 0, n, 1.0)[:, None]
    delta = mean_b - mean.astype(np.float64)
    new_mean = np.where(touched[:, None], mean.astype(np.float64) + delta * (n_b[:, None] / safe), mean)
    m2 = variance.astype(np.float64) * n_a[:, None] + squares + delta**2 * (n_a * n_b)[:, None] / safe
    new_variance = np.where(touched[:, None], m2 / safe, variance)
    return n.astype(np.int64), new_mean, new_variance


def add_samples(
    path: str | os.PathLike[str],
    values: dict[int, np.ndarray],
    concept: np.ndarray,
    template: np.ndarray,
    split: np.ndarray,
    stage: int,
) -> Path:
    """Append samples to an encyclopedia and fold its training samples into the running statistics.

    The file is changed by copy-and-swap (`mechscope.storage.hdf5.rewrite`): a failure loses nothing.

    Args:
        values: ``{layer: [m, d]}`` for every layer of the encyclopedia.
        concept, template, split: ``[m]`` per sample; stage: the refinement stage that made them.

    Examples:
        Two training samples of concept 0 and a held-out one of concept 1 (never folded into its mean):

        >>> import tempfile, pathlib
        >>> import numpy as np
        >>> import mechscope as ms
        >>> from mechscope.concepts.bootstrap import bootstrap
        >>> from mechscope.concepts.concept import ConceptList
        >>> from mechscope.concepts.sources import toyworld_concepts
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "enc.h5"
        >>> concepts = ConceptList(toyworld_concepts().concepts[:2])
        >>> enc = bootstrap(ms.load("toy"), concepts, out, layers=[-1], progress=False)
        >>> x = {3: np.stack([enc.mean(3)[0] + 1, enc.mean(3)[0] - 1, enc.mean(3)[1]])}
        >>> path = add_samples(out, x, concept=np.array([0, 0, 1]), template=np.array([0, 1, 0]),
        ...                    split=np.array([TRAIN, TRAIN, HELD_OUT]), stage=1)
        >>> enc = Encyclopedia(path)
        >>> enc.count().tolist(), enc.info.stage, enc.info.samples_per_concept, len(enc.samples(split="held-out"))
        ([3, 1], 1, 2.0, 1)
        >>> enc.stage().tolist()  # concept 1 got only a held-out sample: still at stage 0
        [1, 0]
        >>> round(float(enc.variance(3)[0].mean()), 2), float(enc.variance(3)[1].max())  # var(m, m+1, m-1) = 2/3
        (0.67, 0.0)

    Raises:
        InputError: the layers or shapes do not match the encyclopedia.
    """
    encyclopedia = Encyclopedia(path)
    if sorted(values) != sorted(encyclopedia.info.layers):
        raise InputError(f"samples for layers {sorted(values)}; the encyclopedia has {list(encyclopedia.info.layers)}")
    m = len(concept)
    if any(v.shape != (m, encyclopedia.info.d_model) for v in values.values()):
        raise InputError(f"each layer needs [{m}, {encyclopedia.info.d_model}] samples")
    train = split == TRAIN

    def change(handle: Any) -> None:
        count = np.asarray(handle["concepts/count"][()]).astype(np.int64)
        new_count = count
        for layer, block in values.items():
            group = handle[f"layer_{layer}"]
            new_count, mean, variance = combine(
                count, group["mean"][()], group["variance"][()], block[train], concept[train]
            )
            group["mean"][...] = mean.astype(np.float16)
            group["variance"][...] = variance.astype(np.float32)  # squares of states in the hundreds overflow float16
            _append(handle[f"samples/layer_{layer}"], block.astype(np.float16))
        handle["concepts/count"][...] = new_count.astype(np.int32)
        stages = np.asarray(handle["concepts/stage"][()])
        stages[np.unique(concept[train])] = stage  # held-out samples are kept but refine nothing
        handle["concepts/stage"][...] = stages
        for name, column, dtype in (
            ("concept", concept, np.int32),
            ("template", template, np.int16),
            ("split", split, np.int8),
            ("stage", np.full(m, stage), np.int8),
        ):
            _append(handle[f"samples/{name}"], np.asarray(column, dtype=dtype))
        handle.attrs["stage"] = max(int(handle.attrs["stage"]), stage)
        handle.attrs["samples_per_concept"] = float(new_count.mean())

    return rewrite(path, change)


def _append(dataset: Any, rows: np.ndarray) -> None:
    start = dataset.shape[0]
    dataset.resize(start + rows.shape[0], axis=0)
    dataset[start:] = rows
