"""Which mapper's models a scene keeps when both of pycolmap's mappers map it (mapper "auto").

Neither mapper wins everywhere: on SIFT matches the global one is ahead on the minimum over
seeds of realdev, realdev2 and the demo data, on ALIKED + LightGlue matches the incremental
one, and either misplaces cameras of some scenes the other gets right. Registration counts
and reprojection errors do not tell which placed a scene's cameras right (on realdev's castle
both register 30 of 30 and the global model is the accurate one with twice the mean error;
a misplaced camera's observations are dropped by bundle adjustment, so its model's error
stays low).

What does tell: the verified matches themselves. A pair's inlier matches say where its two
cameras are relative to each other, up to the depth of the scene, and a model explains a
match when the epipolar geometry its poses and intrinsics give passes near it
(:func:`src.geometry.sampson_distances`). An image is *held* when its model explains most
of its verified matches, to every image of the scene (a partner left unregistered or placed
in another model explains nothing): a misplaced or lost camera is not held, and neither is
one a scene split off into a second model. The mapper whose models hold more images is kept,
the features' usual mapper (options.AUTO_MAPPER) on ties.

Everything here is pure: the models come in as placements, image name ->
(model index, K, R_cw, t_cw).

The models are judged as the mapper gives them, before model_merge joins the ones that
agree, so a mapper that splits a scene is judged split. The keypoints come in with each
model's lens distortion taken out (reconstruction.pinhole_keypoints), so the epipolar
geometry of K and the poses applies to them: on the photos measured here (COLMAP's k1 within
+-0.02) that moves a corner keypoint by under 1 % of the image side, inside the tolerance;
on a wide-angle lens (k1 -0.25, synthetic) left in it puts the matches near the corners
several pixels off (tests/test_mapper_choice.py).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from src.geometry import fundamental_from_poses, sampson_distances

__all__ = ["Placement", "held_images", "evidenced_images", "prefer_mapper"]

# image name -> (model index, K (3, 3) pixels, R_cw (3, 3), t_cw (3,)), OpenCV pixel convention
Placement = tuple[int, np.ndarray, np.ndarray, np.ndarray]


def evidenced_images(matches: Mapping[tuple[str, str], np.ndarray], min_matches: int
                     ) -> set[str]:
    """The images in at least one pair with ``min_matches`` verified matches: the only ones
    a model can be judged on."""
    return {name for pair, m in matches.items() if len(m) >= min_matches for name in pair}


def held_images(placements: Mapping[str, Placement], keypoints: Mapping[str, np.ndarray],
                matches: Mapping[tuple[str, str], np.ndarray],
                image_sizes: Mapping[str, tuple[int, int]], *, min_matches: int,
                max_distance_share: float, min_explained: float) -> set[str]:
    """The placed images whose model explains at least ``min_explained`` of their verified
    matches.

    placements: the images the models registered (see the module doc); keypoints: (N, 2)
    pixels per image, as a pinhole camera of the placement's K would see them; matches:
    (K, 2) verified inlier indices per pair (a, b), pairs with fewer than ``min_matches``
    ignored; image_sizes: (width, height) per image. A match of a
    pair whose two images lie in one model is explained when its Sampson distance to the
    pair's epipolar geometry is at most ``max_distance_share`` x the larger side of the two
    images; matches to an image that is not placed, or placed in another model, are not.
    """
    explained: dict[str, int] = {}
    total: dict[str, int] = {}
    for (a, b), m in matches.items():
        if len(m) < min_matches:
            continue
        total[a] = total.get(a, 0) + len(m)
        total[b] = total.get(b, 0) + len(m)
        if a not in placements or b not in placements or placements[a][0] != placements[b][0]:
            continue
        _, K_a, R_a, t_a = placements[a]
        _, K_b, R_b, t_b = placements[b]
        F = fundamental_from_poses(K_a, R_a, t_a, K_b, R_b, t_b)
        m = np.asarray(m)
        distances = sampson_distances(F, keypoints[a][m[:, 0]], keypoints[b][m[:, 1]])
        side = max(*image_sizes[a], *image_sizes[b])
        count = int(np.count_nonzero(distances <= max_distance_share * side))
        explained[a] = explained.get(a, 0) + count
        explained[b] = explained.get(b, 0) + count
    return {name for name in placements
            if total.get(name, 0) > 0 and explained.get(name, 0) >= min_explained * total[name]}


def prefer_mapper(held: Mapping[str, int], fallback: str, num_images: int) -> tuple[str, str]:
    """(the mapper whose models hold the most images, why); ``fallback`` on ties.

    held: mapper -> images its models hold (a mapper that was not run is absent);
    num_images: the scene's images that have verified evidence, for the message.
    """
    if fallback not in held:
        raise ValueError(f"the fallback mapper {fallback!r} was not run (ran {sorted(held)})")
    best = max(held.values())
    winner = fallback if held[fallback] == best else next(
        mapper for mapper, count in held.items() if count == best)
    counts = ", ".join(f"{mapper} {held[mapper]}" for mapper in sorted(held))
    if len(held) == 1:
        return winner, f"holds {held[winner]} of {num_images} images, all that can be held"
    if winner == fallback and all(count == best for count in held.values()):
        return winner, f"images held of {num_images}: {counts}; a tie keeps {fallback}"
    return winner, f"images held of {num_images}: {counts}"
