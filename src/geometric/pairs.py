"""Pair selection: which image pairs of a dataset are worth matching.

Small datasets are matched exhaustively; larger ones by retrieval: each image is paired
with its ``top_k`` nearest neighbours by cosine similarity of a global descriptor (VLAD of
the local features, the learned backbone's features or DINOv2's, see
``src.geometric.retrieval``; any (N, D) array can be plugged in, or several, whose neighbour
lists are joined). The number of pairs then grows as about k·N, not N².
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from src.geometric.options import PAIR_EXHAUSTIVE_BELOW, PAIR_TOP_K
from src.submission import OUTLIER_SCENE


@dataclass(frozen=True)
class PairsConf:
    top_k: int = PAIR_TOP_K  # neighbours retrieved per image
    exhaustive_below: int = PAIR_EXHAUSTIVE_BELOW  # datasets this small or smaller: all pairs
    seed: int = 0  # k-means seed of the VLAD vocabulary (retrieval only)

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


def select_pairs(names: list[str], descriptors: np.ndarray | Sequence[np.ndarray] | None,
                 conf: PairsConf = PairsConf()) -> list[tuple[str, str]]:
    """Unordered image pairs (a, b) with a before b in ``names``, without duplicates, sorted
    by the positions of a then b in ``names``.

    descriptors: (N, D) global descriptors in the order of ``names``, or several such arrays
    (widths may differ): then each image's ``top_k`` neighbours by each array, all together
    (VLAD and DINOv2 miss different pairs); may be None when the dataset is small enough for
    exhaustive matching.
    """
    n = len(names)
    if n < 2:
        return []
    if n <= conf.exhaustive_below:
        return [(names[i], names[j]) for i, j in itertools.combinations(range(n), 2)]
    descriptor_sets = ([] if descriptors is None else [descriptors]
                       if isinstance(descriptors, np.ndarray) else list(descriptors))
    if not descriptor_sets:
        raise ValueError(f"retrieval needs one global descriptor per image: {n} images, "
                         f"no descriptors")
    chosen: set[tuple[int, int]] = set()
    for d in descriptor_sets:
        if len(d) != n:
            raise ValueError(f"retrieval needs one global descriptor per image: {n} images, "
                             f"{len(d)} descriptors")
        chosen |= _nearest_pairs(d, conf.top_k)
    return [(names[i], names[j]) for i, j in sorted(chosen)]


def _nearest_pairs(descriptors: np.ndarray, top_k: int) -> set[tuple[int, int]]:
    """Index pairs (i, j), i < j, of each row and its ``top_k`` most cosine-similar rows."""
    n = len(descriptors)
    d = normalise_descriptors(descriptors)
    similarity = d @ d.T
    np.fill_diagonal(similarity, -np.inf)
    k = min(top_k, n - 1)
    neighbours = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
    return {(min(i, j), max(i, j)) for i in range(n) for j in neighbours[i]}


def vlad_descriptors(local_descriptors: list[np.ndarray], n_words: int = 32,
                     seed: int = 0, max_training: int = 20_000) -> np.ndarray:
    """VLAD global descriptors (N, n_words * D) from each image's local descriptors.

    A vocabulary of ``n_words`` k-means centres is fitted on (a sample of) this dataset's own
    descriptors, so no pretrained network is needed. Residuals to the nearest word are summed
    per word, then power-normalised (signed square root), normalised per word (intra-norm)
    and L2-normalised. Images without descriptors get a zero vector.
    """
    from sklearn.cluster import MiniBatchKMeans
    from threadpoolctl import threadpool_limits

    non_empty = [d for d in local_descriptors if len(d)]
    if not non_empty:
        return np.zeros((len(local_descriptors), 1))
    dim = non_empty[0].shape[1]
    # One array of all descriptors serves the training sample and the words: each copy of a
    # dataset's descriptors is ~100 MB at 90 images of 2048 keypoints.
    everything = np.concatenate(non_empty, dtype=np.float32)
    pool = everything
    rng = np.random.default_rng(seed)
    if len(pool) > max_training:
        pool = pool[rng.choice(len(pool), max_training, replace=False)]
    k = max(1, min(n_words, len(pool)))
    # One BLAS thread: small k-means batches are slower threaded, far slower under load
    # (measured 1.7-2.4 s vs 5.3-14.1 s for 160 demo images). The words of all images are
    # found in one call (per image, the calls' overhead was a third of the stage).
    with threadpool_limits(1):
        kmeans = MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=3,
                                 batch_size=min(4096, len(pool))).fit(pool)
        words = kmeans.predict(everything)
    centres = kmeans.cluster_centers_.astype(np.float64)
    out = np.zeros((len(local_descriptors), k * dim))
    start = 0
    for i, d in enumerate(local_descriptors):
        if not len(d):
            continue
        image_words = words[start:start + len(d)]
        start += len(d)
        # residuals summed per word: sum(d) - count * centre, as one product
        assigned = np.zeros((len(d), k))
        assigned[np.arange(len(d)), image_words] = 1.0
        residuals = assigned.T @ np.asarray(d, np.float64)
        residuals -= np.bincount(image_words, minlength=k)[:, None] * centres
        residuals = np.sign(residuals) * np.sqrt(np.abs(residuals))
        norms = np.linalg.norm(residuals, axis=1, keepdims=True)
        residuals = np.divide(residuals, norms, out=np.zeros_like(residuals), where=norms > 0)
        out[i] = residuals.ravel()
    return normalise_descriptors(out)


# --------------------------------------------------------------------------- measurement
def covisible_pairs(scene_of: dict[str, str],
                    outlier_scene: str = OUTLIER_SCENE) -> set[tuple[str, str]]:
    """Ground-truth co-visible pairs of one dataset: unordered pairs (a, b), a < b, of images
    labelled with the same scene. Images labelled ``outlier_scene`` belong to no pair.

    scene_of: image name -> ground-truth scene, for the images of ONE dataset (scene names
    are only unique within a dataset).
    """
    by_scene: dict[str, list[str]] = {}
    for image, scene in scene_of.items():
        if scene != outlier_scene:
            by_scene.setdefault(scene, []).append(image)
    return {(a, b) for members in by_scene.values()
            for a, b in itertools.combinations(sorted(members), 2)}


def pair_recall_counts(pairs, scene_of: dict[str, str],
                       outlier_scene: str = OUTLIER_SCENE) -> tuple[int, int]:
    """(ground-truth co-visible pairs among ``pairs``, ground-truth co-visible pairs).

    Counts, rather than the ratio, so that several datasets can be pooled. ``pairs``:
    iterable of (a, b) image names in either order; repeats count once, pairs of an image
    with itself, with an outlier or with an unlabelled image are never ground truth.
    """
    truth = covisible_pairs(scene_of, outlier_scene)
    found = {(min(a, b), max(a, b)) for a, b in pairs} & truth
    return len(found), len(truth)


def pair_recall(pairs, scene_of: dict[str, str], outlier_scene: str = OUTLIER_SCENE) -> float:
    """Share of the ground-truth co-visible pairs (see :func:`covisible_pairs`) that
    ``pairs`` contains, in [0, 1]; nan when the dataset has no co-visible pair at all (no
    scene with two images), where recall is undefined.

    Measures pair selection alone: a pair that is selected but fails to match still counts.
    """
    found, total = pair_recall_counts(pairs, scene_of, outlier_scene)
    return found / total if total else float("nan")
