"""Which mapper's models a scene keeps: images held on synthetic truth (true poses, one
moved, one left out, one split off), the choice and its message, and reconstruct_scene's
"auto" with both real mappers."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest

from src.geometric import reconstruction
from src.geometric.mapper_choice import evidenced_images, held_images, prefer_mapper
from src.geometric.reconstruction import ReconConf, reconstruct_scene
from src.geometry import look_at_rotation, translations_from_centers
from tests.synthetic_cluster import synthesize_cluster

HELD = dict(min_matches=15, max_distance_share=0.01, min_explained=0.5)


def _true_placements(truth, model_of=None):
    """Each image at its true pose with the true intrinsics, in model 0 unless
    ``model_of`` says otherwise."""
    model_of = model_of or {}
    K = [np.diag([f, f, 1.0]) + np.pad(truth.K[:2, 2:], ((0, 1), (2, 0))) for f in truth.focals]
    return {name: (model_of.get(name, 0), K[i], truth.R_cw[i], truth.t_cw[i])
            for i, name in enumerate(truth.names)}


@pytest.fixture(scope="module")
def truth():
    return synthesize_cluster(seed=4, num_images=8)


def _sizes(truth):
    return {name: truth.image_size for name in truth.names}


def test_true_poses_hold_every_image(truth):
    placements = _true_placements(truth)
    held = held_images(placements, truth.keypoints, truth.matches, _sizes(truth), **HELD)
    assert held == set(truth.names) == evidenced_images(truth.matches, 15)


def test_a_misplaced_camera_is_not_held_and_its_neighbours_still_are(truth):
    placements = _true_placements(truth)
    name = truth.names[3]
    model, K, R_cw, t_cw = placements[name]
    # Moved to the other side of the cloud, still looking at it: a plausible wrong pose.
    center = -(-R_cw.T @ t_cw)
    R_moved = look_at_rotation(center, np.zeros(3))
    placements[name] = (model, K, R_moved, translations_from_centers(R_moved, center))
    held = held_images(placements, truth.keypoints, truth.matches, _sizes(truth), **HELD)
    assert held == set(truth.names) - {name}


def test_a_lost_or_split_off_partner_explains_nothing(truth):
    placements = _true_placements(truth)
    # Left out: the image is not held, and matches to it count against its partners.
    lost = truth.names[0]
    del placements[lost]
    held = held_images(placements, truth.keypoints, truth.matches, _sizes(truth), **HELD)
    assert lost not in held and held == set(truth.names) - {lost}
    strict = held_images(placements, truth.keypoints, truth.matches, _sizes(truth),
                         **{**HELD, "min_explained": 1.0})
    partners = {b if a == lost else a for a, b in truth.matches
                if lost in (a, b) and len(truth.matches[a, b]) >= 15}
    assert partners and not partners & strict
    # Two models of four images each: each image keeps only its matches within its model.
    halves = {name: int(i >= 4) for i, name in enumerate(truth.names)}
    split = _true_placements(truth, halves)
    held_split = held_images(split, truth.keypoints, truth.matches, _sizes(truth), **HELD)
    total, inside = {}, {}
    for (a, b), m in truth.matches.items():
        if len(m) >= 15:
            for name in (a, b):
                total[name] = total.get(name, 0) + len(m)
                inside[name] = inside.get(name, 0) + len(m) * (halves[a] == halves[b])
    assert held_split == {name for name in truth.names if inside[name] >= 0.5 * total[name]}
    assert held_split != set(truth.names)


def test_the_distance_share_is_of_the_larger_image_side(truth):
    placements = _true_placements(truth)
    # 0.2 px of keypoint noise: nothing is explained within 1e-5 of 640 px ...
    tight = held_images(placements, truth.keypoints, truth.matches, _sizes(truth),
                        **{**HELD, "max_distance_share": 1e-5})
    assert tight == set()
    # ... everything within 1 % of the larger side of a 640 x 10 (or 10 x 640) image, which
    # the smaller side (0.1 px) would not allow.
    for size in ((640, 10), (10, 640)):
        sizes = {name: size for name in truth.names}
        assert held_images(placements, truth.keypoints, truth.matches, sizes, **HELD) == set(
            truth.names)
    smaller = {name: (10, 10) for name in truth.names}
    assert held_images(placements, truth.keypoints, truth.matches, smaller, **HELD) == set()


def test_prefer_mapper_keeps_the_one_holding_more_and_the_fallback_on_ties():
    assert prefer_mapper({"global": 8, "incremental": 10}, "global", 10) == (
        "incremental", "images held of 10: global 8, incremental 10")
    assert prefer_mapper({"global": 9, "incremental": 6}, "incremental", 10)[0] == "global"
    assert prefer_mapper({"global": 8, "incremental": 8}, "global", 10) == (
        "global", "images held of 10: global 8, incremental 8; a tie keeps global")
    assert prefer_mapper({"incremental": 8, "global": 8}, "incremental", 10)[0] == "incremental"
    assert prefer_mapper({"global": 10}, "global", 10) == (
        "global", "holds 10 of 10 images, all that can be held")
    with pytest.raises(ValueError, match="fallback mapper 'incremental' was not run"):
        prefer_mapper({"global": 3}, "incremental", 5)


@pytest.mark.parametrize("bad", [0, 1.5, True, "0.5"])
def test_held_options_are_validated(bad):
    with pytest.raises(ValueError, match="held_min_explained"):
        ReconConf(held_min_explained=bad)
    with pytest.raises(ValueError, match="held_max_distance_share"):
        ReconConf(held_max_distance_share=bad)


def test_the_fallback_mapper_is_a_mapper():
    with pytest.raises(ValueError, match="fallback_mapper"):
        ReconConf(fallback_mapper="auto")


def _map_auto(tmp_path, truth, conf):
    image_dir = tmp_path / "images"
    image_dir.mkdir(exist_ok=True)
    return reconstruct_scene(image_dir, truth.names, truth.keypoints, truth.matches,
                             tmp_path / "work", conf, image_sizes=_sizes(truth))


def test_a_wide_angle_lens_is_judged_once_its_distortion_is_taken_out(tmp_path):
    """Barrel distortion (k1 = -0.25): COLMAP's SIMPLE_RADIAL camera recovers it and the
    poses; with the distortion taken out (reconstruction.pinhole_keypoints) every image's
    matches lie within 0.3 % of the side of the model's epipolar geometry, as with a pinhole
    lens; left in, the corners' matches miss it and no image is held at that tolerance."""
    truth = synthesize_cluster(seed=5, radial_k1=-0.25)
    sizes = _sizes(truth)
    (tmp_path / "images").mkdir()
    sfm = reconstruct_scene(tmp_path / "images", truth.names, truth.keypoints, truth.matches,
                            tmp_path / "work", ReconConf(mapper="global"), image_sizes=sizes)
    model = sfm.models[0]
    assert all(camera[0] == "SIMPLE_RADIAL" and abs(camera[3][-1] + 0.25) < 0.01
               for camera in model.cameras.values())
    placed = reconstruction.placements(sfm.models, truth.names)
    tight = dict(min_matches=15, max_distance_share=0.003, min_explained=0.99)
    undistorted = reconstruction.pinhole_keypoints(sfm.models, truth.keypoints)
    assert held_images(placed, undistorted, truth.matches, sizes, **tight) == set(truth.names)
    assert held_images(placed, truth.keypoints, truth.matches, sizes, **tight) == set()


def test_auto_stops_at_the_first_mapper_when_it_holds_every_image(tmp_path, truth):
    sfm = _map_auto(tmp_path, truth, ReconConf(mapper="auto", fallback_mapper="global",
                                               camera_sharing="image"))
    assert sfm.mapper == "global (holds 8 of 8 images, all that can be held)"
    assert len(sfm.models) == 1 and sfm.models[0].num_registered == 8
    assert (tmp_path / "work" / "global").is_dir()
    assert not (tmp_path / "work" / "incremental").exists()


@pytest.mark.parametrize("sharing", ["image", "auto"])
def test_auto_keeps_the_other_mapper_when_it_holds_more(tmp_path, truth, monkeypatch, sharing):
    """The global mapper made to lose two images (its model cut down before it is judged):
    the incremental mapper then maps the scene too, holds all eight and is kept, with the
    cameras the first mapper's runs chose (one camera, the images being of one size)."""
    real_once = reconstruction._reconstruct_once

    def global_loses_two(*args, **kwargs):
        models = real_once(*args, **kwargs)
        conf = args[6]  # _reconstruct_once(image_dir, images, kpts, matches, n, dir, conf)
        if conf.mapper == "global":
            lost = set(truth.names[:2])
            models = [replace(m, poses={n: p for n, p in m.poses.items() if n not in lost})
                      for m in models]
        return models

    monkeypatch.setattr(reconstruction, "_reconstruct_once", global_loses_two)
    sfm = _map_auto(tmp_path, truth, ReconConf(mapper="auto", fallback_mapper="global",
                                               camera_sharing=sharing))
    assert sfm.mapper == "incremental (images held of 8: global 6, incremental 8)"
    assert sfm.models[0].num_registered == 8
    if sharing == "image":
        assert sfm.cameras == "per image"  # as configured: nobody chose
        assert (tmp_path / "work" / "incremental" / "models").is_dir()
    else:  # one mapping with the cameras the global mapper's pair of runs kept
        assert sfm.cameras == "shared by size, as the global mapper chose"
        assert sfm.models[0].shared_cameras
        assert (tmp_path / "work" / "incremental" / "models").is_dir()
        assert not (tmp_path / "work" / "incremental" / "cameras-image").exists()


@pytest.mark.slow
def test_the_pipeline_keeps_the_incremental_model_where_the_global_one_loses_images(tmp_path):
    """A generated demo set (seed 41) with the project's defaults (seed 40): in one scene
    the global mapper's model holds 8 or 9 of 10 images and the incremental one's all 10; "auto"
    keeps the latter, and scores above the global mapper alone (0.79 -> 0.96 mAA on that
    scene when this test was written). Without the affine views (options.AFFINE_TILT),
    which change that set's matches, and with a camera per image mapped as such (the shared
    cameras refit per image that camera_sharing "auto" keeps there hold all 10 in the
    global model): the scenario, not the features or the cameras, is under test."""
    from config import get_config
    from src.demo_data import DemoSpec, generate_demo_dataset
    from src.geometric.pipeline import GeometricConf, run_geometric
    from src.submission import list_test_images
    from tests.test_geometric import score

    data_dir = generate_demo_dataset(tmp_path / "data", DemoSpec(seed=41))
    images = list_test_images(data_dir)
    results = {}
    for mapper in ("auto", "global"):
        conf = GeometricConf.from_config(get_config("cpu-demo", pipeline="geometric", seed=40,
                                                    workers=1, mapper=mapper,
                                                    affine_tilt=0, camera_sharing="image"))
        predictions, _, sfm_scenes = run_geometric(images, data_dir / "test", conf,
                                                   tmp_path / "cache")
        results[mapper] = score(predictions, data_dir), sfm_scenes
    auto_report, auto_scenes = results["auto"]
    switched = auto_scenes[auto_scenes["mapper"].str.startswith("incremental")]
    assert len(switched) == 1, auto_scenes[["dataset", "graph_scene", "mapper"]]
    held = re.search(r"images held of 10: global (\d+), incremental 10",
                     switched["mapper"].iloc[0])
    assert held and int(held.group(1)) < 10, switched["mapper"].iloc[0]
    assert (auto_scenes["mapper"].str.startswith("global")).sum() == len(auto_scenes) - 1
    assert auto_report.score > results["global"][0].score + 1


def test_auto_with_auto_cameras_maps_each_way_under_the_first_mapper(tmp_path, truth):
    """The defaults (mapper and cameras "auto"): the global mapper maps with shared cameras
    in their own folder, one lens needs no camera per image, all eight images are held, and
    the incremental mapper is not run."""
    sfm = _map_auto(tmp_path, truth, ReconConf(mapper="auto", fallback_mapper="global"))
    assert sfm.mapper == "global (holds 8 of 8 images, all that can be held)"
    assert sfm.cameras.startswith("shared (") and sfm.models[0].shared_cameras
    assert {p.name for p in (tmp_path / "work" / "global").iterdir()} == {"cameras-size",
                                                                         "cameras-split"}
    assert not (tmp_path / "work" / "incremental").exists()


@pytest.mark.parametrize("sharing", ["image", "auto"])
def test_auto_maps_with_the_other_mapper_when_the_first_fails(tmp_path, truth, monkeypatch,
                                                             sharing):
    """pycolmap's global mapper raising on a scene: it holds nothing, and the scene gets the
    incremental mapper's poses instead of none."""
    import pycolmap

    def crash(*args, **kwargs):
        raise RuntimeError("simulated global mapper crash")

    monkeypatch.setattr(pycolmap, "global_mapping", crash)
    sfm = _map_auto(tmp_path, truth, ReconConf(mapper="auto", fallback_mapper="global",
                                               camera_sharing=sharing))
    assert sfm.mapper == "incremental (images held of 8: global 0, incremental 8)"
    assert len(sfm.models) == 1 and sfm.models[0].num_registered == 8
    if sharing == "auto":  # the failed mapper chose no cameras: the next one chooses again
        assert "as the global mapper chose" not in sfm.cameras
        assert sfm.cameras.startswith("shared (")
        # shared cameras that registered nothing were tried against per-image ones
        assert {p.name for p in (tmp_path / "work" / "global").iterdir()} == {
            "cameras-image", "cameras-size"}
        assert {p.name for p in (tmp_path / "work" / "incremental").iterdir()} == {
            "cameras-size", "cameras-split"}
