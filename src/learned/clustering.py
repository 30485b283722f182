"""Scene clustering of one dataset's images with DBSCAN over predicted poses and features.

Each image is described by three standardised blocks:

- its predicted quaternion (unit, w >= 0) divided by the typical rotation spread of a
  training scene,
- its predicted translation divided by the typical translation spread of a training scene,
- its backbone features, L2-normalised and standardised within the dataset,

each block weighted so that it counts as much as its weight says whatever its width.
DBSCAN's ``eps`` comes from the data: a quantile of the distances to the
``min_samples``-th nearest neighbour, times a factor. Images the outlier head flags, and
DBSCAN noise, go to ``outliers``; clusters are named ``cluster0``, ``cluster1``, … by size.
Datasets are always clustered one at a time, never across datasets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.cluster import DBSCAN
from sklearn.neighbors import NearestNeighbors

from src.geometry import canonical_quat
from src.learned.options import (CLUSTER_EPS_QUANTILE, CLUSTER_EPS_SCALE, CLUSTER_FEATURE_WEIGHT,
                                 CLUSTER_MIN_SAMPLES, CLUSTER_POSE_WEIGHT, OUTLIER_THRESHOLD)
from src.submission import OUTLIER_SCENE, cluster_name


@dataclass(frozen=True)
class ClusterSettings:
    """Knobs of the clustering stage (all documented in config.Config; the defaults, and why
    each, in src.learned.options)."""

    outlier_threshold: float = OUTLIER_THRESHOLD  # outlier-head probability to drop an image
    min_samples: int = CLUSTER_MIN_SAMPLES  # DBSCAN core-point neighbourhood (with the point)
    eps_quantile: float = CLUSTER_EPS_QUANTILE  # quantile of k-NN distances that sets eps ...
    eps_scale: float = CLUSTER_EPS_SCALE  # ... times this factor
    pose_weight: float = CLUSTER_POSE_WEIGHT  # weight of the pose blocks
    feature_weight: float = CLUSTER_FEATURE_WEIGHT  # weight of the visual-feature block

    @classmethod
    def from_config(cls, cfg) -> "ClusterSettings":
        """The clustering fields of a config.Config."""
        return cls(outlier_threshold=cfg.outlier_threshold, min_samples=cfg.cluster_min_samples,
                   eps_quantile=cfg.cluster_eps_quantile, eps_scale=cfg.cluster_eps_scale,
                   pose_weight=cfg.cluster_pose_weight, feature_weight=cfg.cluster_feature_weight)


@dataclass(frozen=True)
class SpreadScales:
    """Typical within-scene spreads from the training labels (see scene_statistics)."""

    quaternion: float
    translation: float

    @classmethod
    def from_scene_stats(cls, stats: pd.DataFrame) -> "SpreadScales":
        """Median over training scenes of the 95th-percentile spreads (1.0 if unknown)."""
        def typical(column: str) -> float:
            values = stats[column].to_numpy(float) if len(stats) else np.array([])
            values = values[np.isfinite(values) & (values > 0)]
            return float(np.median(values)) if len(values) else 1.0
        return cls(quaternion=typical("quat_spread_p95"),
                   translation=typical("trans_spread_p95"))


def _standardise_block(block: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance per column, then scaled so the block's expected squared
    norm is 1 whatever its width."""
    centred = block - block.mean(axis=0)
    std = centred.std(axis=0)
    std[std < 1e-12] = 1.0
    return centred / std / np.sqrt(block.shape[1])


def clustering_space(quats_xyzw: np.ndarray, translations: np.ndarray, features: np.ndarray,
                     scales: SpreadScales, settings: ClusterSettings) -> np.ndarray:
    """The (N, 4 + 3 + D) space DBSCAN works in (see module doc)."""
    q = canonical_quat(quats_xyzw)  # q and -q are one rotation
    pose = np.hstack([q / scales.quaternion / np.sqrt(4),
                      np.asarray(translations, float) / scales.translation / np.sqrt(3)])
    f = np.asarray(features, float)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    return np.hstack([settings.pose_weight * pose,
                      settings.feature_weight * _standardise_block(f)])


def dbscan_eps(points: np.ndarray, min_samples: int, quantile: float, scale: float) -> float:
    """eps from the distances to each point's ``min_samples``-th neighbour (itself included)."""
    k = min(min_samples, len(points))
    distances, _ = NearestNeighbors(n_neighbors=k).fit(points).kneighbors(points)
    eps = float(np.quantile(distances[:, -1], quantile)) * scale
    return max(eps, 1e-9)


def cluster_dataset(quats_xyzw: np.ndarray, translations: np.ndarray, features: np.ndarray,
                    outlier_prob: np.ndarray, scales: SpreadScales,
                    settings: ClusterSettings = ClusterSettings()) -> np.ndarray:
    """Scene name per image of one dataset (``cluster<k>`` or ``outliers``), shape (N,).

    Defined results for small inputs: images the outlier head flags are outliers; if fewer
    than ``min_samples`` images remain, they form a single ``cluster0`` (DBSCAN cannot find
    structure in them, and splitting them would cost clustering score for nothing).
    """
    n = len(outlier_prob)
    names = np.full(n, OUTLIER_SCENE, dtype=object)
    kept = np.flatnonzero(np.asarray(outlier_prob).reshape(-1) <= settings.outlier_threshold)
    if len(kept) == 0:
        return names
    if len(kept) < settings.min_samples:
        names[kept] = cluster_name(0)
        return names
    points = clustering_space(quats_xyzw[kept], translations[kept], features[kept], scales,
                              settings)
    eps = dbscan_eps(points, settings.min_samples, settings.eps_quantile, settings.eps_scale)
    labels = DBSCAN(eps=eps, min_samples=settings.min_samples).fit_predict(points)
    # Name clusters by decreasing size (ties: first image), noise stays `outliers`.
    found = [c for c in np.unique(labels) if c >= 0]
    found.sort(key=lambda c: (-np.sum(labels == c), np.argmax(labels == c)))
    for rank, c in enumerate(found):
        names[kept[labels == c]] = cluster_name(rank)
    return names


def cluster_all(predictions: pd.DataFrame, features: np.ndarray, scales: SpreadScales,
                settings: ClusterSettings = ClusterSettings()) -> pd.Series:
    """Scene name per row of ``predictions`` (columns dataset, qx..qw, tx..tz,
    outlier_prob), clustering each dataset on its own."""
    scenes = pd.Series(OUTLIER_SCENE, index=predictions.index, dtype=object)
    for _, group in predictions.groupby("dataset", sort=False):
        rows = predictions.index.get_indexer(group.index)
        scenes.loc[group.index] = cluster_dataset(
            group[["qx", "qy", "qz", "qw"]].to_numpy(), group[["tx", "ty", "tz"]].to_numpy(),
            features[rows], group["outlier_prob"].to_numpy(), scales, settings)
    return scenes
