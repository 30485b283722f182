"""The whole run from the command line, on tiny demo data."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

import main
from config import DEMO_SIZES
from src.demo_data import DemoSpec, generate_demo_dataset
from src.evaluation import score_submission
from src.submission import list_test_images, validate_submission


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return generate_demo_dataset(tmp_path_factory.mktemp("data"),
                                 DemoSpec(**DEMO_SIZES["tiny"], seed=5))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("out")
    argv = ["--preset", "test", "--data-dir", str(data_dir), "--output-dir", str(out),
            "--epochs-finetune1", "0", "--epochs-finetune2", "0"]
    assert main.main(argv) == 0
    return out / f"test-{data_dir.name}"  # data other than the preset's: its own folder


@pytest.mark.slow
def test_run_writes_a_valid_scored_submission_and_its_outputs(run_dir, data_dir):
    submission = pd.read_csv(run_dir / "submission.csv", dtype=str, keep_default_na=False)
    expected = list_test_images(data_dir)
    validate_submission(submission, expected_images=expected)
    assert list(submission["image_id"]) == list(expected["image_id"])
    assert (run_dir.parent / "submission.csv").read_text() == (run_dir / "submission.csv").read_text()
    report = score_submission(run_dir / "submission.csv", data_dir / "test_labels.csv",
                              data_dir / "test_thresholds.csv")
    logged = pd.read_csv(run_dir / "score_test.csv")
    assert logged["score"].mean() == pytest.approx(report.score)
    assert 0.0 <= report.score <= 100.0
    for name in ("config.json", "run.log", "timings.csv", "translation_scaler.joblib",
                 "model.keras", "backbone.keras", "history.csv", "predictions_test.csv",
                 "features_test.npy", "score_validation.csv", "plots/loss.png"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "plots").glob("clusters_*.png"))
    assert list((run_dir / "plots").glob("cameras_*.png"))
    timings = pd.read_csv(run_dir / "timings.csv")
    assert {"data", "labels", "train", "infer", "cluster", "submission", "score"} <= set(timings["stage"])
    predictions = pd.read_csv(run_dir / "predictions_test.csv")
    assert set(predictions.columns) >= {"dataset", "image", "qx", "tx", "outlier_prob", "scene"}


@pytest.mark.slow
def test_infer_stage_reuses_the_trained_run(run_dir):
    before = (run_dir / "submission.csv").read_text()
    assert main.main(["--stage", "infer", "--run", str(run_dir)]) == 0
    assert (run_dir / "submission.csv").read_text() == before
    assert (run_dir / "config_infer.json").is_file()


def test_bad_invocations_fail_clearly(tmp_path, caplog):
    assert main.main(["--stage", "infer", "--run", str(tmp_path / "nope")]) == 2
    assert "no config.json" in caplog.text
    assert main.main(["--preset", "test", "--data-dir", str(tmp_path / "missing"),
                      "--output-dir", str(tmp_path)]) == 2
    assert "data folder not found" in caplog.text
    (tmp_path / "labels.csv").write_text("x")
    assert main.main(["--preset", "test", "--data-dir", str(tmp_path / "labels.csv"),
                      "--output-dir", str(tmp_path)]) == 2
    assert "labels.csv is a file; give the data folder" in caplog.text


@pytest.mark.slow
def test_changed_training_config_refuses_to_resume(run_dir, data_dir, caplog):
    argv = ["--preset", "test", "--data-dir", str(data_dir), "--output-dir",
            str(run_dir.parent), "--epochs-finetune1", "0", "--epochs-finetune2", "0",
            "--image-size", "40"]
    assert main.main(argv) == 2
    assert "another configuration (image_size)" in caplog.text


def test_geometric_pipeline_runs_from_the_command_line(data_dir, tmp_path):
    argv = ["--preset", "test", "--pipeline", "geometric", "--data-dir", str(data_dir),
            "--output-dir", str(tmp_path)]
    assert main.main(argv) == 0
    run_dir = tmp_path / f"test-geometric-{data_dir.name}"
    submission = pd.read_csv(run_dir / "submission.csv", dtype=str, keep_default_na=False)
    validate_submission(submission, expected_images=list_test_images(data_dir))
    for name in ("timings_geometric.csv", "predictions_test.csv", "score_test.csv"):
        assert (run_dir / name).is_file(), name
    assert not (run_dir / "model.keras").exists()  # nothing to train


ENTRY5 = Path(__file__).parent / "fixtures" / "entry5"


def test_geometric_run_needs_no_training_labels(data_dir, tmp_path, caplog):
    """Only test/<dataset>/ images: the geometric pipeline runs; the learned one says which
    file it lacks."""
    only_test = tmp_path / "only_test"
    shutil.copytree(data_dir / "test", only_test / "test")
    assert main.main(["--preset", "test", "--pipeline", "geometric", "--data-dir",
                      str(only_test), "--output-dir", str(tmp_path / "out")]) == 0
    run_dir = tmp_path / "out" / "test-geometric-only_test"
    submission = pd.read_csv(run_dir / "submission.csv", dtype=str, keep_default_na=False)
    validate_submission(submission, expected_images=list_test_images(only_test))
    assert main.main(["--preset", "test", "--data-dir", str(only_test), "--output-dir",
                      str(tmp_path / "out")]) == 2
    assert "training labels not found" in caplog.text and "train_labels.csv" in caplog.text


@pytest.mark.slow
def test_geometric_run_on_a_plain_folder_of_photos(tmp_path):
    photos = tmp_path / "my_photos"
    photos.mkdir()
    for image in ENTRY5.glob("*.jpg"):
        shutil.copy(image, photos / image.name)
    assert main.main(["--pipeline", "geometric", "--data-dir", str(photos), "--output-dir",
                      str(tmp_path / "out")]) == 0
    run_dir = tmp_path / "out" / "cpu-demo-geometric-my_photos"
    submission = pd.read_csv(run_dir / "submission.csv", dtype=str, keep_default_na=False)
    assert set(submission["dataset"]) == {"my_photos"}
    assert sorted(submission["image"]) == sorted(p.name for p in ENTRY5.glob("*.jpg"))
    assert (submission["scene"] == "cluster0").all()  # one scene, every photo posed
    assert list((run_dir / "plots").glob("clusters_my_photos.png"))


@pytest.mark.slow
def test_hybrid_pipeline_uses_the_trained_model(run_dir, data_dir):
    assert main.main(["--stage", "infer", "--run", str(run_dir), "--pipeline", "hybrid"]) == 0
    submission = pd.read_csv(run_dir / "submission.csv", dtype=str, keep_default_na=False)
    validate_submission(submission, expected_images=list_test_images(data_dir))
    assert (run_dir / "timings_geometric.csv").is_file()
    assert (run_dir / "features_test.npy").is_file()


def test_file_system_faults_end_in_one_line_and_exit_2(data_dir, tmp_path, caplog,
                                                       monkeypatch):
    """A second run holding the cache lock, a read-only output folder and a full disk name
    the path and what to do (no traceback unless --debug); a repeated sample row names
    its line."""
    import errno

    assert "--run-name NEW" in main.explain_error(BlockingIOError("x.h5.partial is locked"))
    full = OSError(errno.ENOSPC, "No space left on device", "/out/run/features.h5.partial")
    assert "disk is full writing /out/run/features.h5.partial" in main.explain_error(full)
    denied = OSError(errno.EROFS, "Read-only file system", "/ro/run")
    assert "choose a writable --output-dir" in main.explain_error(denied)

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "out"))

    monkeypatch.setattr(main.RunContext, "create", read_only)
    argv = ["--preset", "test", "--pipeline", "geometric", "--data-dir", str(data_dir),
            "--output-dir", str(tmp_path / "out")]
    assert main.main(argv) == 2
    assert f"cannot write {tmp_path / 'out'}" in caplog.text
    assert "Traceback" not in caplog.text
    caplog.clear()
    assert main.main([*argv, "--debug"]) == 2
    assert "Traceback" in caplog.text


def test_a_repeated_sample_row_is_named(data_dir, tmp_path, caplog):
    copy = tmp_path / "data"
    shutil.copytree(data_dir, copy)
    sample = (copy / "sample_submission.csv").read_text().splitlines()
    (copy / "sample_submission.csv").write_text("\n".join([*sample, sample[1]]) + "\n")
    assert main.main(["--preset", "test", "--pipeline", "geometric", "--data-dir", str(copy),
                      "--output-dir", str(tmp_path / "out")]) == 2
    assert f"line {len(sample) + 1}" in caplog.text and "listed again (first on line 2)" \
        in caplog.text
    assert "Traceback" not in caplog.text


@pytest.mark.slow
def test_truncated_images_do_not_stop_the_learned_run(data_dir, tmp_path, caplog):
    """A JPEG cut short in train/ and one in test/ (the header is right, the body is not):
    training leaves the first out, the second is an outlier row, both are named, and the
    submission is complete."""
    import cv2

    copy = tmp_path / "data"
    shutil.copytree(data_dir, copy)
    sample = pd.read_csv(copy / "sample_submission.csv", dtype=str, keep_default_na=False)
    dataset, image = sample["dataset"].iloc[0], sample["image"].iloc[0]
    train_row = pd.read_csv(copy / "train_labels.csv", dtype=str).iloc[0]
    cut = []
    for path in (copy / "test" / dataset / image,
                 copy / "train" / train_row["dataset"] / train_row["image"]):
        ok, jpeg = cv2.imencode(".jpg", cv2.imread(str(path)))
        path.write_bytes(jpeg.tobytes()[: len(jpeg) // 3])  # PNG name, JPEG bytes, cut short
        cut.append(path)
    assert main.main(["--preset", "test", "--data-dir", str(copy), "--output-dir",
                      str(tmp_path / "out"), "--epochs-finetune1", "0",
                      "--epochs-finetune2", "0"]) == 0
    run_dir = tmp_path / "out" / "test-data"
    submission = pd.read_csv(run_dir / "submission.csv", dtype=str, keep_default_na=False)
    validate_submission(submission, expected_images=list_test_images(copy))
    row = submission[(submission["dataset"] == dataset) & (submission["image"] == image)]
    assert list(row["scene"]) == ["outliers"]
    for path in cut:
        assert str(path) in caplog.text


@pytest.mark.slow
def test_a_test_set_of_unreadable_images_gives_outliers_not_a_crash(run_dir, tmp_path):
    from src.learned.inference import load_run_model, predict

    model, scaler = load_run_model(run_dir)
    (tmp_path / "d").mkdir()
    for name in ("a.png", "b.jpg"):
        (tmp_path / "d" / name).write_text("not an image")
    images = pd.DataFrame({"dataset": ["d", "d"], "image": ["a.png", "b.jpg"]})
    out = predict(model, scaler, images, tmp_path, batch_size=4)
    assert list(out.table["outlier_prob"]) == [1.0, 1.0]
    assert out.table[["qx", "tx"]].isna().all().all() and out.features.shape[0] == 2
