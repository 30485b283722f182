"""The Streamlit viewer (src/viewer/app.py) driven page by page with AppTest on the tiny saved run
in tests/fixtures/tiny_run: no exception, and each page shows what the run holds."""

from __future__ import annotations

import base64
import io
import json
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from src.evaluation import registration_errors, score_submission
from src.geometry import camera_centers
from src.geometric.matching import load_pair, load_verified_matches
from src.geometric.reconstruction import load_models
from src.data_io import parse_numbers
from src.submission import OUTLIER_SCENE, read_submission

APP = Path(__file__).resolve().parents[1] / "src" / "viewer" / "app.py"
FIXTURE = Path(__file__).parent / "fixtures" / "tiny_run"
RUN_DIR = FIXTURE / "run"
DATA_DIR = FIXTURE / "data"
DATASET = "demo_test_a"


@pytest.fixture(scope="module")
def submission() -> pd.DataFrame:
    return read_submission(RUN_DIR / "submission.csv")


@pytest.fixture(scope="module")
def report():
    return score_submission(RUN_DIR / "submission.csv", DATA_DIR / "test_labels.csv",
                            DATA_DIR / "test_thresholds.csv")


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def open_page(monkeypatch, page: str, uploads_dir: Path | None = None, **params) -> AppTest:
    argv = ["src/viewer/app.py", "--run", str(RUN_DIR)]
    if uploads_dir is not None:
        argv += ["--uploads-dir", str(uploads_dir)]
    monkeypatch.setattr(sys, "argv", argv)
    app = AppTest.from_file(str(APP), default_timeout=120)
    app.query_params["page"] = page
    for key, value in params.items():
        app.query_params[key] = value
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    return app


def metrics(app: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in app.metric}


def plotly_specs(app: AppTest) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in app.get("plotly_chart")]


def traces_named(spec: dict, prefix: str) -> list[dict]:
    """Marker traces (cameras, points) whose legend name starts with ``prefix``."""
    return [t for t in spec["data"]
            if t["mode"] == "markers" and str(t.get("name", "")).startswith(prefix)]


def values(field) -> list:
    """A trace's coordinates: plotly writes numpy arrays as base64 ("bdata") typed arrays."""
    if isinstance(field, dict) and "bdata" in field:
        return np.frombuffer(base64.b64decode(field["bdata"]), field["dtype"]).tolist()
    return list(field)


def posed(frame: pd.DataFrame) -> pd.Series:
    return frame["rotation_matrix"] != ";".join(["nan"] * 9)


def test_overview_shows_the_runs_counts_and_the_scorers_score(monkeypatch, submission, report):
    app = open_page(monkeypatch, "overview")
    shown = metrics(app)
    real = submission["scene"] != OUTLIER_SCENE
    clusters = submission[real].groupby("dataset")["scene"].nunique().sum()
    assert int(shown["clusters"]) == clusters >= 2
    assert int(shown["images"]) == len(submission)
    assert int(shown["outliers"]) == (~real).sum()
    assert shown["IMC 2025 score"] == f"{report.score:.2f}"
    table = app.dataframe[0].value.set_index("dataset")
    expected = report.per_dataset.set_index("dataset")
    for column in ("mAA", "clusterness", "score"):
        assert table[column].to_dict() == pytest.approx(expected[column].to_dict())
    assert table["clusters"].to_dict() == submission[real].groupby("dataset")["scene"].nunique().to_dict()
    assert "Time per stage" in [s.value for s in app.subheader]
    assert len(app.get("vega_lite_chart")) == 1  # seconds per stage of timings.csv
    pd.testing.assert_frame_equal(app.dataframe[1].value.reset_index(drop=True),
                                  pd.read_csv(RUN_DIR / "timings_geometric.csv").round(2))


def test_dataset_page_shows_each_cluster_and_marks_each_image(monkeypatch, submission, report):
    app = open_page(monkeypatch, "dataset", dataset=DATASET)
    rows = submission[submission["dataset"] == DATASET]
    headings = [s.value.split(" · ")[0] for s in app.subheader]
    real = sorted(set(rows["scene"]) - {OUTLIER_SCENE})
    assert sorted(h for h in headings if h != OUTLIER_SCENE) == real
    assert headings[-1] == OUTLIER_SCENE  # the outliers apart, last
    captions = [c for image in app.image for c in image.captions]
    assert len(captions) == len(rows)
    # A thumbnail is right when its true scene is the one the scorer paired its cluster with
    # (or it is a true outlier among the outliers).
    labels = read_submission(DATA_DIR / "test_labels.csv").set_index("image")["scene"]
    assigned = {row.cluster: row.scene for row in report.per_scene.itertuples()
                if row.dataset == DATASET}
    assigned[OUTLIER_SCENE] = OUTLIER_SCENE
    predicted = rows.set_index("image")["scene"]
    for caption in captions:
        mark, image = caption.split(" ")[:2]
        assert mark == ("✓" if labels[image] == assigned.get(predicted[image]) else "✗"), caption


@pytest.mark.parametrize("cluster", ["cluster0", "cluster1"])
def test_cameras_page_shows_the_clusters_cameras_points_and_errors(monkeypatch, submission,
                                                                   cluster):
    app = open_page(monkeypatch, "cameras", dataset=DATASET, cluster=cluster)
    rows = submission[(submission["dataset"] == DATASET) & (submission["scene"] == cluster)
                      & posed(submission)]
    predicted, aligned = plotly_specs(app)
    cameras = traces_named(predicted, "cameras (")
    assert len(cameras) == 1 and len(values(cameras[0]["x"])) == len(rows)
    assert cameras[0]["text"] == list(rows["image"])
    # The sparse points are those of the SfM model that posed these cameras.
    models = [m for d in RUN_DIR.glob(f"geometric/{DATASET}/sfm/**/models")
              for m in load_models(d) or []]
    owner = [m for m in models if set(rows["image"]) <= set(m.poses)
             and all(np.allclose(m.poses[r.image][1], parse_numbers(r.translation_vector, 3),
                                 atol=1e-6) for r in rows.itertuples())]
    points = traces_named(predicted, "sparse points")
    assert len(owner) == 1 and len(values(points[0]["x"])) == owner[0].num_points3D > 0
    assert traces_named(aligned, "ground truth") and traces_named(aligned, "predicted, aligned")

    # The per-image errors are the scorer's registration errors at its loosest threshold.
    labels = read_submission(DATA_DIR / "test_labels.csv").set_index("image")
    scene = app.caption[1].value.split(".")[0].removeprefix("Scene ")
    in_scene = rows[[labels.loc[im, "scene"] == scene for im in rows["image"]]]

    def centres(frame):
        R = np.array([parse_numbers(v, 9) for v in frame["rotation_matrix"]]).reshape(-1, 3, 3)
        t = np.array([parse_numbers(v, 3) for v in frame["translation_vector"]])
        return camera_centers(R, t)

    thresholds_frame = read_submission(DATA_DIR / "test_thresholds.csv")
    text = thresholds_frame.set_index(["dataset", "scene"]).loc[(DATASET, scene), "thresholds"]
    thresholds = parse_numbers(text, len(text.split(";")))
    scorer = registration_errors(centres(in_scene), centres(labels.loc[in_scene["image"]]),
                                 thresholds)[:, int(np.argmax(thresholds))]
    table = app.dataframe[0].value
    assert list(table["image"]) == list(in_scene["image"])
    np.testing.assert_allclose(table["centre error"], scorer, rtol=1e-6, atol=1e-9)


def test_pair_page_draws_the_pair_with_most_inliers_then_any_chosen(monkeypatch):
    matches_path = next(RUN_DIR.glob(f"geometric/{DATASET}/matches-*.h5"))
    verified = load_verified_matches(matches_path)
    (a, b), best = max(verified.items(), key=lambda item: (len(item[1]), [-ord(c) for c in item[0][0]]))
    app = open_page(monkeypatch, "pair", dataset=DATASET)
    putative, inliers, _F = load_pair(matches_path, a, b)
    shown = metrics(app)
    assert int(shown["verified inliers"]) == len(inliers) == len(best)
    assert int(shown["putative matches"]) == len(putative)
    assert int(shown["rejected matches"]) == len(putative) - len(inliers)
    assert len(app.image) == 1 and a in app.image[0].captions[0]
    assert list(app.dataframe[0].value[""]) == ["predicted", "ground truth", "error"]

    (a, b), few = min(verified.items(), key=lambda item: len(item[1]))
    app = open_page(monkeypatch, "pair", dataset=DATASET, pair=f"{a}|{b}")
    assert int(metrics(app)["verified inliers"]) == len(few)
    assert f"{a} (left), {b} (right)" in app.image[0].captions[0]


def png_of(image_path: Path) -> bytes:
    return image_path.read_bytes()


def test_upload_of_a_corrupt_file_and_two_images_names_the_bad_one(monkeypatch, tmp_path):
    good = sorted((DATA_DIR / "test" / DATASET).iterdir())[:2]
    app = open_page(monkeypatch, "upload", uploads_dir=tmp_path)
    app.file_uploader[0].set_value([("broken.jpg", b"\xff\xd8\xff not a jpeg", "image/jpeg"),
                                    (good[0].name, png_of(good[0]), "image/png"),
                                    (good[1].name, png_of(good[1]), "image/png")]).run()
    app.button[0].click().run()
    assert not app.exception, [e.value for e in app.exception]
    assert len(app.warning) == 1 and "broken.jpg" in app.warning[0].value
    assert "2 image(s) processed" in app.success[0].value
    runs = list(tmp_path.glob("uploads-*"))
    assert len(runs) == 1
    result = read_submission(runs[0] / "submission.csv")
    assert sorted(result["image"]) == sorted(p.name for p in good)
    captions = [c for image in app.image for c in image.captions]
    assert sorted(captions) == sorted(p.name for p in good)  # the gallery of the new run


def test_upload_of_a_zip_shows_clusters_and_cameras(monkeypatch, tmp_path, submission):
    # The views of the run's largest scene, zipped with a stray text file.
    scene = submission[submission["scene"] == "cluster0"]["image"]
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        for name in scene:
            zipped.write(DATA_DIR / "test" / DATASET / name, f"photos/{name}")
        zipped.writestr("photos/readme.txt", "not a photo")
    app = open_page(monkeypatch, "upload", uploads_dir=tmp_path)
    app.file_uploader[0].set_value(("photos.zip", archive.getvalue(), "application/zip")).run()
    app.button[0].click().run()
    assert not app.exception, [e.value for e in app.exception]
    assert "readme.txt" in app.warning[0].value
    result = read_submission(next(tmp_path.glob("uploads-*/submission.csv")))
    clusters = set(result["scene"]) - {OUTLIER_SCENE}
    assert f"{len(scene)} image(s) processed: {len(clusters)} cluster(s)" in app.success[0].value
    assert clusters  # the views of one scene make at least one cluster
    headings = [s.value.split(" · ")[0] for s in app.subheader]
    assert clusters <= set(headings)
    assert plotly_specs(app)  # its cameras


def test_pages_only_read_the_run_folder(monkeypatch, tmp_path):
    before = snapshot(FIXTURE)
    for page, params in [("overview", {}), ("dataset", {}), ("cameras", {"cluster": "cluster1"}),
                         ("pair", {}), ("upload", {})]:
        open_page(monkeypatch, page, uploads_dir=tmp_path, dataset=DATASET, **params)
    assert snapshot(FIXTURE) == before


def test_a_learned_style_run_without_caches_or_labels(monkeypatch, tmp_path, submission):
    # A run folder with only a submission (no geometric caches, no config, no labels).
    run_dir = tmp_path / "bare"
    run_dir.mkdir()
    (run_dir / "submission.csv").write_bytes((RUN_DIR / "submission.csv").read_bytes())
    monkeypatch.setattr(sys, "argv", ["src/viewer/app.py", "--run", str(run_dir)])
    for page in ("overview", "dataset", "cameras", "pair"):
        app = AppTest.from_file(str(APP), default_timeout=60)
        app.query_params["page"] = page
        app.run()
        assert not app.exception, (page, [e.value for e in app.exception])
        if page == "overview":
            assert "IMC 2025 score" not in metrics(app)
        if page == "pair":
            assert "no cached matches" in app.info[0].value
        if page == "cameras":
            assert len(plotly_specs(app)) == 1  # predicted cameras only: nothing to align to


def test_a_missing_run_folder_is_named_not_fatal(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "argv", ["src/viewer/app.py", "--run", str(tmp_path / "nothing"),
                                      "--uploads-dir", str(tmp_path)])
    app = AppTest.from_file(str(APP), default_timeout=60)
    app.run()
    assert not app.exception
    assert "not a run folder" in app.sidebar.warning[0].value
    assert "No run folder found" in app.error[0].value


def test_a_damaged_cache_is_named_on_the_page(monkeypatch, tmp_path):
    """A matches cache cut short: the pair page says which file, not an HDF5 traceback."""
    run_dir = tmp_path / "run"
    shutil.copytree(RUN_DIR, run_dir)
    matches_path = next(run_dir.glob(f"geometric/{DATASET}/matches-*.h5"))
    matches_path.write_bytes(matches_path.read_bytes()[:2048])
    monkeypatch.setattr(sys, "argv", ["src/viewer/app.py", "--run", str(run_dir)])
    app = AppTest.from_file(str(APP), default_timeout=60)
    app.query_params["page"] = "pair"
    app.query_params["dataset"] = DATASET
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    assert str(matches_path) in app.error[0].value and "cannot be read" in app.error[0].value
