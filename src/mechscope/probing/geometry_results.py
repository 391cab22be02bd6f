"""The geometry of labelled activations as plain numbers: spectrum, 2-D map, class separation. No torch.

`GeometryResult` is what `mechscope.probing.geometry.geometry` returns: how many directions the features
really use (the PCA spectrum and the intrinsic dimension), a 2-D map of the examples for a scatter plot, and
how far apart the classes lie (Fisher ratio, silhouette, cosines of the class means, Cohen's d).
"""

from __future__ import annotations

from pydantic import BaseModel


class Point(BaseModel):
    """One example on the 2-D map: its coordinates and its class."""

    x: float
    y: float
    label: str


class GeometryResult(BaseModel):
    """The geometry of ``n`` labelled feature vectors of dimension ``d``.

    Attributes:
        explained_variance_ratio: the share of the total variance along each of the first principal
            components (at most ``components`` of them).
        intrinsic_dim_90, intrinsic_dim_95: the fewest principal components that together explain at least
            90% (95%) of the variance, over the full spectrum.
        n, d: examples and feature dimension.
        classes: the class names, in order (numeric labels sort as numbers); class_counts: examples of each.
        fisher_ratio: ``trace(S_between) / trace(S_within)``; infinite when every class is a single point.
        silhouette: the mean silhouette coefficient (euclidean), on the sampled points when ``points_sampled``.
        mean_cosine: the cosine similarity of every pair of (uncentred) class means, rows and columns in the
            order of ``classes``; 0 for a class mean that is the zero vector.
        cohens_d: two classes only: the distance between the class means along their difference, in units of
            the pooled within-class standard deviation of the projections; None for more classes.
        projection: ``"pca"`` (the first two principal components) or ``"umap"``.
        points: the examples on the 2-D map (every example, or a seeded sample of them).
        points_sampled: True when ``points`` (and the silhouette) use a sample; every other statistic uses all
            examples.
        site, layer: where the features were read, filled by callers.
    """

    explained_variance_ratio: list[float]
    intrinsic_dim_90: int
    intrinsic_dim_95: int
    n: int
    d: int
    classes: list[str]
    class_counts: list[int]
    fisher_ratio: float
    silhouette: float
    mean_cosine: list[list[float]]
    cohens_d: float | None = None
    projection: str = "pca"
    points: list[Point]
    points_sampled: bool = False
    site: str = ""
    layer: int | None = None

    def summary(self) -> str:
        """One line: the spectrum's top two components, the intrinsic dimension and the class separation.

        >>> result = GeometryResult(explained_variance_ratio=[0.5, 0.25, 0.1], intrinsic_dim_90=4,
        ...     intrinsic_dim_95=6, n=200, d=64, classes=["0", "1"], class_counts=[100, 100], fisher_ratio=1.5,
        ...     silhouette=0.42, mean_cosine=[[1.0, 0.2], [0.2, 1.0]], cohens_d=3.1, points=[], layer=3)
        >>> print(result.summary())
        layer 3: n = 200, d = 64, 2 classes; PC1+PC2 explain 75.0%; intrinsic dim 4 (90%) / 6 (95%);
        Fisher 1.5, silhouette 0.420, Cohen's d 3.10
        """
        where = " ".join(part for part in (self.site, "" if self.layer is None else f"layer {self.layer}") if part)
        top = sum(self.explained_variance_ratio[:2])
        line = (
            f"{where + ': ' if where else ''}n = {self.n}, d = {self.d}, {len(self.classes)} classes; "
            f"PC1+PC2 explain {100 * top:.1f}%; intrinsic dim {self.intrinsic_dim_90} (90%) / "
            f"{self.intrinsic_dim_95} (95%); Fisher {self.fisher_ratio:.3g}, silhouette {self.silhouette:.3f}"
        )
        return line + ("" if self.cohens_d is None else f", Cohen's d {self.cohens_d:.2f}")

    def __str__(self) -> str:
        return self.summary()
