"""Escalation: a scene SfM maps badly is redone alone with more effort; the better result
is kept, and sfm_scenes.csv says what happened."""

from __future__ import annotations

import numpy as np
import pytest

from src.demo_data import generate_demo_dataset
from src.geometric.escalation import (EscalationConf, better_result, largest_share,
                                      more_to_find, needs_escalation)
from src.geometric.features import FeatureConf
from src.geometric.pipeline import GeometricConf, run_geometric
from src.geometric.reconstruction import Model, ReconConf
from src.submission import list_test_images
from tests.test_geometric import SPEC


def _model(num_images: int, first: int = 0) -> Model:
    eye, zero = np.eye(3), np.zeros(3)
    return Model(poses={f"im{k}": (eye, zero) for k in range(first, first + num_images)},
                 num_points3D=0, points3D=np.zeros((0, 3)), intrinsics={})


def test_a_scene_is_redone_when_its_largest_model_holds_too_few_of_its_images():
    conf = EscalationConf(below=0.85, max_images=50)
    assert needs_escalation([_model(10)], 10, conf) == ""
    assert needs_escalation([_model(9)], 10, conf) == ""  # 0.9 >= 0.85
    assert needs_escalation([_model(8)], 10, conf) == "largest model 8 of 10 images"
    # a split: 6 + 4 registers all ten, but no model holds the scene
    assert needs_escalation([_model(6), _model(4, first=6)], 10, conf) != ""
    assert needs_escalation([], 10, conf) == "largest model 0 of 10 images"
    assert largest_share([_model(6), _model(4, first=6)], 10) == pytest.approx(0.6)
    # switched off, too large for all pairs, or too small to be a scene
    assert needs_escalation([], 10, EscalationConf(below=0.0)) == ""
    assert needs_escalation([_model(10)], 60, conf) == ""
    assert needs_escalation([], 2, conf) == ""


def test_the_redone_result_is_kept_only_when_its_largest_model_is_larger():
    assert better_result([_model(9)], [_model(8)])
    assert better_result([_model(8)], [_model(6), _model(4, first=6)])
    assert not better_result([_model(8)], [_model(8)])  # a tie keeps the fast path
    assert not better_result([], [_model(3)])
    assert better_result([_model(3)], [])


def test_a_scene_is_redone_only_when_more_effort_can_find_more():
    base = FeatureConf(max_keypoints=2048, max_image_side=1600)
    conf = EscalationConf(max_keypoints=8192, min_image_side=0)
    all_pairs = 3  # of 3 images
    # small images that never filled the budget, every pair matched: the same result again
    assert not more_to_find([470, 300, 645], [256] * 3, all_pairs, base, conf)
    assert more_to_find([2048, 300, 645], [1024] * 3, all_pairs, base, conf)  # budget full
    assert more_to_find([470, 300, 645], [256] * 3, all_pairs - 1, base, conf)  # a pair left
    # upscaling when asked for finds more on small images
    assert more_to_find([470, 300, 645], [256] * 3, all_pairs, base,
                        EscalationConf(max_keypoints=8192, min_image_side=1024))
    # a budget no larger than the fast pass's adds nothing
    assert not more_to_find([2048] * 3, [1024] * 3, all_pairs, base,
                            EscalationConf(max_keypoints=2048, min_image_side=0))


def test_escalated_features_add_keypoints_and_upscale_within_the_base_limits():
    base = FeatureConf(max_keypoints=2048, max_image_side=1600)
    more = EscalationConf(max_keypoints=8192, min_image_side=1024).features(base)
    assert (more.max_keypoints, more.min_image_side, more.max_image_side) == (8192, 1024, 1600)
    assert more.cache_key() != base.cache_key()
    capped = EscalationConf(min_image_side=1024).features(FeatureConf(max_image_side=640))
    assert capped.min_image_side == 640
    # a budget already above the escalation's is not lowered
    assert EscalationConf(max_keypoints=4096).features(
        FeatureConf(max_keypoints=8192)).max_keypoints == 8192
    with pytest.raises(ValueError, match="below"):
        EscalationConf(below=1.5)
    with pytest.raises(ValueError, match="max_keypoints"):
        EscalationConf(max_keypoints=-1)


@pytest.mark.slow
def test_a_scene_starved_of_keypoints_is_redone_and_registers_more(tmp_path):
    """128 keypoints per 256-px render leave part of a scene unregistered; the redone scene
    (2048 keypoints, all pairs) registers more of it and is kept; the same run without
    escalation keeps the smaller model."""
    data_dir = generate_demo_dataset(tmp_path / "data", SPEC)
    images = list_test_images(data_dir)

    def run(below: float, name: str):
        conf = GeometricConf(features=FeatureConf(max_keypoints=128),
                             reconstruction=ReconConf(mapper="global"),
                             escalation=EscalationConf(below=below, max_keypoints=2048,
                                                       min_image_side=0))
        return run_geometric(images, data_dir / "test", conf, tmp_path / name)

    _, _, fast = run(0.0, "fast")
    _, timings, escalated = run(0.85, "escalated")
    assert (fast["escalation"] == "").all()
    redone = escalated[escalated["escalation"] != ""]
    assert len(redone) >= 1 and "escalation" in timings.columns
    kept = redone[redone["escalation"].str.contains(", kept")]
    assert len(kept) >= 1, redone["escalation"].tolist()
    for scene in kept["graph_scene"]:
        before = fast.set_index("graph_scene").loc[scene, "registered"]
        after = escalated.set_index("graph_scene").loc[scene, "registered"]
        assert after > before
    # scenes that mapped well are left as they were
    untouched = escalated[escalated["escalation"] == ""]["graph_scene"]
    assert (escalated.set_index("graph_scene").loc[untouched, "model_sizes"]
            == fast.set_index("graph_scene").loc[untouched, "model_sizes"]).all()
