"""Effort where a scene is hard: a match-graph scene that SfM maps badly is done again alone
with more effort, and the better of the two results is kept.

The fast path (a keypoint budget, the retrieved pairs) serves most scenes; what fails on it
is usually a scene whose pictures are low-textured, repetitive or far apart, where more
keypoints (small images upscaled first, if asked) and every pair of its images find the
matches that tie it together. Spending that on every scene would cost several times the
wall time, so only a scene whose largest model registers less than ``EscalationConf.below``
of its images is redone (:func:`needs_escalation`); the redone result is kept when its
largest model registers more images (:func:`better_result`).
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, replace
from pathlib import Path


from src.geometric.features import FeatureConf, Features, extract_dataset
from src.geometric.matching import (MatchConf, load_matched_features, load_verified_matches,
                                    match_and_verify)
from src.geometric.model_merge import Merge, MergeConf, merge_models
from src.geometric.options import (ESCALATE_BELOW, ESCALATION_KEYPOINTS,
                                   ESCALATION_MAX_IMAGES, ESCALATION_MIN_IMAGE_SIDE)
from src.geometric.reconstruction import Model, ReconConf, reconstruct_scene

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EscalationConf:
    """When a scene is redone and with how much more effort (options.py says why)."""

    # A scene whose largest model registers less than this share of its images is redone;
    # 0 = never.
    below: float = ESCALATE_BELOW
    max_keypoints: int = ESCALATION_KEYPOINTS["sift"]  # keypoint budget of the redone scene
    min_image_side: int = ESCALATION_MIN_IMAGE_SIDE  # smaller images are upscaled to it (0: no)
    max_images: int = ESCALATION_MAX_IMAGES  # larger scenes are not redone (all pairs)

    def __post_init__(self) -> None:
        if not 0 <= self.below <= 1:
            raise ValueError(f"EscalationConf.below must be in [0, 1], got {self.below!r}")
        for name in ("max_keypoints", "min_image_side", "max_images"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"EscalationConf.{name} must be an integer >= 0, got "
                                 f"{value!r}")

    def features(self, base: FeatureConf) -> FeatureConf:
        """The features of a redone scene: ``base`` with at least this budget and image side
        (an image side above the base's largest is capped there)."""
        return replace(base, max_keypoints=max(base.max_keypoints, self.max_keypoints),
                       min_image_side=min(max(base.min_image_side, self.min_image_side),
                                          base.max_image_side))


def largest_share(models: list[Model], num_images: int) -> float:
    """Share of a scene's ``num_images`` images that its largest model registers."""
    if num_images == 0:
        return 1.0
    return max((m.num_registered for m in models), default=0) / num_images


def needs_escalation(models: list[Model], num_images: int, conf: EscalationConf) -> str:
    """Why the scene is to be redone (e.g. ``"largest model 7 of 11 images"``), or "" when
    it is not: mapped well enough, too large, or escalation switched off."""
    if conf.below <= 0 or num_images > conf.max_images or num_images < 3:
        return ""
    if largest_share(models, num_images) >= conf.below:
        return ""
    largest = max((m.num_registered for m in models), default=0)
    return f"largest model {largest} of {num_images} images"


def more_to_find(keypoint_counts: list[int], image_sides: list[int], pairs_matched: int,
                 features_conf: FeatureConf, conf: EscalationConf) -> bool:
    """Whether redoing a scene can find more than its fast pass did: some image filled the
    fast pass's keypoint budget (and the redone one is larger), some image is smaller than
    the redone pass would upscale it to, or not every pair of its images was matched. A
    scene of small images already matched all with all (the demo's renders) would be redone
    to the same result."""
    redone = conf.features(features_conf)
    budget_binding = redone.max_keypoints > features_conf.max_keypoints and any(
        count >= features_conf.max_keypoints for count in keypoint_counts)
    upscaled = redone.min_image_side > features_conf.min_image_side and any(
        side < redone.min_image_side for side in image_sides)
    num_images = len(keypoint_counts)
    return budget_binding or upscaled or pairs_matched < num_images * (num_images - 1) // 2


def better_result(escalated: list[Model], fast: list[Model]) -> bool:
    """Whether the redone scene's models beat the fast path's: its largest model registers
    more images (ties keep the fast path: the same result for more cost proves nothing)."""
    best = lambda models: max((m.num_registered for m in models), default=0)  # noqa: E731
    return best(escalated) > best(fast)


def image_sizes(features: dict[str, Features], images: list[str]
                ) -> dict[str, tuple[int, int]]:
    """(width, height) of each image as its features recorded it, so that SfM need not
    decode the images again to learn their sizes."""
    return {im: (features[im].image_size[1], features[im].image_size[0]) for im in images}


def escalate_scene(image_dir: Path, members: list[str], features_conf: FeatureConf,
                   match_conf: MatchConf, recon_conf: ReconConf, conf: EscalationConf,
                   work_dir: Path, overwrite: bool = False, name: str | None = None,
                   merge_conf: MergeConf = MergeConf()
                   ) -> tuple[list[Model], str, list[Merge]]:
    """One scene's images again with :meth:`EscalationConf.features`, every pair of them
    matched, and SfM: (its models joined where they agree, the cameras kept and why, what
    was joined), as ``reconstruction.reconstruct_scene`` and ``model_merge.merge_models``
    give them. The scene's features, its matches
    (with any turns LightGlue's rotation retry chose) and its models are cached in
    ``work_dir``, its own folder: ``overwrite`` then redoes this scene's files only, never
    another scene's."""
    features = conf.features(features_conf)
    work_dir.mkdir(parents=True, exist_ok=True)
    features_path = extract_dataset(image_dir, members, features,
                                    work_dir / f"features-{features.cache_key()}.h5",
                                    overwrite)
    pairs = list(itertools.combinations(members, 2))
    match_path = work_dir / f"matches-{features.cache_key()}-{match_conf.cache_key()}.h5"
    match_and_verify(features_path, pairs, match_conf, match_path, overwrite, image_dir)
    wanted = set(pairs)
    matches = {pair: m for pair, m in load_verified_matches(match_path).items()
               if pair in wanted}
    # the keypoints the matches index (an image matched turned has its turned detections)
    matched = load_matched_features(features_path, match_path)
    keypoints = {im: matched[im].keypoints for im in members}
    sizes = image_sizes(matched, members)
    verified = sum(len(m) >= match_conf.min_inliers for m in matches.values())
    log.info("%s: redone with %d keypoints at >= %d px, %d pairs, %d verified", name or work_dir,
             features.max_keypoints, features.min_image_side, len(pairs), verified)
    models, cameras = reconstruct_scene(image_dir, members, keypoints, matches, work_dir,
                                        recon_conf, overwrite, name, sizes)
    models, merges = merge_models(models, matches, merge_conf)
    return models, cameras, merges


def describe_outcome(reason: str, fast: list[Model], escalated: list[Model], kept: bool
                     ) -> str:
    """One line for the log and sfm_scenes.csv: why the scene was redone, what each pass
    registered and which was kept (no times: the line must repeat run to run; the row's
    seconds include the redone pass)."""
    sizes = lambda models: "+".join(str(m.num_registered) for m in models) or "0"  # noqa: E731
    return (f"{reason}; redone: {sizes(escalated)} against {sizes(fast)} images, "
            f"{'kept' if kept else 'not kept'}")


__all__ = ["EscalationConf", "better_result", "describe_outcome", "escalate_scene",
           "image_sizes", "largest_share", "more_to_find", "needs_escalation"]
