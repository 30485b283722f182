"""The viewer's loading, alignment, match and upload helpers (src/viewer/data.py), on the tiny
saved run in tests/fixtures/tiny_run (made by tests/fixtures/make_tiny_run.py)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from src.viewer import data, figures, uploads
from src.evaluation import registration_errors, score_submission
from src.geometry import look_at_rotation, translations_from_centers
from src.geometric.features import load_all_features
from src.geometric.matching import load_pair
from src.data_io import read_image_rgb
from src.submission import OUTLIER_SCENE, read_submission

FIXTURE = Path(__file__).parent / "fixtures" / "tiny_run"
RUN_DIR = FIXTURE / "run"
DATA_DIR = FIXTURE / "data"


@pytest.fixture(scope="module")
def run():
    return data.load_run(RUN_DIR)


@pytest.fixture(scope="module")
def truth(run):
    return data.load_ground_truth(run)


@pytest.fixture(scope="module")
def report(run):
    return data.score_run(run)


def png_bytes(image: np.ndarray, suffix: str = ".png") -> bytes:
    ok, encoded = cv2.imencode(suffix, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert ok
    return encoded.tobytes()


def test_load_run_reads_the_submission_and_finds_the_labels(run):
    submission = read_submission(RUN_DIR / "submission.csv")
    assert list(run.predictions["image"]) == list(submission["image"])
    assert list(run.predictions["scene"]) == list(submission["scene"])
    assert run.R_cw.shape == (len(submission), 3, 3) and run.t_cw.shape == (len(submission), 3)
    posed = submission["rotation_matrix"] != ";".join(["nan"] * 9)
    assert list(run.predictions["posed"]) == list(posed)
    assert run.pipeline == "geometric"
    assert run.data_dir is not None and run.data_dir.resolve() == DATA_DIR.resolve()
    assert run.has_labels
    assert run.timings is not None and "geometric" in set(run.timings["stage"])


def test_overview_counts_clusters_and_outliers_of_each_dataset(run):
    overview = data.dataset_overview(run).set_index("dataset")
    submission = read_submission(RUN_DIR / "submission.csv")
    for dataset, group in submission.groupby("dataset"):
        real = group["scene"] != OUTLIER_SCENE
        assert overview.loc[dataset, "images"] == len(group)
        assert overview.loc[dataset, "clusters"] == group.loc[real, "scene"].nunique()
        assert overview.loc[dataset, "outliers"] == (~real).sum()
    assert overview["clusters"].sum() >= 2  # the fixture is meant to show two scenes


def test_score_is_the_scorers(run, report):
    expected = score_submission(RUN_DIR / "submission.csv", DATA_DIR / "test_labels.csv",
                                DATA_DIR / "test_thresholds.csv")
    assert report.score == expected.score
    pd.testing.assert_frame_equal(report.per_dataset, expected.per_dataset)


def test_a_run_without_labels_has_no_score(tmp_path, run):
    (tmp_path / "submission.csv").write_bytes((RUN_DIR / "submission.csv").read_bytes())
    unlabelled = data.load_run(tmp_path)
    assert not unlabelled.has_labels and unlabelled.data_dir is None
    assert data.score_run(unlabelled) is None and data.load_ground_truth(unlabelled) is None
    assert data.cluster_groups(unlabelled, run.datasets[0])[0].correct is None


def test_find_runs_lists_run_folders_only(tmp_path):
    (tmp_path / "not_a_run").mkdir()
    (tmp_path / "a_run").mkdir()
    (tmp_path / "a_run" / "submission.csv").write_text("x")
    assert data.find_runs(tmp_path) == [tmp_path / "a_run"]
    assert data.find_runs(tmp_path / "missing") == []
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        data.load_run(tmp_path / "not_a_run")


def test_cluster_groups_cover_the_dataset_largest_first_outliers_last(run, truth, report):
    dataset = run.datasets[0]
    groups = data.cluster_groups(run, dataset, truth, report)
    shown = [image for g in groups for image in g.images]
    assert sorted(shown) == sorted(run.predictions["image"].iloc[run.rows(dataset)])
    real = [g for g in groups if not g.is_outliers]
    assert [len(g.images) for g in real] == sorted((len(g.images) for g in real), reverse=True)
    assert all(not g.is_outliers for g in groups[:-1])
    labels = read_submission(DATA_DIR / "test_labels.csv").set_index("image")["scene"]
    for group in groups:
        assert group.truth == [labels[image] for image in group.images]
        assert group.correct == [scene == group.expected_scene for scene in group.truth]
        if group.is_outliers:
            assert group.expected_scene == OUTLIER_SCENE
    # Each cluster stands for the scene the scorer assigned to it.
    for row in report.per_scene.itertuples():
        if row.cluster != OUTLIER_SCENE:
            assert {g.name: g.expected_scene for g in groups}[row.cluster] == row.scene


def test_thumbnails_keep_the_aspect_and_unreadable_images_become_grey(run, tmp_path):
    dataset = run.datasets[0]
    image = run.predictions["image"].iloc[run.rows(dataset)[0]]
    thumb = figures.thumbnail(run.image_path(dataset, image), 80)
    original = read_image_rgb(run.image_path(dataset, image))
    assert max(thumb.shape[:2]) == 80 and thumb.dtype == np.uint8
    assert thumb.shape[1] / thumb.shape[0] == pytest.approx(
        original.shape[1] / original.shape[0], rel=0.05)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    grey = figures.thumbnail(tmp_path / "bad.png", 80)
    assert grey.shape == (60, 80, 3) and (grey == 128).all()
    frame = figures.framed(thumb, False, width=3)
    assert frame.shape == (thumb.shape[0] + 6, thumb.shape[1] + 6, 3)
    assert tuple(frame[0, 0]) == figures.WRONG_RGB
    assert tuple(figures.framed(thumb, True)[0, 0]) == figures.RIGHT_RGB
    decoded = cv2.imdecode(np.frombuffer(figures.encode_jpeg(frame), np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == frame.shape


def test_every_cluster_has_its_sfm_model_with_points(run):
    dataset = run.datasets[0]
    models = data.load_sfm_models(RUN_DIR, dataset)
    clusters = data.posed_clusters(run, dataset)
    assert clusters and models
    for cluster in clusters:
        rows = data.cluster_rows(run, dataset, cluster)
        names = list(run.predictions["image"].iloc[rows])
        path, model = data.model_for_cluster(models, names, run.R_cw[rows], run.t_cw[rows])
        assert set(names) <= set(model.poses) and model.num_points3D > 0
        assert path.is_relative_to(RUN_DIR / "geometric" / dataset / "sfm")
    # Poses of no model: nothing is claimed.
    rows = data.cluster_rows(run, dataset, clusters[0])
    names = list(run.predictions["image"].iloc[rows])
    assert data.model_for_cluster(models, names, run.R_cw[rows], run.t_cw[rows] + 1.0) is None


def test_models_in_a_scenes_own_folders_are_found(run, tmp_path):
    """A scene's mappings sit in folders per mapper and camera choice (sfm/<scene>/global/
    cameras-size/models): the viewer reads them there too."""
    import shutil

    dataset = run.datasets[0]
    copy = tmp_path / "run"
    shutil.copytree(RUN_DIR, copy)
    for models_dir in sorted((copy / "geometric" / dataset / "sfm").glob("*/models")):
        nested = models_dir.parent / "global" / "cameras-size" / "models"
        nested.parent.mkdir(parents=True)
        models_dir.rename(nested)
    flat = data.load_sfm_models(RUN_DIR, dataset)
    found = data.load_sfm_models(copy, dataset)
    assert len(found) == len(flat) > 0
    assert all(path.parent.parent.name == "cameras-size" for path, _ in found)
    for cluster in data.posed_clusters(run, dataset):
        rows = data.cluster_rows(run, dataset, cluster)
        names = list(run.predictions["image"].iloc[rows])
        assert data.model_for_cluster(found, names, run.R_cw[rows], run.t_cw[rows])


def test_alignment_errors_are_the_scorers_registration_errors(run, truth, report):
    dataset = run.datasets[0]
    checked = 0
    for row in report.per_scene.itertuples():
        if row.cluster == OUTLIER_SCENE:
            continue
        aligned = data.align_cluster(run, truth, row.dataset, row.cluster, row.scene)
        if aligned is None:
            continue
        rows = data.cluster_rows(run, dataset, row.cluster)
        rows = rows[truth.scenes.iloc[rows].to_numpy() == row.scene]
        thresholds = truth.thresholds[(row.dataset, row.scene)]
        scorer = registration_errors(run.centers[rows], truth.centers[rows], thresholds)
        loosest = int(np.argmax(thresholds))
        assert aligned.threshold == thresholds[loosest]
        np.testing.assert_allclose(aligned.errors, scorer[:, loosest], rtol=1e-6, atol=1e-9)
        assert list(aligned.within) == list((scorer < thresholds).sum(axis=0))
        # The aligned cameras really sit where their errors say.
        np.testing.assert_allclose(np.linalg.norm(aligned.pred_centers - aligned.gt_centers,
                                                  axis=1), aligned.errors)
        table = data.alignment_table(aligned)
        assert list(table["image"]) == aligned.images
        checked += 1
    assert checked >= 1


def test_alignment_recovers_a_known_similarity():
    rng = np.random.default_rng(0)
    gt_centers = rng.normal(size=(6, 3)) * 3
    R_gt = np.stack([look_at_rotation(c, np.zeros(3)) for c in gt_centers])
    # Predictions: the truth seen through x_pred = (R x_gt + t) * 0.5, i.e. another frame.
    R = look_at_rotation(np.array([1.0, 2.0, 3.0]), np.zeros(3))
    pred_centers = 0.5 * (gt_centers @ R.T + np.array([1.0, -2.0, 0.5]))
    R_pred = R_gt @ R.T
    predictions = pd.DataFrame({"dataset": "d", "image": [f"i{k}" for k in range(6)],
                                "scene": "cluster0", "posed": True})
    run = data.RunData(Path("."), {}, predictions, R_pred,
                         translations_from_centers(R_pred, pred_centers))
    truth = data.GroundTruth(pd.Series(["s"] * 6), R_gt,
                               translations_from_centers(R_gt, gt_centers),
                               {("d", "s"): np.array([0.05, 0.1, 0.2, 0.5, 1.0])})
    aligned = data.align_cluster(run, truth, "d", "cluster0", "s")
    np.testing.assert_allclose(aligned.pred_centers, gt_centers, atol=1e-9)
    np.testing.assert_allclose(aligned.pred_axes, R_gt[:, 2, :], atol=1e-9)
    assert aligned.scale == pytest.approx(2.0)
    assert list(aligned.within) == [6] * 5
    figure = figures.alignment_figure(aligned)
    assert [t.name for t in figure.data if t.mode == "markers"] == ["ground truth",
                                                                    "predicted, aligned"]
    # Fewer than 3 cameras of the scene: nothing to align.
    assert data.align_cluster(run, truth, "d", "cluster0", "other") is None


def test_cameras_figure_shows_each_camera_and_the_points():
    centers = np.array([[0.0, 0, 0], [1, 0, 0], [2, 0, 0]])
    R_cw = np.stack([look_at_rotation(c, np.array([1.0, 5, 0])) for c in centers])
    points = np.random.default_rng(1).normal(size=(50, 3))
    figure = figures.cameras_figure(centers, R_cw, ["a", "b", "c"], points)
    markers = {t.name: t for t in figure.data if t.mode == "markers"}
    assert len(markers["cameras (3)"].x) == 3 and len(markers["sparse points (50)"].x) == 50
    lines = [t for t in figure.data if t.mode == "lines"][0]
    # One segment per camera, from its centre along the third row of R_cw.
    start, end = np.array([lines.x[0:2], lines.y[0:2], lines.z[0:2]]).T
    np.testing.assert_allclose((end - start) / np.linalg.norm(end - start), R_cw[0, 2])


def test_cache_files_pair_the_matches_with_their_features(run):
    dataset = run.datasets[0]
    features = data.cache_files(RUN_DIR, dataset, "features")
    matches = data.cache_files(RUN_DIR, dataset, "matches")
    assert features and matches
    assert data.features_file_for(matches[0], features) == features[0]
    assert data.features_file_for(matches[0], []) is None


def test_pair_view_splits_putative_matches_into_inliers_and_rejected(run):
    dataset = run.datasets[0]
    matches_path = data.cache_files(RUN_DIR, dataset, "matches")[0]
    table = data.pair_table(matches_path)
    assert list(table["inliers"]) == sorted(table["inliers"], reverse=True)
    a, b, inliers = table.iloc[0]
    features = load_all_features(data.cache_files(RUN_DIR, dataset, "features")[0])
    pair = data.load_pair_view(matches_path, features, a, b)
    putative, verified, _F = load_pair(matches_path, a, b)
    assert len(pair.inliers) == inliers == len(verified)
    assert len(pair.inliers) + len(pair.rejected) == len(putative)
    canvas = figures.draw_matches(read_image_rgb(run.image_path(dataset, a)),
                                 read_image_rgb(run.image_path(dataset, b)), pair, height=240)
    assert canvas.shape[0] == 240 and canvas.dtype == np.uint8
    green = np.all(canvas == np.array(figures.INLIER_RGB, np.uint8), axis=2)
    assert green.sum() > len(pair.inliers)  # every inlier is drawn


def test_split_matches():
    putative = np.array([[0, 1], [2, 3], [4, 5]], np.int32)
    np.testing.assert_array_equal(data.split_matches(putative, putative[[1]]), [[0, 1], [4, 5]])
    assert data.split_matches(np.zeros((0, 2), np.int32), np.zeros((0, 2))).shape == (0, 2)


def test_relative_pose_moves_camera_a_points_into_camera_b():
    rng = np.random.default_rng(2)
    R_a = look_at_rotation(rng.normal(size=3), np.zeros(3))
    R_b = look_at_rotation(rng.normal(size=3) + 3, np.zeros(3))
    t_a, t_b = rng.normal(size=3), rng.normal(size=3)
    X = rng.normal(size=3)
    R_ba, t_ba = data.relative_pose(R_a, t_a, R_b, t_b)
    np.testing.assert_allclose(R_ba @ (R_a @ X + t_a) + t_ba, R_b @ X + t_b)


def test_relative_pose_table_against_the_labels(run, truth):
    dataset = run.datasets[0]
    cluster = data.posed_clusters(run, dataset)[0]
    rows = data.cluster_rows(run, dataset, cluster)
    a, b = run.predictions["image"].iloc[rows[:2]]
    table = data.relative_pose_table(run, truth, dataset, a, b)
    assert list(table[""]) == ["predicted", "ground truth", "error"]
    assert 0 <= table["rotation (deg)"].iloc[2] <= 180
    outlier = run.predictions["image"].iloc[
        [r for r in run.rows(dataset) if not run.predictions["posed"].iloc[r]][0]]
    assert data.relative_pose_table(run, truth, dataset, a, outlier) is None


def test_stage_uploads_keeps_decodable_images_and_names_the_rest(tmp_path):
    image = np.random.default_rng(3).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("photos/inner.jpg", png_bytes(image, ".jpg"))
        zipped.writestr("photos/notes.txt", b"hello")
        zipped.writestr("__MACOSX/photos/._inner.jpg", b"junk")
    files = [("a.png", png_bytes(image)), ("a.png", png_bytes(image)),
             ("broken.jpg", b"\xff\xd8\xff garbage"), ("picture.bmp", png_bytes(image, ".bmp")),
             ("photos.zip", archive.getvalue()), ("bad.zip", b"PK not really")]
    staged = uploads.stage_uploads(files, tmp_path / "input")
    folder = tmp_path / "input" / "test" / uploads.UPLOAD_DATASET
    assert staged.accepted == ["a.png", "a-1.png", "picture.png", "inner.jpg"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(staged.accepted)
    assert read_image_rgb(folder / "picture.png").shape == (40, 50, 3)  # BMP saved as PNG
    rejected = dict(staged.rejected)
    assert set(rejected) == {"broken.jpg", "photos.zip/photos/notes.txt", "bad.zip"}
    assert "cannot be decoded" in rejected["broken.jpg"]
    assert "zip" in rejected["bad.zip"]


def test_run_on_uploads_without_any_image_runs_nothing(tmp_path):
    staged, run_dir = uploads.run_on_uploads([("x.txt", b"text")], tmp_path)
    assert run_dir is None and staged.rejected[0][0] == "x.txt"
    assert not list(tmp_path.glob("*/submission.csv"))
