"""Pictures of a run: training loss curves, thumbnail galleries per cluster and cameras
in 3D, all written as PNG files.

matplotlib is imported, and switched to its file-only Agg backend, when the first picture is
drawn (:func:`_pyplot`), not when this module is imported: the viewer and the training
module import it without drawing anything.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from src.data_io import DataError, read_image_rgb
from src.geometry import camera_centers, quat_xyzw_to_rotation
from src.submission import OUTLIER_SCENE

log = logging.getLogger(__name__)


def _pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display needed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_history(history: pd.DataFrame, plot_dir: Path, columns: tuple[str, ...]
                 ) -> list[Path]:
    """One PNG per column of ``columns`` present in ``history`` (``<column>.png``): train and
    validation (``val_<column>``) values over all stages, with the stage boundaries marked.

    ``history``: one row per epoch, with ``stage`` and a running ``global_epoch``.
    """
    plot_dir = Path(plot_dir)
    plot_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if history.empty:
        return written
    plt = _pyplot()
    for head in columns:
        if head not in history.columns:
            continue
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(history["global_epoch"], history[head], marker="o", label="train")
        if f"val_{head}" in history.columns:
            ax.plot(history["global_epoch"], history[f"val_{head}"], marker="o",
                    label="validation")
        for stage, group in history.groupby("stage", sort=False):
            start = group["global_epoch"].min()
            ax.axvline(start - 0.5, color="grey", lw=0.8, ls="--")
            ax.text(start - 0.4, ax.get_ylim()[1], stage, va="top", fontsize=8, color="grey")
        ax.set_xlabel("epoch (all stages)")
        ax.set_ylabel(head)
        ax.set_title(head.replace("_", " "))
        ax.legend()
        fig.tight_layout()
        path = plot_dir / f"{head}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def cluster_order(scenes: pd.Series) -> list[str]:
    """Cluster names, largest first (ties by name), ``outliers`` last if present; the order
    of the galleries here and in the viewer."""
    names = [s for s in pd.unique(scenes) if s != OUTLIER_SCENE]
    names.sort(key=lambda s: (-int((scenes == s).sum()), s))
    return names + ([OUTLIER_SCENE] if (scenes == OUTLIER_SCENE).any() else [])


def plot_cluster_gallery(table: pd.DataFrame, scenes: pd.Series, image_root: Path,
                         path: Path, truth: pd.Series | None = None, per_row: int = 8,
                         thumb: int = 96) -> Path:
    """One dataset: a row of thumbnails per predicted cluster (outliers last).

    ``truth`` (ground-truth scene per image), when given, is printed under each thumbnail.
    Unreadable images are shown as a grey tile with their name, not skipped.
    """
    plt = _pyplot()
    order = cluster_order(scenes)
    rows = []
    for name in order:
        members = np.flatnonzero(scenes.to_numpy() == name)
        for start in range(0, len(members), per_row):
            rows.append((name, members[start:start + per_row]))
    fig, axes = plt.subplots(len(rows), per_row, figsize=(per_row * 1.3, len(rows) * 1.5),
                             squeeze=False)
    for r, (name, members) in enumerate(rows):
        for c in range(per_row):
            ax = axes[r][c]
            ax.axis("off")
            if c >= len(members):
                continue
            i = members[c]
            image_path = Path(image_root) / table["dataset"].iloc[i] / table["image"].iloc[i]
            try:
                img = read_image_rgb(image_path)
                scale = thumb / max(img.shape[:2])
                step = max(1, int(round(1 / scale)))
                ax.imshow(img[::step, ::step])
            except (FileNotFoundError, DataError):
                ax.imshow(np.full((thumb, thumb, 3), 128, np.uint8))
            label = table["image"].iloc[i][:14]
            if truth is not None:
                label += f"\n{truth.iloc[i]}"
            ax.set_title(label, fontsize=6)
            if c == 0:
                ax.text(-0.15, 0.5, name, transform=ax.transAxes, rotation=90, va="center",
                        ha="right", fontsize=8, weight="bold")
    fig.suptitle(f"{table['dataset'].iloc[0]}: {len(order)} group(s)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_cameras_3d(table: pd.DataFrame, scenes: pd.Series, path: Path,
                    title: str = "") -> Path:
    """Predicted camera centres and viewing directions, one colour per cluster."""
    plt = _pyplot()
    fig = plt.figure(figsize=(7, 6))
    ax = fig.add_subplot(projection="3d")
    R_cw = quat_xyzw_to_rotation(table[["qx", "qy", "qz", "qw"]].to_numpy())
    centers = camera_centers(R_cw, table[["tx", "ty", "tz"]].to_numpy())
    posed = np.isfinite(centers).all(axis=1)
    span = np.ptp(centers[posed], axis=0).max() if posed.any() else 1.0
    arrow = 0.1 * (span if span > 0 else 1.0)
    colours = plt.cm.tab10(np.linspace(0, 1, 10))
    for k, name in enumerate(n for n in cluster_order(scenes) if n != OUTLIER_SCENE):
        sel = (scenes.to_numpy() == name) & posed
        if not sel.any():
            continue
        c, d = centers[sel], R_cw[sel][:, 2, :]  # optical axis in world = third row of R_cw
        ax.scatter(*c.T, color=colours[k % 10], s=18, label=f"{name} ({sel.sum()})")
        ax.quiver(*c.T, *(d * arrow).T, color=colours[k % 10], linewidth=0.8)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_zlabel("z")
    ax.set_title(title or f"{table['dataset'].iloc[0]}: predicted cameras")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper left")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_run_results(table: pd.DataFrame, scenes: pd.Series, image_root: Path, plot_dir: Path,
                     truth: pd.Series | None = None) -> list[Path]:
    """Gallery and camera plot for every dataset of a prediction table."""
    written = []
    for dataset, group in table.groupby("dataset", sort=False):
        idx = group.index
        sub_truth = truth.loc[idx].reset_index(drop=True) if truth is not None else None
        written.append(plot_cluster_gallery(group.reset_index(drop=True),
                                            scenes.loc[idx].reset_index(drop=True), image_root,
                                            Path(plot_dir) / f"clusters_{dataset}.png",
                                            truth=sub_truth))
        written.append(plot_cameras_3d(group.reset_index(drop=True),
                                       scenes.loc[idx].reset_index(drop=True),
                                       Path(plot_dir) / f"cameras_{dataset}.png"))
    log.info("wrote %d plots to %s", len(written), plot_dir)
    return written
