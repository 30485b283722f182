"""Building submission.csv, validating it, pose tables and cluster names."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.transform import Rotation

from src import submission as sub_io
from src.data_io import DataError


def predictions():
    R = Rotation.random(3, random_state=1).as_matrix()
    return [sub_io.PosePrediction("d1", "a.png", "cluster0", R[0], np.array([1.0, 2, 3])),
            sub_io.PosePrediction("d1", "b.png", "outliers", np.full((3, 3), np.nan), np.full(3, np.nan)),
            sub_io.PosePrediction("d2", "c.png", "cluster0", R[2], np.zeros(3))]


def test_build_submission_follows_sample_rows_and_ids(tmp_path):
    sample = pd.DataFrame({"image_id": ["x3", "x1", "x2"], "dataset": ["d2", "d1", "d1"],
                           "scene": "outliers", "image": ["c.png", "a.png", "b.png"],
                           "rotation_matrix": "", "translation_vector": ""})
    sub = sub_io.build_submission(predictions(), sample)
    assert list(sub["image_id"]) == ["x3", "x1", "x2"]
    assert list(sub["image"]) == ["c.png", "a.png", "b.png"]
    sub_io.validate_submission(sub, expected_images=sample)
    path = sub_io.write_submission(sub, tmp_path / "submission.csv", expected_images=sample)
    back = sub_io.read_submission(path)
    assert list(back.columns) == sub_io.SUBMISSION_COLUMNS
    assert back.loc[2, "rotation_matrix"] == ";".join(["nan"] * 9)


def test_build_submission_without_sample_uses_default_ids():
    sub = sub_io.build_submission(predictions())
    assert list(sub["image_id"]) == ["d1_a.png_public", "d1_b.png_public", "d2_c.png_public"]
    with pytest.raises(DataError, match="no prediction for 1"):
        sub_io.build_submission(predictions()[:2], sub)


@pytest.mark.parametrize("column, value, message", [
    ("rotation_matrix", "1;0;0;0;1;0;0;0;-1", "line 2: rotation_matrix is not a rotation"),
    ("rotation_matrix", "nan;0;0;0;1;0;0;0;1", "line 2: rotation_matrix is partly nan"),
    ("translation_vector", "1;nan;2", "line 2: translation_vector is partly nan"),
    ("translation_vector", "1;2", "line 2, field translation_vector"),
    ("scene", "", "line 2: empty scene name"),
])
def test_validator_names_the_bad_row(tmp_path, column, value, message):
    sub = sub_io.build_submission(predictions())
    sub.loc[0, column] = value
    with pytest.raises(DataError, match=message):
        sub_io.validate_submission(sub)
    target = tmp_path / "submission.csv"
    with pytest.raises(DataError):
        sub_io.write_submission(sub, target)
    assert not target.exists()  # nothing half-written


def test_validator_rejects_duplicates_and_wrong_image_sets():
    sub = sub_io.build_submission(predictions())
    doubled = pd.concat([sub, sub.iloc[[0]]], ignore_index=True)
    with pytest.raises(DataError, match="appears more than once"):
        sub_io.validate_submission(doubled)
    with pytest.raises(DataError, match="missing e.g."):
        sub_io.validate_submission(sub.iloc[:2], expected_images=sub)
    with pytest.raises(DataError, match="missing column"):
        sub_io.validate_submission(sub.drop(columns=["image_id"]))


def test_cluster_names_round_trip():
    for k in (0, 1, 12):
        assert sub_io.cluster_index(sub_io.cluster_name(k)) == k
    for bad in ("outliers", "cluster", "clusterX", "scene3"):
        with pytest.raises(ValueError, match="not a cluster name"):
            sub_io.cluster_index(bad)


def test_pose_table_round_trips_rotations_and_keeps_nan_poses():
    table = sub_io.pose_table(predictions())
    assert list(table["scene"]) == ["cluster0", "outliers", "cluster0"]
    quats = table[sub_io.QUAT_COLUMNS].to_numpy()
    R = Rotation.random(3, random_state=1).as_matrix()
    back = Rotation.from_quat(quats[[0, 2]]).as_matrix()
    np.testing.assert_allclose(back, R[[0, 2]], atol=1e-9)
    assert np.isnan(quats[1]).all()
    assert (quats[[0, 2], 3] >= 0).all()
    np.testing.assert_allclose(table[sub_io.TRANSLATION_COLUMNS].to_numpy()[0], [1, 2, 3])


def test_a_plain_folder_of_photos_is_one_dataset(tmp_path):
    photos = tmp_path / "holiday"
    photos.mkdir()
    for name in ("b.jpg", "a.png"):
        (photos / name).write_bytes(b"x")
    (photos / "notes.txt").write_text("not an image")
    listed = sub_io.list_test_images(photos)
    assert list(listed["dataset"]) == ["holiday", "holiday"]
    assert list(listed["image"]) == ["a.png", "b.jpg"]
    assert sub_io.test_image_root(photos) == tmp_path


def test_a_plain_folder_of_photos_given_as_dot_is_named_after_the_folder(tmp_path,
                                                                          monkeypatch):
    photos = tmp_path / "holiday"
    photos.mkdir()
    (photos / "a.png").write_bytes(b"x")
    monkeypatch.chdir(photos)
    assert list(sub_io.list_test_images(".")["dataset"]) == ["holiday"]
    assert sub_io.test_image_root(".") / "holiday" == photos


def test_the_competition_layout_is_not_a_photo_folder(tmp_path):
    # The competition layout is not mistaken for one: its images are under test/.
    (tmp_path / "comp" / "test" / "d").mkdir(parents=True)
    (tmp_path / "comp" / "test" / "d" / "x.png").write_bytes(b"x")
    assert sub_io.test_image_root(tmp_path / "comp") == tmp_path / "comp" / "test"
    assert list(sub_io.list_test_images(tmp_path / "comp")["dataset"]) == ["d"]
    with pytest.raises(FileNotFoundError, match="no test images"):
        sub_io.list_test_images(tmp_path / "comp" / "test" / "empty_parent_missing")


def test_an_empty_dataset_folder_is_named(tmp_path, caplog):
    (tmp_path / "test" / "empty").mkdir(parents=True)
    (tmp_path / "test" / "full").mkdir()
    (tmp_path / "test" / "full" / "a.png").write_bytes(b"x")
    with caplog.at_level("WARNING"):
        listed = sub_io.list_test_images(tmp_path)
    assert list(listed["dataset"]) == ["full"]
    assert str(tmp_path / "test" / "empty") in caplog.text
