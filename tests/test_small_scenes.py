"""benchmarks/small_scenes.py: every scene cut to a few photos, outliers kept, in folders
the pipeline and the scorer read as any competition layout."""

from __future__ import annotations

import pandas as pd
import pytest

from src.demo_data import DemoSpec, generate_demo_dataset
from src.evaluation import score_submission
from src.submission import (OUTLIER_SCENE, default_image_id, list_test_images,
                            read_submission)


@pytest.fixture(scope="module")
def tool(load_script):
    return load_script("benchmarks/small_scenes.py")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    spec = DemoSpec(train_datasets=1, scenes_per_train_dataset=1, train_views_per_scene=3,
                    test_datasets=1, test_seen_scenes=1, test_unseen_scenes=1,
                    test_views_per_scene=9, outliers_per_dataset=2, seed=5)
    return generate_demo_dataset(tmp_path_factory.mktemp("source"), spec)


def test_each_scene_is_cut_to_the_photos_asked_and_scores_as_truth(tool, source, tmp_path):
    small = tmp_path / "small"
    tool.main([str(source), str(small), "--images", "4", "--draws", "2", "--seed", "3"])
    original = read_submission(source / "test_labels.csv")
    labels = read_submission(small / "test_labels.csv")
    (dataset,) = set(original["dataset"])
    assert sorted(set(labels["dataset"])) == [f"{dataset}_n4_d0", f"{dataset}_n4_d1"]
    drawn = {}
    for name, rows in labels.groupby("dataset"):
        sizes = rows.groupby("scene").size().to_dict()
        outliers = original[original["scene"] == OUTLIER_SCENE]
        assert sizes.pop(OUTLIER_SCENE) == len(outliers) == 2  # every outlier photo kept
        assert sorted(sizes.values()) == [4, 4]  # two scenes of nine, four photos each
        # each photo is one of the source's, with its scene and pose unchanged
        merged = rows.merge(original, on="image", suffixes=("", "_source"))
        assert len(merged) == len(rows)
        assert (merged["scene"] == merged["scene_source"]).all()
        assert (merged["rotation_matrix"] == merged["rotation_matrix_source"]).all()
        assert sorted(p.name for p in (small / "test" / name).iterdir()) == \
            sorted(rows["image"])
        drawn[name] = set(rows["image"])
    assert drawn[f"{dataset}_n4_d0"] != drawn[f"{dataset}_n4_d1"]  # the draws differ

    sample = read_submission(small / "sample_submission.csv")
    assert list(sample["image_id"]) == [default_image_id(d, im) for d, im in
                                        zip(sample["dataset"], sample["image"])]
    # the pipeline's listing and the scorer read it: the labels as a submission score 100
    listed = list_test_images(small)
    assert sorted(zip(listed["dataset"], listed["image"])) == \
        sorted(zip(labels["dataset"], labels["image"]))
    truth = labels.merge(listed[["dataset", "image", "image_id"]], on=["dataset", "image"])
    truth[["image_id", *labels.columns]].to_csv(tmp_path / "truth.csv", index=False)
    assert score_submission(tmp_path / "truth.csv", small / "test_labels.csv",
                            small / "test_thresholds.csv").score == pytest.approx(100.0)


def test_the_same_seed_draws_the_same_photos(tool, source):
    labels = read_submission(source / "test_labels.csv")
    first = tool.draw_small_scenes(labels, images=3, draws=2, seed=7)
    again = tool.draw_small_scenes(labels, images=3, draws=2, seed=7)
    assert first.equals(again)
    # a scene no larger than asked keeps every photo
    whole = tool.draw_small_scenes(labels, images=50, draws=1, seed=7)
    assert len(whole) == len(labels)
    with pytest.raises(ValueError, match="images and draws must be >= 1"):
        tool.draw_small_scenes(labels, images=0, draws=1, seed=7)


def test_datasets_draw_apart_and_bad_destinations_are_refused(tool, source, tmp_path):
    labels = read_submission(source / "test_labels.csv")
    (dataset,) = set(labels["dataset"])
    # a second dataset without outliers, with the same photo names: drawn on its own
    twin = labels[labels["scene"] != OUTLIER_SCENE].assign(dataset="another")
    both = tool.draw_small_scenes(pd.concat([labels, twin]), images=3, draws=1, seed=7)
    alone = tool.draw_small_scenes(labels, images=3, draws=1, seed=7)
    mine = both[both["dataset"] == dataset].reset_index(drop=True)
    assert mine.equals(alone)  # another dataset does not change this one's draw
    other = both[both["dataset"] == "another"]
    assert OUTLIER_SCENE not in set(other["scene"])
    assert sorted(other.groupby("scene").size()) == [3, 3]

    with pytest.raises(SystemExit):  # an existing folder is never replaced
        tool.main([str(source), str(tmp_path)])
    with pytest.raises(SystemExit):  # nor one inside the source
        tool.main([str(source), str(source / "small")])
    assert (source / "test_labels.csv").is_file() and not (source / "small").exists()


def test_malformed_labels_are_named_and_nothing_is_written(tool, source, tmp_path, capsys):
    broken = tmp_path / "broken"
    (broken / "test").mkdir(parents=True)
    (broken / "test" / "d").symlink_to(next((source / "test").iterdir()))
    (broken / "test_thresholds.csv").write_text((source / "test_thresholds.csv").read_text())
    (broken / "test_labels.csv").write_text("dataset,scene,image\nd,s,a.jpg\n")
    with pytest.raises(SystemExit):
        tool.main([str(broken), str(tmp_path / "small")])
    error = capsys.readouterr().err
    assert str(broken / "test_labels.csv") in error and "rotation_matrix" in error
    assert not (tmp_path / "small").exists()
