"""The IMC 2025 scorer against a literal re-statement of the published metric and known drops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.transform import Rotation

from src.evaluation import main, registration_errors, score_frames
from src.data_io import DataError, format_numbers
from src.submission import read_submission
from tests import reference_metric

FIXTURES = Path(__file__).parent / "fixtures"
LABELS = FIXTURES / "imc2025_labels_subset.csv"
THRESHOLDS = FIXTURES / "imc2025_thresholds_subset.csv"


@pytest.fixture(scope="module")
def labels() -> pd.DataFrame:
    return read_submission(LABELS)


@pytest.fixture(scope="module")
def thresholds() -> pd.DataFrame:
    return read_submission(THRESHOLDS)


def as_submission(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    out.insert(0, "image_id", [f"{d}_{i}_public" for d, i in zip(out.dataset, out.image)])
    return out


def poses(frame):
    R = np.array([[float(x) for x in s.split(";")] for s in frame.rotation_matrix]).reshape(-1, 3, 3)
    t = np.array([[float(x) for x in s.split(";")] for s in frame.translation_vector])
    return R, t


def with_poses(frame, R, t):
    out = frame.copy()
    out["rotation_matrix"] = [format_numbers(r) for r in R]
    out["translation_vector"] = [format_numbers(v) for v in t]
    return out


def transform_world(frame, scale, Q, d):
    """Same cameras in another world frame X' = scale Q X + d (a similarity)."""
    R, t = poses(frame)
    R2 = R @ Q.T
    t2 = scale * t - np.einsum("nij,j->ni", R2, d)
    return with_poses(frame, R2, t2)


def reference(frame, labels, thresholds):
    return reference_metric.score(reference_metric.centres_from_frame(frame),
                                  reference_metric.centres_from_frame(labels),
                                  reference_metric.thresholds_from_frame(thresholds))


def assert_agrees(frame, labels, thresholds):
    ours = score_frames(frame, labels, thresholds)
    ref_score, ref_per_dataset = reference(frame, labels, thresholds)
    assert ours.score == pytest.approx(ref_score, abs=1e-6)
    for row in ours.per_dataset.itertuples():
        maa, clus, sc = ref_per_dataset[row.dataset]
        assert row.mAA == pytest.approx(100 * maa, abs=1e-6)
        assert row.clusterness == pytest.approx(100 * clus, abs=1e-6)
        assert row.score == pytest.approx(100 * sc, abs=1e-6)
    return ours


def test_ground_truth_scores_100(labels, thresholds):
    report = score_frames(as_submission(labels), labels, thresholds)
    assert report.score == pytest.approx(100.0)
    assert list(report.per_dataset["mAA"]) == pytest.approx([100.0, 100.0])
    assert list(report.per_dataset["clusterness"]) == pytest.approx([100.0, 100.0])


def test_invariant_to_a_similarity_per_cluster(labels, thresholds):
    sub = as_submission(labels)
    parts = []
    for k, (_, group) in enumerate(sub.groupby(["dataset", "scene"], sort=False)):
        Q = Rotation.random(random_state=k).as_matrix()
        parts.append(transform_world(group, scale=0.3 + k, Q=Q, d=np.array([5.0, -2, 7 * k])))
    moved = pd.concat(parts)
    assert score_frames(moved, labels, thresholds).score == pytest.approx(100.0)


def test_all_nan_poses_score_zero(labels, thresholds):
    sub = as_submission(labels)
    sub["rotation_matrix"] = ";".join(["nan"] * 9)
    sub["translation_vector"] = "nan;nan;nan"
    report = score_frames(sub, labels, thresholds)
    assert report.mAA == 0.0 and report.score == 0.0
    assert report.clusterness == pytest.approx(100.0)


def test_everything_in_one_cluster(labels, thresholds):
    sub = as_submission(labels)
    sub["scene"] = "cluster0"
    report = assert_agrees(sub, labels, thresholds)
    ets = report.per_dataset.set_index("dataset").loc["ETs"]
    # ET (9) and another_ET (10) both pick the single cluster of 22 images.
    assert ets.clusterness == pytest.approx(100 * 19 / 44)
    # Each scene is aligned on its own images only, so the poses still score fully.
    assert ets.mAA == pytest.approx(100.0)


def test_noise_drops_the_score_and_agrees_with_reference(labels, thresholds):
    sub = as_submission(labels)
    rng = np.random.default_rng(0)
    R, t = poses(sub)
    inlier = np.isfinite(t).all(axis=1)
    # Noise on the centres of the order of the scored thresholds.
    t_noisy = t + np.where(inlier[:, None], rng.normal(scale=0.02, size=t.shape), 0.0)
    noisy = with_poses(sub, R, t_noisy)
    report = assert_agrees(noisy, labels, thresholds)
    assert 0.0 < report.mAA < 100.0
    # More noise, lower score.
    t_noisier = t + np.where(inlier[:, None], rng.normal(scale=0.2, size=t.shape), 0.0)
    assert score_frames(with_poses(sub, R, t_noisier), labels, thresholds).mAA < report.mAA


def test_wrong_clustering_agrees_with_reference(labels, thresholds):
    sub = as_submission(labels)
    rng = np.random.default_rng(1)
    scenes = sub["scene"].to_numpy().copy()
    flip = rng.random(len(scenes)) < 0.3
    scenes[flip] = np.where(scenes[flip] == "outliers", "bike", "outliers")
    sub["scene"] = scenes
    R, t = poses(sub)
    nan_rows = rng.random(len(sub)) < 0.15
    t[nan_rows] = np.nan
    R[nan_rows] = np.nan
    report = assert_agrees(with_poses(sub, R, t), labels, thresholds)
    assert report.score < 100.0


@pytest.mark.parametrize("seed", range(4))
def test_random_submissions_agree_with_reference(labels, thresholds, seed):
    """Random clusterings, random poses near and far from the truth, NaNs, degenerate sets."""
    rng = np.random.default_rng(seed)
    sub = as_submission(labels)
    R, t = poses(sub)
    n = len(sub)
    sub["scene"] = rng.choice(["a", "b", "c", "outliers"], size=n, p=[0.4, 0.3, 0.2, 0.1])
    centers = -np.einsum("nji,nj->ni", R, t)
    centers = np.where(np.isfinite(centers), centers, rng.normal(size=centers.shape))
    noise = rng.normal(size=(n, 3)) * rng.choice([0.0, 0.005, 0.03, 1.0], size=(n, 1))
    new_centers = centers * 3.0 + noise
    R_pred = Rotation.random(n, random_state=seed).as_matrix()
    t_pred = -np.einsum("nij,nj->ni", R_pred, new_centers)
    t_pred[rng.random(n) < 0.1] = np.nan
    if seed == 3:  # a degenerate cluster: all its cameras at one point
        t_pred[sub["scene"].to_numpy() == "c"] = 0.0
    assert_agrees(with_poses(sub, R_pred, t_pred), labels, thresholds)


def test_registration_matches_reference_on_random_points():
    rng = np.random.default_rng(5)
    gt = rng.normal(size=(12, 3))
    pred = gt * 0.5 + rng.normal(scale=0.05, size=gt.shape)
    pred[3] += 2.0  # an outlier camera
    ths = np.array([0.01, 0.02, 0.05, 0.1, 0.2, 0.5])
    ours = registration_errors(pred, gt, ths)
    ref = reference_metric.register(pred.T, gt.T, ths)
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-12)


def test_fewer_than_three_cameras_register_nothing():
    errors = registration_errors(np.zeros((2, 3)), np.ones((2, 3)), np.array([1.0, 2.0]))
    assert errors.shape == (2, 2) and np.all(np.isinf(errors))


def test_missing_image_is_named(labels, thresholds):
    sub = as_submission(labels).iloc[1:]
    with pytest.raises(DataError, match="missing"):
        score_frames(sub, labels, thresholds)


def test_malformed_pose_names_file_line_and_field(labels, thresholds):
    sub = as_submission(labels)
    sub.loc[sub.index[4], "translation_vector"] = "1;2"
    with pytest.raises(DataError, match=r"line 6, field translation_vector"):
        score_frames(sub, labels, thresholds)


def test_command_line_prints_table(tmp_path, capsys, labels):
    path = tmp_path / "submission.csv"
    as_submission(labels).to_csv(path, index=False)
    assert main([str(path), str(LABELS), str(THRESHOLDS)]) == 0
    out = capsys.readouterr().out
    assert "ETs" in out and "imc2023_haiper" in out and "overall: score=100.00" in out
    assert main([str(tmp_path / "nope.csv"), str(LABELS), str(THRESHOLDS)]) == 2


def test_the_scorer_checks_its_input_as_strictly_as_the_submission_rules(labels, thresholds,
                                                                         tmp_path):
    good = as_submission(labels)
    renamed = good.rename(columns={"rotation_matrix": "R", "translation_vector": "T"})
    with pytest.raises(DataError, match=r"missing column\(s\) \['rotation_matrix', "
                                        r"'translation_vector'\]"):
        score_frames(renamed, labels, thresholds)
    twice = pd.concat([good, good.iloc[[0]]], ignore_index=True)
    with pytest.raises(DataError, match=f"line {len(good) + 1}|line 2: image"):
        score_frames(twice, labels, thresholds)
    half_nan = good.copy()
    half_nan.loc[3, "translation_vector"] = "nan;1;2"
    with pytest.raises(DataError, match="line 5: translation_vector is partly nan"):
        score_frames(half_nan, labels, thresholds)
    skewed = good.copy()
    skewed.loc[0, "rotation_matrix"] = format_numbers(2 * np.eye(3))
    with pytest.raises(DataError, match="line 2: rotation_matrix is not a rotation"):
        score_frames(skewed, labels, thresholds)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match="empty.csv: empty file"):
        read_submission(empty)
    with pytest.raises(DataError, match="missing column"):
        score_frames(good, labels, thresholds.rename(columns={"thresholds": "th"}))
