"""Labelled training-layout data laid out as a scorable competition input."""

from __future__ import annotations

import pytest

from config import DEMO_SIZES
from src.data_layout import layout_as_test, main
from src.demo_data import DemoSpec, generate_demo_dataset
from src.evaluation import score_submission
from src.data_io import DataError
from src.submission import list_test_images, read_submission


@pytest.fixture(scope="module")
def src_dir(tmp_path_factory):
    return generate_demo_dataset(tmp_path_factory.mktemp("src"),
                                 DemoSpec(**DEMO_SIZES["tiny"], seed=2))


def test_layout_gives_test_images_labels_and_a_sample(src_dir, tmp_path):
    dst = layout_as_test(src_dir, tmp_path / "dst")
    labels = read_submission(dst / "test_labels.csv")
    listed = list_test_images(dst)
    assert sorted(zip(listed["dataset"], listed["image"])) == sorted(zip(labels["dataset"], labels["image"]))
    # ground truth laid out as a submission scores 100
    truth = labels.copy()
    truth.insert(0, "image_id", listed.set_index(["dataset", "image"]).loc[
        list(zip(truth["dataset"], truth["image"]))]["image_id"].to_numpy())
    truth.to_csv(tmp_path / "truth.csv", index=False)
    assert score_submission(tmp_path / "truth.csv", dst / "test_labels.csv",
                            dst / "test_thresholds.csv").score == pytest.approx(100.0)


def test_dataset_filter_and_errors(src_dir, tmp_path):
    dst = layout_as_test(src_dir, tmp_path / "one", datasets=["demo_train_a"])
    assert set(read_submission(dst / "test_labels.csv")["dataset"]) == {"demo_train_a"}
    with pytest.raises(DataError, match="no dataset"):
        layout_as_test(src_dir, tmp_path / "x", datasets=["nope"])
    assert main([str(tmp_path / "missing"), str(tmp_path / "y")]) == 2
    assert main([str(src_dir), str(tmp_path / "x"), "--datasets", "nope"]) == 2


def test_an_existing_destination_is_kept_unless_overwrite(src_dir, tmp_path, capsys):
    dst = tmp_path / "dst"
    assert main([str(src_dir), str(dst)]) == 0
    (dst / "mine.txt").write_text("keep me")
    assert main([str(src_dir), str(dst)]) == 2
    assert "already holds files; pass --overwrite" in capsys.readouterr().err
    assert (dst / "mine.txt").read_text() == "keep me"
    assert main([str(src_dir), str(dst), "--overwrite"]) == 0
    assert not (dst / "mine.txt").exists()
    (tmp_path / "a_file").write_text("x")
    assert main([str(src_dir), str(tmp_path / "a_file")]) == 2
    assert "is a file" in capsys.readouterr().err
