"""Effort where a scene is hard: a match-graph scene that SfM maps badly is done again alone
with more effort, and the better of the two results is kept.

The fast path (a keypoint budget, the retrieved pairs) serves most scenes; what fails on it
is usually a scene whose pictures are low-textured, repetitive or far apart, where more
keypoints (small images upscaled first, if asked) and every pair of its images find the
matches that tie it together. Spending that on every scene would cost several times the
wall time, so only a scene that comes out badly is redone (:func:`needs_escalation`): its
largest model registers less than ``EscalationConf.below`` of its images, or at least
``EscalationConf.weak_share`` of its images are tied to the rest by fewer than
``EscalationConf.weak_pairs`` verified pairs (:func:`weakly_tied`: the mapper may register
them, but places them on little evidence). The redone result is kept when its largest model
registers more images, or as many with fewer of them weakly tied (:func:`better_result`).
"""

from __future__ import annotations

import itertools
import logging
import numbers
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from src.geometric.features import FeatureConf, Features, extract_dataset
from src.geometric.matching import (MatchConf, load_matched_features, load_verified_matches,
                                    match_and_verify)
from src.geometric.model_merge import Merge, MergeConf, merge_models
from src.geometric.options import (ESCALATE_BELOW, ESCALATE_WEAK_MAX_IMAGES,
                                   ESCALATE_WEAK_PAIRS, ESCALATE_WEAK_SHARE,
                                   ESCALATION_KEYPOINTS, ESCALATION_MAX_IMAGES,
                                   ESCALATION_MIN_IMAGE_SIDE)
from src.geometric.reconstruction import Model, ReconConf, SceneSfM, reconstruct_scene

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EscalationConf:
    """When a scene is redone and with how much more effort (options.py says why)."""

    # A scene whose largest model registers less than this share of its images is redone;
    # 0 = never.
    below: float = ESCALATE_BELOW
    # ... or where at least ``weak_share`` of its images have fewer than ``weak_pairs``
    # verified pairs within it (0 = never), in scenes of at most ``weak_max_images`` images.
    weak_share: float = ESCALATE_WEAK_SHARE
    weak_pairs: int = ESCALATE_WEAK_PAIRS
    weak_max_images: int = ESCALATE_WEAK_MAX_IMAGES
    max_keypoints: int = ESCALATION_KEYPOINTS["sift"]  # keypoint budget of the redone scene
    min_image_side: int = ESCALATION_MIN_IMAGE_SIDE  # smaller images are upscaled to it (0: no)
    max_images: int = ESCALATION_MAX_IMAGES  # larger scenes are not redone (all pairs)

    def __post_init__(self) -> None:
        for name in ("below", "weak_share"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) \
                    or not 0 <= value <= 1:
                raise ValueError(f"EscalationConf.{name} must be a number in [0, 1], got "
                                 f"{value!r}")
        for name in ("max_keypoints", "min_image_side", "max_images", "weak_pairs",
                     "weak_max_images"):
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


def _largest(models: list[Model]) -> int:
    """Images the largest of ``models`` registers (0 without a model)."""
    return max((m.num_registered for m in models), default=0)


def largest_share(models: list[Model], num_images: int) -> float:
    """Share of a scene's ``num_images`` images that its largest model registers."""
    if num_images == 0:
        return 1.0
    return _largest(models) / num_images


def weakly_tied(images: list[str], matches: dict[tuple[str, str], np.ndarray],
                min_matches: int, min_pairs: int) -> list[str]:
    """The images (in the order given) that fewer than ``min_pairs`` pairs of ``matches``
    with at least ``min_matches`` matches tie to the other ``images``: what the mapper can
    place them by. Pairs with an image outside ``images`` do not count; in a scene of n <=
    ``min_pairs`` images, an image in fewer than all its n - 1 pairs is weakly tied.
    ``matches`` holds each unordered pair once (as pair selection gives them)."""
    min_pairs = min(min_pairs, len(images) - 1)
    members = set(images)
    pairs_of = dict.fromkeys(images, 0)
    for (a, b), m in matches.items():
        if a in members and b in members and a != b and len(m) >= min_matches:
            pairs_of[a] += 1
            pairs_of[b] += 1
    return [im for im in images if pairs_of[im] < min_pairs]


def needs_escalation(models: list[Model], num_images: int, conf: EscalationConf,
                     num_weak: int = 0) -> str:
    """Why the scene is to be redone (e.g. ``"largest model 7 of 11 images"``), or "" when
    it is not: mapped well enough, too large (``conf.max_images``; for the weak-ties rule
    ``conf.weak_max_images``), or escalation switched off. ``num_weak``: how many of its
    images are weakly tied (:func:`weakly_tied` with ``conf.weak_pairs``)."""
    if num_images > conf.max_images or num_images < 3:
        return ""
    if conf.below > 0 and largest_share(models, num_images) < conf.below:
        return f"largest model {_largest(models)} of {num_images} images"
    if conf.weak_share > 0 and num_images <= conf.weak_max_images \
            and num_weak >= conf.weak_share * num_images:
        return (f"{num_weak} of {num_images} images in fewer than "
                f"{min(conf.weak_pairs, num_images - 1)} verified pairs")
    return ""


def more_to_find(keypoint_counts: list[int], image_sides: list[int], pairs_matched: int,
                 features_conf: FeatureConf, conf: EscalationConf) -> bool:
    """Whether redoing a scene can find more than its fast pass did: some image filled the
    fast pass's keypoint budget (and the redone one is larger), some image is smaller than
    the redone pass would upscale it to, or not every pair of its images was matched. A
    scene of small images already matched all with all (the demo's renders) would be redone
    to the same result."""
    redone = conf.features(features_conf)
    # a small image's affine views (options.AFFINE_TILT) may fill the budget too: a larger
    # one gives it more of them, so it counts as binding
    budget_binding = redone.max_keypoints > features_conf.max_keypoints and any(
        count >= features_conf.max_keypoints for count in keypoint_counts)
    upscaled = redone.min_image_side > features_conf.min_image_side and any(
        side < redone.min_image_side for side in image_sides)
    num_images = len(keypoint_counts)
    return budget_binding or upscaled or pairs_matched < num_images * (num_images - 1) // 2


def better_result(escalated: list[Model], fast: list[Model], *, weak_escalated: int = 0,
                  weak_fast: int = 0) -> bool:
    """Whether the redone scene's models beat the fast path's: its largest model registers
    more images, or as many while fewer of the scene's images are weakly tied (``weak_*``:
    :func:`weakly_tied` counts of each pass's matches). The weak counts measure the evidence
    each pass gave the mapper, not its poses: with four times the keypoints and every pair,
    the redone pass nearly always has fewer, so a scene redone for its weak ties keeps the
    redone models unless they register fewer images. Otherwise the fast path stands: the
    same result for more cost proves nothing."""
    if _largest(escalated) != _largest(fast):
        return _largest(escalated) > _largest(fast)
    return weak_escalated < weak_fast


def image_sizes(features: dict[str, Features], images: list[str]
                ) -> dict[str, tuple[int, int]]:
    """(width, height) of each image as its features recorded it, so that SfM need not
    decode the images again to learn their sizes."""
    return {im: (features[im].image_size[1], features[im].image_size[0]) for im in images}


def escalate_scene(image_dir: Path, members: list[str], features_conf: FeatureConf,
                   match_conf: MatchConf, recon_conf: ReconConf, conf: EscalationConf,
                   work_dir: Path, overwrite: bool = False, name: str | None = None,
                   merge_conf: MergeConf = MergeConf()
                   ) -> tuple[SceneSfM, list[Merge], dict[tuple[str, str], np.ndarray]]:
    """One scene's images again with :meth:`EscalationConf.features`, every pair of them
    matched, and SfM: (its SfM with the models joined where they agree, what was joined,
    the verified matches of every pair), as ``reconstruction.reconstruct_scene`` and
    ``model_merge.merge_models`` give them. The scene's features, its matches
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
    sfm = reconstruct_scene(image_dir, members, keypoints, matches, work_dir, recon_conf,
                            overwrite, name, sizes)
    models, merges = merge_models(sfm.models, matches, merge_conf)
    return sfm._replace(models=models), merges, matches


def describe_outcome(reason: str, fast: list[Model], escalated: list[Model], kept: bool, *,
                     weak_fast: int = 0, weak_escalated: int = 0) -> str:
    """One line for the log and sfm_scenes.csv: why the scene was redone, what each pass
    registered (and, when either had some, how many images each left weakly tied) and which
    was kept (no times: the line must repeat run to run; the row's seconds include the
    redone pass)."""
    sizes = lambda models: "+".join(str(m.num_registered) for m in models) or "0"  # noqa: E731
    weak = (f", weakly tied {weak_escalated} against {weak_fast}"
            if weak_fast or weak_escalated else "")
    return (f"{reason}; redone: {sizes(escalated)} against {sizes(fast)} images{weak}, "
            f"{'kept' if kept else 'not kept'}")


__all__ = ["EscalationConf", "better_result", "describe_outcome", "escalate_scene",
           "image_sizes", "largest_share", "more_to_find", "needs_escalation", "weakly_tied"]
