"""Labels parsing, targets, split, easy subset, scaler and scene statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.transform import Rotation

from src.learned import preprocessing as pp
from src.data_io import DataError
from src.submission import read_submission

FIXTURES = Path(__file__).parent / "fixtures"
LABELS = FIXTURES / "imc2025_labels_subset.csv"
THRESHOLDS = FIXTURES / "imc2025_thresholds_subset.csv"


def write_rows(tmp_path, rows, name="labels.csv"):
    path = tmp_path / name
    pd.DataFrame(rows, columns=["dataset", "scene", "image", "rotation_matrix",
                                "translation_vector"]).to_csv(path, index=False)
    return path


def test_real_labels_parse_with_consistent_geometry():
    labels = pp.read_labels(LABELS)
    assert len(labels) == 53
    assert labels["is_outlier"].sum() == 3
    posed = labels[labels["has_pose"]]
    assert len(posed) == 50 and not labels.loc[labels["is_outlier"], "has_pose"].any()
    R = pp.rotations(posed)
    t = pp.translations(posed)
    q = posed[pp.QUAT_COLUMNS].to_numpy()
    np.testing.assert_allclose(Rotation.from_quat(q).as_matrix(), R, atol=1e-6)
    np.testing.assert_allclose(posed[pp.CENTER_COLUMNS].to_numpy(),
                               -np.einsum("nji,nj->ni", R, t), atol=1e-9)
    assert np.all(q[:, 3] >= 0)


def test_thresholds_and_difficulty():
    ths = pp.read_thresholds(THRESHOLDS)
    et = ths.set_index("scene").loc["ET"]
    assert et.difficulty == pytest.approx(1 / (0.002 + 0.01))
    bike = ths.set_index("scene").loc["bike"]
    assert bike.difficulty == pytest.approx(100.0)  # min threshold 0


@pytest.mark.parametrize("rotation, translation, message", [
    ("1;0;0;0;1;0;0;0", "0;0;0", r"line 2, field rotation_matrix: expected 9 numbers"),
    ("1;0;0;0;1;0;0;0;1", "0;zero;0", r"line 2, field translation_vector: not a number"),
    ("1;0;0;0;1;0;0;0;1", "nan;0;0", r"line 2: the pose must be all numbers or all nan"),
    ("1;0;0;0;1;0;0;0;2", "0;0;0", r"line 2, field rotation_matrix: not a rotation"),
    ("-1;0;0;0;1;0;0;0;1", "0;0;0", r"not a rotation"),
    ("1;0;0;0;1;0;0;0;1", "inf;0;0", r"infinite"),
])
def test_malformed_rows_name_file_line_and_field(tmp_path, rotation, translation, message):
    path = write_rows(tmp_path, [["d", "s", "a.png", rotation, translation]])
    with pytest.raises(DataError, match=message) as info:
        pp.read_labels(path)
    assert str(path) in str(info.value)


def test_missing_column_and_empty_file(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("dataset,scene,image\nd,s,a.png\n")
    with pytest.raises(DataError, match="missing column"):
        pp.read_labels(path)
    empty = write_rows(tmp_path, [], name="empty.csv")
    with pytest.raises(DataError, match="no rows"):
        pp.read_labels(empty)


def test_nan_pose_of_real_scene_is_kept_without_pose_target(tmp_path, caplog):
    nan9, nan3 = ";".join(["nan"] * 9), "nan;nan;nan"
    path = write_rows(tmp_path, [["d", "s", "a.png", "1;0;0;0;1;0;0;0;1", "1;2;3"],
                                 ["d", "s", "b.png", nan9, nan3],
                                 ["d", "outliers", "c.png", nan9, nan3]])
    labels = pp.read_labels(path)
    assert list(labels["has_pose"]) == [True, False, False]
    assert list(labels["is_outlier"]) == [False, False, True]
    assert "nan pose" in caplog.text


def test_duplicate_image_is_an_error(tmp_path):
    row = ["d", "s", "a.png", "1;0;0;0;1;0;0;0;1", "1;2;3"]
    with pytest.raises(DataError, match="line 3: image 'a.png' appears twice"):
        pp.read_labels(write_rows(tmp_path, [row, row]))


def test_split_is_stratified_deterministic_and_handles_small_scenes():
    labels = pp.attach_difficulty(pp.read_labels(LABELS), pp.read_thresholds(THRESHOLDS))
    train, val = pp.split_train_val(labels, 0.2, seed=40)
    assert len(train) + len(val) == len(labels)
    assert set(train.index).isdisjoint(val.index)
    for (dataset, scene), group in labels.groupby(["dataset", "scene"]):
        n_val = int(((val["dataset"] == dataset) & (val["scene"] == scene)).sum())
        if len(group) < 5:  # the 3 ETs outliers: too small to split
            assert n_val == 0
        else:
            assert n_val == round(0.2 * len(group))
    train2, val2 = pp.split_train_val(labels, 0.2, seed=40)
    assert list(val2.index) == list(val.index)
    _, val3 = pp.split_train_val(labels, 0.2, seed=41)
    assert set(val3.index) != set(val.index)
    tiny = labels.groupby("scene").head(2)
    tiny_train, tiny_val = pp.split_train_val(tiny, 0.2, seed=0)
    assert len(tiny_val) == 0 and len(tiny_train) == len(tiny)


def test_easy_datasets_are_below_average_difficulty():
    labels = pp.attach_difficulty(pp.read_labels(LABELS), pp.read_thresholds(THRESHOLDS))
    # ETs: 1/(0.002+0.01) = 83.3 ; haiper: 1/(0+0.01) = 100
    assert pp.easy_datasets(labels) == ["ETs"]
    same = labels.assign(difficulty=1.0)
    assert pp.easy_datasets(same) == ["ETs", "imc2023_haiper"]


def test_scaler_fits_inliers_only_and_round_trips(tmp_path):
    labels = pp.read_labels(LABELS)
    scaler = pp.fit_translation_scaler(labels)
    posed = labels[labels["has_pose"]]
    np.testing.assert_allclose(scaler.mean_, pp.translations(posed).mean(axis=0))
    path = pp.save_scaler(scaler, tmp_path / "scaler.joblib")
    loaded = pp.load_scaler(path)
    t = pp.translations(posed)
    np.testing.assert_allclose(loaded.inverse_transform(loaded.transform(t)), t, atol=1e-12)
    with pytest.raises(DataError):
        pp.fit_translation_scaler(labels[labels["is_outlier"]])


def test_scene_statistics_against_direct_computation():
    labels = pp.read_labels(LABELS)
    stats = pp.scene_statistics(labels).set_index(["dataset", "scene"])
    assert len(stats) == 4 and ("ETs", "outliers") not in stats.index
    bike = labels[labels["scene"] == "bike"]
    t = pp.translations(bike)
    d = np.linalg.norm(t - t.mean(axis=0), axis=1)
    row = stats.loc[("imc2023_haiper", "bike")]
    assert row.images == 15
    assert row.trans_spread_max == pytest.approx(d.max())
    assert row.trans_spread_p95 == pytest.approx(np.percentile(d, 95))
    # Quaternion spread is blind to the sign of q.
    flipped = labels.copy()
    flipped.loc[flipped["scene"] == "bike", pp.QUAT_COLUMNS] *= -1
    again = pp.scene_statistics(flipped).set_index(["dataset", "scene"])
    assert again.loc[("imc2023_haiper", "bike")].quat_spread_max == pytest.approx(row.quat_spread_max)


def test_prepare_training_labels_saves_its_outputs(tmp_path):
    prepared = pp.prepare_training_labels(LABELS, THRESHOLDS, val_fraction=0.2, seed=40)
    assert len(prepared.train) + len(prepared.val) == 53
    assert set(prepared.easy_train["dataset"]) == {"ETs"}
    prepared.save(tmp_path)
    split = read_submission(tmp_path / "split.csv")
    assert set(split["split"]) == {"train", "val"}
    assert (tmp_path / "translation_scaler.joblib").is_file()
    assert (tmp_path / "scene_stats.csv").is_file()
