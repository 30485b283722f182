"""One scene, one model: bring together the SfM models a match-graph scene came out as.

The incremental mapper stops a model when no further image registers with enough 2D-3D
inliers and starts another from the images left; one scene then comes out as several models
(on the demo data 7 + 3 images), and each extra model costs the scene its cameras in the
score. The models usually have little or no image in common (pycolmap's
``align_reconstructions_via_*`` need common images), but they still see common points: our
verified matches join a keypoint of an image in one model to a keypoint of an image in
the other, and where both keypoints were triangulated the two 3D points are one point of
the scene in two frames. A robust similarity between those point pairs
(``pycolmap.estimate_sim3d_robust``, LO-RANSAC) brings the smaller model into the larger
one's frame; it is accepted only when enough pairs agree within a tolerance relative to the
scene's size, so two scenes matched by chance stay apart.

Merged cameras keep their own model's relative poses (no joint bundle adjustment: the
scorer aligns camera centres, and each model was already adjusted on its own). An image
registered in both models keeps the larger model's pose.

Conventions: world-to-camera poses ``x_cam = R_cw @ X + t_cw`` (src.geometry); a similarity
``X_a = scale * R_ab @ X_b + t_ab`` maps model b's frame to model a's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Mapping

import numpy as np
import pycolmap

from src.geometric.options import (MERGE_MIN_AGREEING_POINTS, MERGE_MIN_AGREEING_SHARE,
                                   MERGE_MODELS, MERGE_POINT_TOLERANCE)
from src.geometric.reconstruction import Model, mean_reprojection_error

log = logging.getLogger(__name__)

__all__ = ["MergeConf", "Merge", "Similarity", "describe_merges", "point_pairs", "transform_pose",
           "transform_model", "estimate_similarity", "merge_models"]

PairKey = tuple[str, str]


@dataclass(frozen=True)
class MergeConf:
    """When two models of one scene are taken to be one (options.MERGE_* say why)."""

    enabled: bool = MERGE_MODELS
    # Point pairs that must agree after the similarity, and their share of all pairs.
    min_agreeing_points: int = MERGE_MIN_AGREEING_POINTS
    min_agreeing_share: float = MERGE_MIN_AGREEING_SHARE
    # A pair agrees when its two points land within this fraction of the size of what they
    # cover in the larger model (median distance of its matched points to their centroid).
    point_tolerance: float = MERGE_POINT_TOLERANCE
    seed: int = 0  # LO-RANSAC's random generator

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ValueError(f"MergeConf.enabled must be True or False, got {self.enabled!r}")
        points = self.min_agreeing_points
        if isinstance(points, bool) or not isinstance(points, int) or points < 3:
            raise ValueError(f"MergeConf.min_agreeing_points must be an integer >= 3, got "
                             f"{points!r}")
        for name in ("min_agreeing_share", "point_tolerance"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and not isinstance(value, bool)
                    and 0 < value <= 1):
                raise ValueError(f"MergeConf.{name} must be in (0, 1], got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"MergeConf.seed must be an integer >= 0, got {self.seed!r}")


@dataclass(frozen=True)
class Similarity:
    """``X_a = scale * R_ab @ X_b + t_ab``: model b's frame to model a's."""

    scale: float
    R_ab: np.ndarray  # (3, 3)
    t_ab: np.ndarray  # (3,)

    def apply(self, points_b: np.ndarray) -> np.ndarray:
        """(N, 3) points of frame b in frame a."""
        return self.scale * np.asarray(points_b, np.float64) @ self.R_ab.T + self.t_ab


@dataclass(frozen=True)
class Merge:
    """One merge: model ``source`` joined into the growing model, and the evidence."""

    source: int  # index of the merged model in the scene's list (largest first)
    source_images: int  # images it registered
    images_added: int  # of those, the images the growing model lacked
    agreeing_points: int
    point_pairs: int

    def describe(self) -> str:
        return (f"model {self.source + 1} ({self.source_images} images, +{self.images_added}) "
                f"joined: {self.agreeing_points}/{self.point_pairs} point pairs agree")


def describe_merges(merges: list[Merge]) -> str:
    """One line for the log and sfm_scenes.csv ("" when nothing was joined)."""
    return "; ".join(merge.describe() for merge in merges)


# =========================================================================== geometry
def transform_pose(R_cw: np.ndarray, t_cw: np.ndarray, similarity: Similarity
                   ) -> tuple[np.ndarray, np.ndarray]:
    """A world-to-camera pose of frame b expressed in frame a (the camera frame is rescaled
    with the world: centres map as ``C_a = scale * R_ab @ C_b + t_ab``)."""
    R_new = np.asarray(R_cw, np.float64) @ similarity.R_ab.T
    t_new = similarity.scale * np.asarray(t_cw, np.float64) - R_new @ similarity.t_ab
    return R_new, t_new


def transform_model(model: Model, similarity: Similarity) -> Model:
    """``model`` with its poses and 3D points moved into frame a."""
    poses = {name: transform_pose(R, t, similarity) for name, (R, t) in model.poses.items()}
    return replace(model, poses=poses, points3D=similarity.apply(model.points3D))


def point_pairs(model_a: Model, model_b: Model, matches: Mapping[PairKey, np.ndarray]
                ) -> tuple[np.ndarray, np.ndarray]:
    """(P, 2) indices (point of a, point of b) of the 3D points the two models share, and
    (P,) how many keypoint links say so, from verified matches between an image of a and an
    image of b (either way round) and from keypoints of an image registered in both."""
    links = []
    for (im1, im2), m in matches.items():
        m = np.asarray(m).reshape(-1, 2)
        for first, second, cols in ((im1, im2, (0, 1)), (im2, im1, (1, 0))):
            if first in model_a.observations and second in model_b.observations:
                links.append(np.stack([model_a.observations[first][m[:, cols[0]]],
                                       model_b.observations[second][m[:, cols[1]]]], axis=1))
    for name in set(model_a.observations) & set(model_b.observations):
        obs_a, obs_b = model_a.observations[name], model_b.observations[name]
        links.append(np.stack([obs_a, obs_b], axis=1))
    if not links:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.int64)
    linked = np.concatenate(links).astype(np.int64)
    linked = linked[(linked[:, 0] >= 0) & (linked[:, 1] >= 0)]
    pairs, counts = np.unique(linked, axis=0, return_counts=True)
    return pairs.reshape(-1, 2), counts


def _size(points: np.ndarray) -> float:
    """The size of the part of a model the matched points cover: their median distance to
    their centroid (the tolerance scales with what is being aligned)."""
    return float(np.median(np.linalg.norm(points - points.mean(axis=0), axis=1)))


def estimate_similarity(points_a: np.ndarray, points_b: np.ndarray, tolerance: float,
                        seed: int = 0) -> tuple[Similarity | None, np.ndarray]:
    """The similarity taking ``points_b`` onto ``points_a`` (both (P, 3), row k the same
    scene point), by LO-RANSAC with inlier distance ``tolerance`` (frame a units); and the
    (P,) mask of pairs within it. (None, all False) when no similarity is found."""
    options = pycolmap.RANSACOptions()
    options.max_error = float(tolerance)
    options.random_seed = int(seed)
    found = pycolmap.estimate_sim3d_robust(np.asarray(points_b, np.float64),
                                           np.asarray(points_a, np.float64), options)
    if found is None:
        return None, np.zeros(len(points_a), bool)
    a_from_b = found["tgt_from_src"]
    matrix = np.asarray(a_from_b.matrix(), np.float64)  # [scale * R | t]
    scale = float(a_from_b.scale)
    similarity = Similarity(scale=scale, R_ab=matrix[:, :3] / scale, t_ab=matrix[:, 3])
    distances = np.linalg.norm(similarity.apply(points_b) - points_a, axis=1)
    return similarity, distances < tolerance


# =========================================================================== merging
def _merged(target: Model, source: Model) -> Model:
    """``target`` with the images and points of ``source`` (already in target's frame)."""
    poses = dict(target.poses)
    intrinsics = dict(target.intrinsics)
    observations = dict(target.observations)
    cameras = dict(target.cameras)
    offset = target.num_points3D
    for name in source.poses:
        if name in poses:
            continue  # the larger model's pose stands
        poses[name] = source.poses[name]
        intrinsics[name] = source.intrinsics[name]
        if name in source.cameras:
            cameras[name] = source.cameras[name]
        obs = source.observations.get(name)
        if obs is not None:
            observations[name] = np.where(obs >= 0, obs + offset, -1).astype(obs.dtype)
    return replace(target, poses=dict(sorted(poses.items())),
                   points3D=np.concatenate([target.points3D, source.points3D]),
                   num_points3D=target.num_points3D + source.num_points3D,
                   intrinsics=dict(sorted(intrinsics.items())), observations=observations,
                   cameras=dict(sorted(cameras.items())),
                   mean_reprojection_error=mean_reprojection_error([target, source]),
                   num_observations=target.num_observations + source.num_observations,
                   shared_cameras=target.shared_cameras or source.shared_cameras)


def _try_merge(target: Model, source: Model, matches: Mapping[PairKey, np.ndarray],
               conf: MergeConf) -> tuple[Model | None, int, int]:
    """(target with source joined, or None; agreeing point pairs; all point pairs)."""
    pairs, _ = point_pairs(target, source, matches)
    if len(pairs) < conf.min_agreeing_points:
        return None, 0, len(pairs)
    points_a, points_b = target.points3D[pairs[:, 0]], source.points3D[pairs[:, 1]]
    tolerance = conf.point_tolerance * _size(points_a)
    if not tolerance > 0:
        return None, 0, len(pairs)
    similarity, agree = estimate_similarity(points_a, points_b, tolerance, conf.seed)
    agreeing = int(agree.sum())
    if (similarity is None or agreeing < conf.min_agreeing_points
            or agreeing < conf.min_agreeing_share * len(pairs)):
        return None, agreeing, len(pairs)
    return _merged(target, transform_model(source, similarity)), agreeing, len(pairs)


def merge_models(models: list[Model], matches: Mapping[PairKey, np.ndarray],
                 conf: MergeConf = MergeConf()) -> tuple[list[Model], list[Merge]]:
    """The scene's models (largest first) with every model that agrees with the largest
    joined into it; the rest as they were, largest first. Models are tried in turn, again
    after each success (a merged model may now share points with one that did not), until
    none joins. Returns the models and what was joined."""
    if not conf.enabled or len(models) < 2:
        return list(models), []
    grown, rest = models[0], list(range(1, len(models)))
    merges: list[Merge] = []
    joined = True
    while joined and rest:
        joined = False
        for k in list(rest):
            merged, agreeing, total = _try_merge(grown, models[k], matches, conf)
            if merged is None:
                log.debug("model %d not joined: %d of %d point pairs agree", k + 1, agreeing,
                          total)
                continue
            merges.append(Merge(source=k, source_images=models[k].num_registered,
                                images_added=merged.num_registered - grown.num_registered,
                                agreeing_points=agreeing, point_pairs=total))
            grown = merged
            rest.remove(k)
            joined = True
    remaining = [models[k] for k in rest]
    return [grown, *sorted(remaining, key=lambda m: -m.num_registered)], merges
