"""The geometric pipeline end to end on demo data, and its handling of bad input."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pycolmap
import pytest

from src.demo_data import DemoSpec, generate_demo_dataset
from src.evaluation import score_frames
from src.geometric.pipeline import GeometricConf, run_geometric
from src.geometric.pairs import PairsConf
from src.geometric.reconstruction import ReconConf
from src.submission import build_submission, list_test_images, read_submission, validate_submission

SPEC = DemoSpec(train_datasets=1, scenes_per_train_dataset=1, train_views_per_scene=3,
                test_datasets=1, test_seen_scenes=1, test_unseen_scenes=1,
                test_views_per_scene=10, outliers_per_dataset=2, seed=14)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return generate_demo_dataset(tmp_path_factory.mktemp("geo"), SPEC)


def score(predictions, data_dir):
    sub = build_submission(predictions)
    return score_frames(sub, read_submission(data_dir / "test_labels.csv"),
                        read_submission(data_dir / "test_thresholds.csv"))


@pytest.mark.slow
def test_demo_scenes_are_found_and_posed(data_dir, tmp_path):
    images = list_test_images(data_dir)
    predictions, timings, sfm_scenes = run_geometric(images, data_dir / "test", GeometricConf(),
                                                     tmp_path)
    assert [(p.dataset, p.image) for p in predictions] == list(zip(images["dataset"], images["image"]))
    validate_submission(build_submission(predictions, images), expected_images=images)
    report = score(predictions, data_dir)
    # Far above the single-cluster baseline (score 0): scenes separated and poses right.
    assert report.clusterness > 80 and report.mAA > 30
    assert {"features", "matching", "clustering", "reconstruction"} <= set(timings.columns)
    # One row per match-graph scene; its clusters are exactly the submission's clusters.
    assert (sfm_scenes["registered"] + sfm_scenes["unregistered"] == sfm_scenes["images"]).all()
    # The demo renders vary the focal length per view: auto keeps a camera per image.
    assert all(c.startswith("per image") for c in sfm_scenes["cameras"]), sfm_scenes["cameras"]
    listed = {(d, c) for d, cs in zip(sfm_scenes["dataset"], sfm_scenes["clusters"])
              for c in cs.split()}
    assert listed == {(p.dataset, p.scene) for p in predictions if p.scene != "outliers"}
    # Cached stages: a second run reuses everything and gives the same result.
    again, _, _ = run_geometric(images, data_dir / "test", GeometricConf(), tmp_path)
    assert [p.scene for p in again] == [p.scene for p in predictions]


@pytest.mark.slow
def test_retrieval_path_and_nan_policy(data_dir, tmp_path):
    images = list_test_images(data_dir)
    conf = GeometricConf(pairs=PairsConf(top_k=4, exhaustive_below=5), unregistered="nan")
    predictions, _, _ = run_geometric(images, data_dir / "test", conf, tmp_path)
    validate_submission(build_submission(predictions, images), expected_images=images)
    assert score(predictions, data_dir).score > 0


def write_bad_dataset(root, data_dir):
    """One real view, a blank image, a corrupt file, and three unrelated scenes' views."""
    folder = root / "test" / "bad"
    folder.mkdir(parents=True)
    demo = data_dir / "test" / "demo_test_a"
    names = sorted(p.name for p in demo.iterdir())
    rows = []
    for i, name in enumerate(names[:1]):
        (folder / f"view{i}.png").write_bytes((demo / name).read_bytes())
        rows.append(f"view{i}.png")
    cv2.imwrite(str(folder / "blank.png"), np.full((120, 160, 3), 127, np.uint8))
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    rng = np.random.default_rng(0)
    for i in range(3):
        cv2.imwrite(str(folder / f"noise{i}.png"), rng.integers(0, 255, (120, 160, 3), np.uint8))
    rows += ["blank.png", "corrupt.png", "noise0.png", "noise1.png", "noise2.png"]
    single = root / "test" / "single"
    single.mkdir()
    (single / "only.png").write_bytes((demo / names[1]).read_bytes())
    return pd.DataFrame({"dataset": ["bad"] * len(rows) + ["single"],
                         "image": rows + ["only.png"]})


def test_bad_input_gives_a_complete_valid_submission(data_dir, tmp_path, caplog):
    images = write_bad_dataset(tmp_path, data_dir)
    images.insert(0, "image_id", [f"{d}_{i}" for d, i in zip(images["dataset"], images["image"])])
    with caplog.at_level(logging.WARNING):
        predictions, _, _ = run_geometric(images, tmp_path / "test", GeometricConf(), tmp_path / "c")
    validate_submission(build_submission(predictions, images), expected_images=images)
    assert all(p.scene == "outliers" for p in predictions)  # nothing here forms a scene
    assert "corrupt.png" in caplog.text


def test_pycolmap_failure_leaves_its_cluster_as_outliers(data_dir, tmp_path, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("simulated COLMAP crash")

    monkeypatch.setattr(pycolmap, "incremental_mapping", broken)
    images = list_test_images(data_dir)
    with caplog.at_level(logging.WARNING):
        predictions, _, _ = run_geometric(images, data_dir / "test", GeometricConf(), tmp_path)
    validate_submission(build_submission(predictions, images), expected_images=images)
    assert all(p.scene == "outliers" for p in predictions)
    assert "simulated COLMAP crash" in caplog.text


def test_hybrid_inputs_exclude_flagged_images(data_dir, tmp_path):
    images = list_test_images(data_dir)
    prob = np.zeros(len(images))
    prob[:3] = 0.99
    predictions, _, _ = run_geometric(images, data_dir / "test", GeometricConf(retrieval="backbone"),
                                   tmp_path, backbone_features=np.eye(len(images)),
                                   outlier_prob=prob, outlier_threshold=0.5)
    assert all(p.scene == "outliers" for p in predictions[:3])


def test_configuration_is_checked():
    with pytest.raises(ValueError, match="unregistered"):
        GeometricConf(unregistered="drop")
    with pytest.raises(ValueError, match="retrieval"):
        GeometricConf(retrieval="netvlad")


def test_automatic_choices_follow_the_device_and_the_weights(monkeypatch):
    from config import ConfigError, get_config
    from src.geometric import torch_compat
    from src.geometric.pipeline import choose_features

    monkeypatch.setattr(torch_compat, "cuda_available", lambda: False)
    cpu = GeometricConf.from_config(get_config("test", pipeline="geometric"))
    assert (cpu.features.name, cpu.matching.matcher) == ("sift", "nn-ratio")
    assert cpu.features.max_keypoints == 2048 and cpu.retrieval == "vlad"
    learned = GeometricConf.from_config(get_config("test", pipeline="geometric",
                                                   features="aliked"))
    assert learned.matching.matcher == "lightglue" and learned.features.max_keypoints == 1024
    explicit = GeometricConf.from_config(get_config("test", pipeline="geometric",
                                                    features="disk", max_keypoints=300))
    assert explicit.features.max_keypoints == 300
    # The hybrid pipeline retrieves with the backbone only when real weights are attached.
    assert GeometricConf.from_config(get_config("test", pipeline="hybrid")).retrieval == "vlad"
    weighted = get_config("test", pipeline="hybrid", backbone_weights="/w/convnext.h5")
    assert GeometricConf.from_config(weighted).retrieval == "backbone"
    with pytest.raises(ValueError, match="lightglue needs learned features"):
        choose_features("sift", "lightglue")
    with pytest.raises(ConfigError, match="max_keypoints"):
        get_config("test", max_keypoints=-1)
    # the affine views reach SIFT's conf; a tilt that would stretch is refused at the start
    assert cpu.features.affine_tilt == 2.0
    assert GeometricConf.from_config(get_config("test", pipeline="geometric", affine_tilt=0)
                                     ).features.affine_tilt == 0
    with pytest.raises(ConfigError, match=r"affine_tilt must be 0 \(off\) or in \(1, 8\]"):
        get_config("test", affine_tilt=0.5)

    monkeypatch.setattr(torch_compat, "cuda_available", lambda: True)
    assert choose_features() == ("aliked", "lightglue", "CUDA present")
    gpu = GeometricConf.from_config(get_config("test", pipeline="geometric"))
    assert gpu.features.name == "aliked" and gpu.features.max_keypoints == 4096


@pytest.mark.slow
@pytest.mark.parametrize("mapper", ["incremental", "global", "auto"])
def test_each_mapper_poses_the_demo_scenes_reproducibly(data_dir, tmp_path, mapper):
    images = list_test_images(data_dir)
    conf = GeometricConf(reconstruction=ReconConf(mapper=mapper, seed=3))
    first, _, sfm_scenes = run_geometric(images, data_dir / "test", conf, tmp_path / "a")
    if mapper == "auto":  # the one kept per scene, and why
        assert sfm_scenes["mapper"].str.match(r"(global|incremental) \((holds|images held)").all()
    else:
        assert set(sfm_scenes["mapper"]) == {mapper}
    report = score(first, data_dir)
    assert report.clusterness > 80 and report.mAA > 30
    # Same seed, one thread, fresh caches: the same poses to the last digit.
    second, _, _ = run_geometric(images, data_dir / "test", conf, tmp_path / "b")
    for a, b in zip(first, second):
        assert a.scene == b.scene
        np.testing.assert_array_equal(a.R_cw, b.R_cw)
        np.testing.assert_array_equal(a.t_cw, b.t_cw)


def test_auto_mapper_tries_the_features_usual_mapper_first():
    from config import get_config

    def mappers(**overrides):
        cfg = get_config("cpu-demo", pipeline="geometric", **overrides)
        recon = GeometricConf.from_config(cfg).reconstruction
        return recon.mapper, recon.fallback_mapper

    assert mappers(features="sift") == ("auto", "global")
    assert mappers(features="aliked", torch_device="cpu") == ("auto", "incremental")
    assert mappers(features="disk", torch_device="cpu") == ("auto", "incremental")
    assert mappers(features="aliked", torch_device="cpu", mapper="global")[0] == "global"
    assert mappers(features="sift", mapper="incremental")[0] == "incremental"


ENTRY5 = Path(__file__).parent / "fixtures" / "entry5"


@pytest.mark.slow
def test_a_five_image_real_scene_gets_accurate_poses(tmp_path):
    """Five real photos of one facade (tests/fixtures/entry5): one cluster, every camera
    posed within the scene's scored thresholds (the default mapper for SIFT)."""
    from config import get_config

    images = pd.DataFrame({"dataset": "entry5",
                           "image": sorted(p.name for p in ENTRY5.glob("*.jpg"))})
    images.insert(0, "image_id", [f"entry5_{name}" for name in images["image"]])
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "entry5").symlink_to(ENTRY5)
    conf = GeometricConf.from_config(get_config("cpu-demo", pipeline="geometric"))
    predictions, _, sfm_scenes = run_geometric(images, tmp_path / "test", conf, tmp_path / "c")
    assert list(sfm_scenes["registered"]) == [5]
    assert len({p.scene for p in predictions}) == 1
    report = score_frames(build_submission(predictions, images),
                          read_submission(ENTRY5 / "labels.csv"),
                          read_submission(ENTRY5 / "thresholds.csv"))
    assert report.mAA > 90, report.per_scene


@pytest.mark.slow
def test_a_truncated_cache_is_moved_aside_and_recomputed(data_dir, tmp_path, caplog):
    """A features cache cut short (a full disk, a killed copy) is named in a warning, kept
    aside for a look, and computed again: the run gives what a clean run gives."""
    images = list_test_images(data_dir)
    clean, _, _ = run_geometric(images, data_dir / "test", GeometricConf(), tmp_path / "a")
    cache = next((tmp_path / "a").glob("*/features-*.h5"))
    cache.write_bytes(cache.read_bytes()[:4096])
    with caplog.at_level(logging.WARNING):
        again, _, _ = run_geometric(images, data_dir / "test", GeometricConf(), tmp_path / "a")
    assert f"{cache} cannot be read" in caplog.text
    assert list(cache.parent.glob(f"{cache.name}.unreadable-*"))
    assert [p.scene for p in again] == [p.scene for p in clean]
    for a, b in zip(again, clean):
        np.testing.assert_allclose(a.R_cw, b.R_cw, atol=1e-9)


def test_a_dangling_image_link_becomes_a_named_outlier(data_dir, tmp_path, caplog):
    """src.data_layout writes test/ as links; one whose image is gone is still a row."""
    dataset = sorted(p.name for p in (data_dir / "test").iterdir())[0]
    folder = tmp_path / "test" / dataset
    folder.mkdir(parents=True)
    for image in sorted((data_dir / "test" / dataset).iterdir())[:6]:
        (folder / image.name).symlink_to(image)
    (folder / "zz_gone.png").symlink_to(tmp_path / "deleted.png")
    images = list_test_images(tmp_path)
    assert "zz_gone.png" in set(images["image"])
    with caplog.at_level(logging.WARNING):
        predictions, _, _ = run_geometric(images, tmp_path / "test", GeometricConf(),
                                          tmp_path / "cache")
    gone = [p for p in predictions if p.image == "zz_gone.png"]
    assert len(gone) == 1 and gone[0].scene == "outliers" and np.isnan(gone[0].R_cw).all()
    assert "zz_gone.png" in caplog.text
    validate_submission(build_submission(predictions, images), expected_images=images)


def test_sfm_gets_exactly_the_pairs_this_run_selected(data_dir, tmp_path, monkeypatch):
    """A matches cache of the same configuration can hold pairs an earlier run chose (here
    with no image excluded); SfM must see this run's pairs only, as the match graph does.
    Each retrieval has its own cache file."""
    from src.geometric import pipeline
    from src.geometric.pipeline import pairs_key, reconstruct_dataset

    seen = []
    monkeypatch.setattr(pipeline, "_reconstruct_scenes",
                        lambda *args: seen.append(set(args[5])) or ({}, []))
    dataset = list_test_images(data_dir).groupby("dataset").get_group("demo_test_a")
    images = list(dataset["image"])
    conf = GeometricConf()
    reconstruct_dataset("demo_test_a", data_dir / "test" / "demo_test_a", images, conf, tmp_path)
    excluded = set(images[:3])
    reconstruct_dataset("demo_test_a", data_dir / "test" / "demo_test_a", images, conf, tmp_path,
                        excluded=excluded)
    assert len(list(tmp_path.glob("matches-*.h5"))) == 1  # the same file both times
    kept = [im for im in images if im not in excluded]
    assert seen[1] == set(itertools.combinations(kept, 2)) < seen[0]
    assert pairs_key(conf) != pairs_key(GeometricConf(retrieval="backbone"))


# --------------------------------------------------------------------------- dataset workers
def test_workers_follow_the_cores_the_datasets_and_cuda(monkeypatch):
    from src.geometric import concurrency, pipeline

    monkeypatch.setattr(concurrency.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3},
                        raising=False)
    assert pipeline.available_cores() == 4
    assert pipeline.dataset_workers(GeometricConf(), 9) == 2  # auto: one per two cores
    assert pipeline.dataset_workers(GeometricConf(), 1) == 1  # never more than the datasets
    monkeypatch.setattr(concurrency.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5},
                        raising=False)
    assert pipeline.dataset_workers(GeometricConf(), 9) == 3
    assert pipeline.dataset_workers(GeometricConf(), 2) == 2
    for cores, workers in ((1, 1), (2, 1), (3, 1), (5, 2)):  # 2: this machine
        monkeypatch.setattr(concurrency.os, "sched_getaffinity",
                            lambda pid, n=cores: set(range(n)), raising=False)
        assert pipeline.dataset_workers(GeometricConf(), 9) == workers
    assert pipeline.dataset_workers(GeometricConf(workers=1), 9) == 1
    assert pipeline.dataset_workers(GeometricConf(workers=8), 9) == 8
    assert pipeline.dataset_workers(GeometricConf(), 0) == 1
    # The learned stages on CUDA: auto keeps to one process; asked for, more share the GPU.
    monkeypatch.setattr(pipeline, "_uses_cuda", lambda conf: True)
    assert pipeline.dataset_workers(GeometricConf(), 9) == 1
    assert pipeline.dataset_workers(GeometricConf(workers=3), 9) == 3
    with pytest.raises(ValueError, match="workers must be an integer >= 0"):
        GeometricConf(workers=-1)


def two_datasets(data_dir: Path, root: Path) -> pd.DataFrame:
    """Datasets a and b under root/test, each five views of the demo's first test dataset."""
    names = sorted(p.name for p in (data_dir / "test" / "demo_test_a").iterdir())[:5]
    for dataset in ("a", "b"):
        (root / "test" / dataset).mkdir(parents=True)
        for name in names:
            (root / "test" / dataset / name).write_bytes(
                (data_dir / "test" / "demo_test_a" / name).read_bytes())
    return pd.DataFrame({"dataset": ["a"] * 5 + ["b"] * 5, "image": names * 2})


@pytest.mark.slow
def test_a_failing_worker_names_its_dataset(data_dir, tmp_path, caplog):
    images = two_datasets(data_dir, tmp_path)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "b").write_text("a file where b's cache folder should be")
    with caplog.at_level(logging.INFO), pytest.raises(FileExistsError) as raised:
        run_geometric(images, tmp_path / "test", GeometricConf(workers=2), tmp_path / "cache")
    assert "dataset 'b'" in str(raised.value.__notes__)
    assert "dataset b failed: FileExistsError" in caplog.text
    assert "2 datasets in 2 worker processes" in caplog.text


@pytest.mark.slow
def test_datasets_in_parallel_give_the_sequential_run_byte_for_byte(tmp_path):
    """Two demo datasets through main.py with --workers 1 and --workers 2: the same
    submission.csv bytes, the same sfm_scenes.csv but for its seconds, and the workers' log
    lines in the run log."""
    import main

    spec = DemoSpec(train_datasets=1, scenes_per_train_dataset=1, train_views_per_scene=3,
                    test_datasets=2, test_seen_scenes=1, test_unseen_scenes=1,
                    test_views_per_scene=6, outliers_per_dataset=1, seed=5)
    data = generate_demo_dataset(tmp_path / "data", spec)
    for workers in ("1", "2"):
        assert main.main(["--preset", "test", "--pipeline", "geometric", "--data-dir", str(data),
                          "--output-dir", str(tmp_path / "out"), "--run-name", f"w{workers}",
                          "--workers", workers]) == 0
    one, two = tmp_path / "out" / "w1", tmp_path / "out" / "w2"
    assert (one / "submission.csv").read_bytes() == (two / "submission.csv").read_bytes()
    scenes = [pd.read_csv(run / "sfm_scenes.csv").drop(columns="seconds") for run in (one, two)]
    pd.testing.assert_frame_equal(*scenes)
    assert len(scenes[0]) >= 4 and list(scenes[0]["dataset"].unique()) == ["demo_test_a",
                                                                             "demo_test_b"]
    log = (two / "run.log").read_text()
    assert "2 datasets in 2 worker processes" in log
    for dataset in ("demo_test_a", "demo_test_b"):
        assert f"{dataset}: 13 images" in log  # a worker's own line
        assert f"dataset {dataset} done" in log
