"""DBSCAN scene clustering: separable scenes, noise, flagged outliers, tiny datasets."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.transform import Rotation

from src.learned.clustering import (ClusterSettings, SpreadScales, cluster_all, cluster_dataset,
                            dbscan_eps)
from src.learned.preprocessing import scene_statistics

SCALES = SpreadScales(quaternion=0.2, translation=1.0)


def scene(n, center_rot, center_t, feature_dir, rng, spread=0.05):
    rots = Rotation.from_rotvec(rng.normal(scale=spread, size=(n, 3))) * center_rot
    q = rots.as_quat()
    t = center_t + rng.normal(scale=spread, size=(n, 3))
    f = feature_dir + rng.normal(scale=0.05, size=(n, len(feature_dir)))
    return q, t, f


def two_scenes(rng, n_a=12, n_b=8):
    qa, ta, fa = scene(n_a, Rotation.identity(), np.zeros(3), np.eye(16)[0] * 3, rng)
    qb, tb, fb = scene(n_b, Rotation.from_euler("x", 120, degrees=True), np.array([4, 0, 0.]),
                       np.eye(16)[5] * 3, rng)
    return np.vstack([qa, qb]), np.vstack([ta, tb]), np.vstack([fa, fb])


def test_two_separated_scenes_are_found_and_named_by_size():
    rng = np.random.default_rng(0)
    q, t, f = two_scenes(rng)
    names = cluster_dataset(q, t, f, np.zeros(20), SCALES)
    assert set(names[:12]) == {"cluster0"} and set(names[12:]) == {"cluster1"}


def test_flagged_images_and_isolated_noise_are_outliers():
    rng = np.random.default_rng(1)
    q, t, f = two_scenes(rng)
    q = np.vstack([q, Rotation.from_euler("y", 70, degrees=True).as_quat()])
    t = np.vstack([t, [[-9.0, 9.0, 9.0]]])
    f = np.vstack([f, np.eye(16)[[11]] * 3])
    prob = np.zeros(21)
    prob[3] = 0.9  # the outlier head is sure about image 3
    names = cluster_dataset(q, t, f, prob, SCALES)
    assert names[3] == "outliers" and names[20] == "outliers"
    assert set(names[[0, 1, 2, *range(4, 12)]]) == {"cluster0"}
    assert set(names[12:20]) == {"cluster1"}


@pytest.mark.parametrize("n", [1, 2])
def test_tiny_datasets_form_one_cluster(n):
    rng = np.random.default_rng(2)
    q, t, f = scene(n, Rotation.identity(), np.zeros(3), np.ones(4), rng)
    assert list(cluster_dataset(q, t, f, np.zeros(n), SCALES)) == ["cluster0"] * n


def test_all_flagged_gives_all_outliers():
    rng = np.random.default_rng(3)
    q, t, f = scene(5, Rotation.identity(), np.zeros(3), np.ones(4), rng)
    assert list(cluster_dataset(q, t, f, np.ones(5), SCALES)) == ["outliers"] * 5


def test_eps_follows_the_data_scale():
    rng = np.random.default_rng(4)
    points = rng.normal(size=(50, 3))
    eps = dbscan_eps(points, 3, 0.5, 1.0)
    assert dbscan_eps(points * 10, 3, 0.5, 1.0) == pytest.approx(10 * eps)


def test_datasets_are_clustered_separately():
    rng = np.random.default_rng(5)
    q, t, f = two_scenes(rng)
    frame = pd.DataFrame(np.hstack([q, t]), columns=["qx", "qy", "qz", "qw", "tx", "ty", "tz"])
    frame["outlier_prob"] = 0.0
    # Same images in two datasets: identical content must not merge across datasets.
    both = pd.concat([frame.assign(dataset="a"), frame.assign(dataset="b")], ignore_index=True)
    scenes = cluster_all(both, np.vstack([f, f]), SCALES)
    assert list(scenes[:20]) == list(scenes[20:])
    assert set(scenes) == {"cluster0", "cluster1"}


def test_scales_come_from_training_statistics():
    stats = pd.DataFrame({"quat_spread_p95": [0.1, 0.3, 0.2], "trans_spread_p95": [1, 5, 3.0]})
    scales = SpreadScales.from_scene_stats(stats)
    assert (scales.quaternion, scales.translation) == (0.2, 3.0)
    empty = SpreadScales.from_scene_stats(scene_statistics(pd.DataFrame(
        columns=["dataset", "scene", "is_outlier", "has_pose"])))
    assert (empty.quaternion, empty.translation) == (1.0, 1.0)


def test_settings_defaults_are_sane():
    s = ClusterSettings()
    assert 0 < s.outlier_threshold < 1 and s.min_samples >= 2
