"""Shared test helper: close views of one demo scene with their exact poses."""

from __future__ import annotations

import numpy as np

from src.demo_data import make_scene, render_view, sample_cameras
from src.geometry import camera_centers, look_at_rotation

WIDTH, HEIGHT = 320, 240


def render_scene_views(seed: int, sideways_steps: list[float], width: int = WIDTH,
                       height: int = HEIGHT) -> list[tuple]:
    """Views of one demo scene from a sampled camera moved sideways by each step (world
    units), all looking at the scene's target; no photometric jitter.
    Returns [(image uint8 RGB, K, R_cw, t_cw)]."""
    scene = make_scene(np.random.default_rng(seed))
    K, R_cw, t_cw = sample_cameras(np.random.default_rng(seed + 1000), scene, 1, width, height)
    center = camera_centers(R_cw[0], t_cw[0])
    side = np.cross(scene.target - center, [0.0, 0.0, 1.0])
    side /= np.linalg.norm(side)
    views = []
    for step in sideways_steps:
        C = center + step * side
        R = look_at_rotation(C, scene.target)
        t = -R @ C
        views.append((render_view(scene, K[0], R, t, width, height), K[0], R, t))
    return views
