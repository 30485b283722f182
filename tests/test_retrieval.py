"""DINOv2 retrieval from an attached folder: descriptors, their cache, the errors that name
what to attach, and the geometric pipeline choosing its pairs with them. The model is a
tiny randomly initialised DINOv2 (tests/tiny_dinov2.py), so only the mechanics are tested,
not how well it retrieves."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import main
from config import DEMO_SIZES, ConfigError, get_config
from src.demo_data import DemoSpec, generate_demo_dataset
from src.geometric import retrieval
from src.geometric.pairs import PairsConf, select_pairs
from src.geometric.pipeline import GeometricConf, pairs_key
from src.geometric.retrieval import Dinov2Conf, dinov2_descriptors, model_folder
from src.submission import list_test_images, validate_submission
from tests.tiny_dinov2 import TINY, TINY_SIDE, save_tiny_dinov2

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return generate_demo_dataset(tmp_path_factory.mktemp("dinov2-data"),
                                 DemoSpec(**DEMO_SIZES["tiny"], seed=7))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_dinov2(tmp_path_factory.mktemp("dinov2-safetensors"))


@pytest.fixture(scope="module")
def images(data_dir, tmp_path_factory):
    """(folder, names): the demo test images of one dataset plus an exact copy of the first."""
    source = data_dir / "test" / list_test_images(data_dir)["dataset"].iloc[0]
    folder = tmp_path_factory.mktemp("dinov2-images")
    names = sorted(p.name for p in source.iterdir())
    for name in names:
        shutil.copy(source / name, folder / name)
    shutil.copy(source / names[0], folder / "copy_of_first.png")
    return folder, [*names, "copy_of_first.png"]


def conf(model_dir, **overrides) -> Dinov2Conf:
    return Dinov2Conf(**{"weights": str(model_dir), "image_side": TINY_SIDE, "device": "cpu",
                         **overrides})


# --------------------------------------------------------------------------- descriptors
def test_descriptors_are_unit_rows_of_class_token_and_patch_mean(model_dir, images):
    folder, names = images
    d = dinov2_descriptors(folder, names, conf(model_dir))
    assert d.shape == (len(names), 2 * TINY["hidden_size"]) and d.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, rtol=1e-5)
    # each half (class token, patch mean) is a unit vector scaled by 1/sqrt(2)
    half = TINY["hidden_size"]
    np.testing.assert_allclose(np.linalg.norm(d[:, :half], axis=1), np.sqrt(0.5), rtol=1e-5)


def test_descriptors_are_deterministic_and_an_identical_image_is_the_nearest(model_dir,
                                                                             images):
    folder, names = images
    first = dinov2_descriptors(folder, names, conf(model_dir))
    again = dinov2_descriptors(folder, names, conf(model_dir, batch_size=3))
    np.testing.assert_allclose(first, again, atol=1e-6)  # batching changes nothing but rounding
    np.testing.assert_array_equal(first, dinov2_descriptors(folder, names, conf(model_dir)))
    similarity = first @ first.T
    np.fill_diagonal(similarity, -np.inf)
    copy = names.index("copy_of_first.png")
    assert similarity[0].argmax() == copy and similarity[copy].argmax() == 0
    pairs = select_pairs(names, first, PairsConf(top_k=1, exhaustive_below=0))
    assert (names[0], "copy_of_first.png") in pairs


def test_pickled_weights_load_like_safetensors(model_dir, images, tmp_path):
    folder, names = images
    bin_dir = save_tiny_dinov2(tmp_path / "bin", weights_format="bin")
    assert (bin_dir / "pytorch_model.bin").is_file()
    assert not (bin_dir / "model.safetensors").exists()
    np.testing.assert_allclose(dinov2_descriptors(folder, names, conf(bin_dir)),
                               dinov2_descriptors(folder, names, conf(model_dir)), atol=1e-6)


def test_the_side_is_rounded_down_to_whole_patches(model_dir, images):
    folder, names = images
    np.testing.assert_array_equal(dinov2_descriptors(folder, names[:3], conf(model_dir)),
                                  dinov2_descriptors(folder, names[:3],
                                                     conf(model_dir, image_side=TINY_SIDE + 5)))


def test_an_unreadable_image_gets_a_zero_row_and_a_warning(model_dir, images, tmp_path, caplog):
    folder, names = images
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    (bad / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with caplog.at_level(logging.WARNING):
        d = dinov2_descriptors(bad, [names[0], "corrupt.png", "missing.png"], conf(model_dir))
    assert np.all(d[1:] == 0) and np.linalg.norm(d[0]) == pytest.approx(1.0, rel=1e-5)
    assert "corrupt.png" in caplog.text and "missing.png" in caplog.text


def test_the_cache_is_reused_extended_and_refreshed(model_dir, images, tmp_path, monkeypatch):
    folder, names = images
    path = tmp_path / "retrieval.npz"
    first = dinov2_descriptors(folder, names[:4], conf(model_dir), path)
    computed = []
    original = retrieval._compute
    monkeypatch.setattr(retrieval, "_compute",
                        lambda image_dir, todo, *args: computed.append(todo)
                        or original(image_dir, todo, *args))
    np.testing.assert_array_equal(dinov2_descriptors(folder, names[:4], conf(model_dir), path),
                                  first)
    assert computed == []  # every row from the cache
    more = dinov2_descriptors(folder, names[2:6], conf(model_dir), path)
    assert computed == [names[4:6]]  # only the new images
    np.testing.assert_array_equal(more[:2], first[2:4])
    dinov2_descriptors(folder, names[:2], conf(model_dir), path, overwrite=True)
    assert computed[-1] == names[:2]
    # another side is another configuration: the file's rows are not reused
    dinov2_descriptors(folder, names[:2], conf(model_dir, image_side=28), path)
    assert computed[-1] == names[:2]


# --------------------------------------------------------------------------- errors
def test_a_missing_model_names_what_to_attach(model_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found.*metaresearch/dinov2"):
        model_folder(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="--retrieval-weights"):
        model_folder("")
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    shutil.copy(model_dir / "config.json", no_weights / "config.json")
    with pytest.raises(FileNotFoundError, match="no weights file.*model.safetensors.*"
                                                "pytorch_model.bin.*metaresearch/dinov2"):
        model_folder(no_weights)
    # A folder above the model (as Kaggle mounts it) is named with the one to pass.
    kaggle = tmp_path / "dinov2"
    shutil.copytree(model_dir, kaggle / "transformers" / "base" / "1")
    with pytest.raises(FileNotFoundError, match=r"no config\.json.*transformers/base/1.*pass "
                                                r"that folder"):
        model_folder(kaggle)
    assert model_folder(kaggle / "transformers" / "base" / "1").is_dir()


def test_a_model_that_is_not_dinov2_is_refused(tmp_path, images):
    folder, names = images
    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (other / "model.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match="'bert' is not DINOv2"):
        dinov2_descriptors(folder, names[:1], conf(other))


def test_the_configuration_refuses_dinov2_without_a_model(model_dir, tmp_path):
    for retrieval_name in ("dinov2", "vlad+dinov2"):
        with pytest.raises(ConfigError, match="needs --retrieval-weights"):
            get_config("test", pipeline="geometric", retrieval=retrieval_name)
    with pytest.raises(ValueError, match="needs a DINOv2 model folder"):
        GeometricConf(retrieval="dinov2")
    missing = get_config("test", pipeline="geometric", retrieval="dinov2",
                         retrieval_weights=str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match="metaresearch/dinov2"):
        GeometricConf.from_config(missing)
    ok = GeometricConf.from_config(get_config("test", pipeline="geometric",
                                              retrieval="vlad+dinov2",
                                              retrieval_weights=str(model_dir),
                                              retrieval_image_side=TINY_SIDE))
    assert ok.dinov2 == Dinov2Conf(weights=str(model_dir), image_side=TINY_SIDE)
    # VLAD stays the default, with or without a model attached
    assert GeometricConf.from_config(get_config("test", pipeline="geometric",
                                                retrieval_weights=str(model_dir))
                                     ).retrieval == "vlad"


def test_a_run_without_the_model_stops_with_one_line(data_dir, tmp_path, caplog):
    argv = ["--preset", "test", "--pipeline", "geometric", "--data-dir", str(data_dir),
            "--output-dir", str(tmp_path), "--retrieval", "dinov2"]
    assert main.main(argv) == 2
    assert "needs --retrieval-weights" in caplog.text
    caplog.clear()
    assert main.main([*argv, "--retrieval-weights", str(tmp_path / "absent")]) == 2
    assert "DINOv2 model folder not found" in caplog.text and "metaresearch/dinov2" in caplog.text


# --------------------------------------------------------------------------- pipeline
def test_each_retrieval_has_its_own_matches_cache(model_dir):
    keys = {name: pairs_key(GeometricConf(retrieval=name, dinov2=conf(model_dir)))
            for name in ("vlad", "backbone", "dinov2", "vlad+dinov2")}
    assert len(set(keys.values())) == 4
    assert keys["vlad"] == "k10e30-vlad"
    assert keys["vlad+dinov2"].startswith(f"k10e30-vlad+dinov2-{TINY_SIDE}-")
    other_side = pairs_key(GeometricConf(retrieval="dinov2",
                                         dinov2=conf(model_dir, image_side=28)))
    assert other_side != keys["dinov2"]


def test_a_geometric_run_chooses_its_pairs_by_vlad_and_dinov2(data_dir, model_dir, tmp_path):
    argv = ["--preset", "test", "--pipeline", "geometric", "--data-dir", str(data_dir),
            "--output-dir", str(tmp_path), "--retrieval", "vlad+dinov2", "--retrieval-weights",
            str(model_dir), "--retrieval-image-side", str(TINY_SIDE),
            "--pair-exhaustive-below", "0", "--pair-top-k", "2", "--torch-device", "cpu"]
    assert main.main(argv) == 0
    run_dir = tmp_path / f"test-geometric-{data_dir.name}"
    submission = pd.read_csv(run_dir / "submission.csv", dtype=str, keep_default_na=False)
    validate_submission(submission, expected_images=list_test_images(data_dir))
    dataset_dirs = [p for p in (run_dir / "geometric").iterdir() if p.is_dir()]
    for cache in dataset_dirs:
        assert len(list(cache.glob(f"retrieval-dinov2-{TINY_SIDE}-*.npz"))) == 1
        assert len(list(cache.glob("matches-*-k2e0-vlad+dinov2-*.h5"))) == 1
    timings = pd.read_csv(run_dir / "timings_geometric.csv")
    assert (timings["retrieval"] > 0).all()


@pytest.mark.slow
def test_dinov2_loads_beside_the_torchvision_stand_in(model_dir, images):
    """An ALIKED run registers the torchvision stand-in before retrieval imports
    transformers, which must neither trip over it nor keep it away from ALIKED; and no
    TensorFlow is loaded on the way."""
    folder, names = images
    code = (
        "import sys\n"
        "from src.geometric.torch_compat import ensure_torchvision\n"
        "from src.geometric.retrieval import Dinov2Conf, dinov2_descriptors\n"
        "stand_in = ensure_torchvision()\n"
        f"d = dinov2_descriptors({str(folder)!r}, {names[:2]!r}, "
        f"Dinov2Conf(weights={str(model_dir)!r}, image_side={TINY_SIDE}, device='cpu'))\n"
        "assert d.shape == (2, 64), d.shape\n"
        "if stand_in:\n"
        "    assert sys.modules['torchvision'].__version__.endswith('stand-in')\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'keras'}))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"
