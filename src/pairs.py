"""Pair selection: which image pairs of a dataset are worth matching.

Small datasets are matched exhaustively; larger ones by retrieval: each image is paired
with its ``top_k`` nearest neighbours by cosine similarity of a global descriptor (the
backbone features by default; any (N, D) array can be plugged in). The number of pairs then
grows as about k·N, not N².
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PairsConf:
    top_k: int = 10  # neighbours retrieved per image
    exhaustive_below: int = 30  # datasets with at most this many images: all pairs

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ValueError(f"PairsConf.top_k must be >= 1, got {self.top_k}")
        if self.exhaustive_below < 0:
            raise ValueError(f"PairsConf.exhaustive_below must be >= 0, got "
                             f"{self.exhaustive_below}")


def normalise_descriptors(descriptors: np.ndarray) -> np.ndarray:
    """L2-normalised rows (zero rows stay zero), float64 (N, D)."""
    d = np.asarray(descriptors, dtype=np.float64)
    norms = np.linalg.norm(d, axis=1, keepdims=True)
    return np.divide(d, norms, out=np.zeros_like(d), where=norms > 0)


def select_pairs(names: list[str], descriptors: np.ndarray | None,
                 conf: PairsConf = PairsConf()) -> list[tuple[str, str]]:
    """Unordered image pairs (a, b) with a before b in ``names``, without duplicates.

    descriptors: (N, D) global descriptors in the order of ``names``; may be None when the
    dataset is small enough for exhaustive matching.
    """
    n = len(names)
    if n < 2:
        return []
    if n <= conf.exhaustive_below:
        return [(names[i], names[j]) for i, j in itertools.combinations(range(n), 2)]
    if descriptors is None or len(descriptors) != n:
        raise ValueError(f"retrieval needs one global descriptor per image: {n} images, "
                         f"{None if descriptors is None else len(descriptors)} descriptors")
    d = normalise_descriptors(descriptors)
    similarity = d @ d.T
    np.fill_diagonal(similarity, -np.inf)
    k = min(conf.top_k, n - 1)
    neighbours = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
    chosen = {(min(i, j), max(i, j)) for i in range(n) for j in neighbours[i]}
    return [(names[i], names[j]) for i, j in sorted(chosen)]
