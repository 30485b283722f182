"""The IMC 2025 score, computed locally on any labelled data.

Our own implementation of the metric published by the organisers (imc25-utils ``metric.py``,
default parameters), vectorised:

- Per dataset, for every (ground-truth scene, predicted cluster) pair, the predicted camera
  centres of the shared images are aligned to the ground truth by a similarity transform:
  every triplet of cameras gives a minimal model (Horn's quaternion method); a model with more
  than 2 inliers at a threshold is refined on those inliers (SVD); for each threshold the
  refined model with the most inliers (then the smallest total squared error over all cameras,
  then the earliest) is kept, and its per-camera errors are the registration errors.
- mAA of a pair: for each threshold but the 2 tightest, max(0, cameras within it - 3),
  summed and divided by (thresholds used) x (scene size - 3).
- Each ground-truth scene is assigned the cluster with the most shared images, ties broken by
  the pair's mAA, then by the cluster's first appearance in the submission.
- Dataset mAA = sum over scenes of max(0, registered - 3) per threshold over
  (thresholds used) x (images in scenes - 3 x scenes); clustering = shared images over the
  sizes of the assigned clusters; the dataset score is their harmonic mean. The final score is
  the mean over datasets, 0-100.

The ground-truth ``outliers`` scene and predicted ``outliers`` clusters take no part in the
registration; images a submission puts in real clusters still count in the cluster sizes.
A ground-truth scene whose best match is the ``outliers`` group leaves the denominator's image
count but keeps its 3-camera deduction, so a dataset's mAA (and score) can exceed 100 when
other scenes are well registered. The organisers' code does the same (``gt_scene_sum_table``
stays 0 for an ``outliers`` column); it is kept, to score as the leaderboard does.

Command line: ``python -m src.evaluation SUBMISSION LABELS THRESHOLDS``.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from src.geometry import horn_rotations, camera_centers
from src.data_io import DataError, parse_numbers, parse_thresholds, write_csv_atomic
from src.submission import OUTLIER_SCENE, check_pose_rows, read_submission

log = logging.getLogger(__name__)

SKIP_TOP_THRESHOLDS = 2  # the two tightest thresholds are not scored
CAMERAS_DEDUCTED = 3  # a similarity from 3 cameras always fits them: they earn nothing
_TRIPLET_CHUNK = 4096


# --------------------------------------------------------------------------- registration
def _horn_triplet_models(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Similarities dst ~ s R src + t from point triplets (B, 3, 3), rotation by Horn's method.

    Degenerate triplets give non-finite transforms, which register no camera, as in the
    reference. Returns sR (B, 3, 3) and t (B, 3).
    """
    mu_s = src.mean(axis=1, keepdims=True)
    mu_d = dst.mean(axis=1, keepdims=True)
    a, b = src - mu_s, dst - mu_d
    R = horn_rotations(a, b)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.sqrt(np.sum(b * b, axis=(1, 2)) / np.sum(a * a, axis=(1, 2)))
        sR = s[:, None, None] * R
        t = mu_d[:, 0] - np.einsum("bij,bj->bi", sR, mu_s[:, 0])
    return sR, t


def _svd_subset_models(pred: np.ndarray, gt: np.ndarray, masks: np.ndarray) -> tuple:
    """Least-squares similarities gt ~ s R pred + t, one per boolean row of masks (K, n).

    Sums over each subset are matrix products, so thousands of subsets cost a few GEMMs;
    the inputs must be centred (see :func:`registration_errors`) for these sums to be exact.
    """
    w = masks.astype(np.float64)
    count = w.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        mu_p = (w @ pred) / count[:, None]
        mu_g = (w @ gt) / count[:, None]
        outer = (gt[:, :, None] * pred[:, None, :]).reshape(len(pred), 9)
        cov = (w @ outer).reshape(-1, 3, 3) - count[:, None, None] * mu_g[:, :, None] * mu_p[:, None, :]
        ss_p = w @ np.sum(pred * pred, axis=1) - count * np.sum(mu_p * mu_p, axis=1)
        ss_g = w @ np.sum(gt * gt, axis=1) - count * np.sum(mu_g * mu_g, axis=1)
        U, _, Vt = np.linalg.svd(np.nan_to_num(cov))
        R = U @ Vt
        flip = np.linalg.det(R) < 0
        R[flip] -= 2.0 * np.einsum("bi,bj->bij", U[flip, :, 2], Vt[flip, 2, :])
        s = np.sqrt(ss_g / ss_p)
        sR = s[:, None, None] * R
        t = mu_g - np.einsum("bij,bj->bi", sR, mu_p)
    return sR, t


def _squared_errors(sR: np.ndarray, t: np.ndarray, pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Squared distances (B, N) between the transformed predictions and the ground truth."""
    with np.errstate(invalid="ignore", over="ignore"):
        moved = np.matmul(pred[None], np.transpose(sR, (0, 2, 1))) + t[:, None, :]
        return np.sum((moved - gt[None]) ** 2, axis=2)


def registration_errors(pred_centers: np.ndarray, gt_centers: np.ndarray,
                        thresholds: np.ndarray) -> np.ndarray:
    """Per-camera registration errors of the best similarity for each threshold.

    pred_centers, gt_centers: (N, 3) for the same images; rows with a non-finite prediction are
    dropped first. thresholds: (r,). Returns (N_valid, r) distances (``inf`` where no model
    was found, e.g. fewer than 3 valid cameras).
    """
    thresholds = np.asarray(thresholds, dtype=np.float64)
    valid = np.all(np.isfinite(pred_centers), axis=1)
    pred = np.asarray(pred_centers, np.float64)[valid]
    gt = np.asarray(gt_centers, np.float64)[valid]
    n, r = len(pred), len(thresholds)
    errors = np.full((n, r), np.inf)
    if n < 3:
        return errors
    # Errors do not change when both sets are shifted; centring keeps the sums exact.
    pred = pred - pred.mean(axis=0)
    gt = gt - gt.mean(axis=0)
    thr2 = thresholds ** 2

    # 1. Minimal models from every triplet; collect the inlier sets that get refined, with the
    #    position at which the reference meets them (triplets in lexicographic order, then
    #    thresholds ascending).
    keys, positions = [], []
    triplets = np.array(list(itertools.combinations(range(n), 3)), dtype=np.int64)
    for start in range(0, len(triplets), _TRIPLET_CHUNK):
        idx = triplets[start:start + _TRIPLET_CHUNK]
        sR, t = _horn_triplet_models(pred[idx], gt[idx])
        err2 = _squared_errors(sR, t, pred, gt)  # (B, n)
        inliers = err2[:, :, None] < thr2[None, None, :]  # (B, n, r)
        b_idx, q_idx = np.nonzero(inliers.sum(axis=1) > 2)
        if len(b_idx) == 0:
            continue
        packed = np.ascontiguousarray(np.packbits(inliers[b_idx, :, q_idx], axis=1))
        chunk_keys = packed.view(np.dtype((np.void, packed.shape[1]))).ravel()
        chunk_keys, first = np.unique(chunk_keys, return_index=True)
        keys.append(chunk_keys)
        positions.append((start + b_idx[first]) * r + q_idx[first])
    if not keys:
        return errors
    all_keys, first = np.unique(np.concatenate(keys), return_index=True)
    order = np.argsort(np.concatenate(positions)[first], kind="stable")
    packed = all_keys[order].view(np.uint8).reshape(len(order), -1)
    masks = np.unpackbits(packed, axis=1, count=n).astype(bool)  # (K, n), first met first

    # 2. Refine each distinct inlier set once (the reference recomputes identical ones, which
    #    cannot change its choice).
    refined_err2 = np.empty(masks.shape)
    for start in range(0, len(masks), _TRIPLET_CHUNK):
        sR, t = _svd_subset_models(pred, gt, masks[start:start + _TRIPLET_CHUNK])
        refined_err2[start:start + len(sR)] = _squared_errors(sR, t, pred, gt)
    with np.errstate(invalid="ignore"):
        refined_counts = (refined_err2[:, :, None] < thr2[None, None, :]).sum(axis=1)  # (K, r)
        total = refined_err2.sum(axis=1)

    # 3. Per threshold, the reference keeps the first model with the most inliers and, among
    #    equals, the smallest total error; a non-finite total never wins.
    candidates = np.flatnonzero(np.isfinite(total))
    if len(candidates) == 0:
        return errors
    for q in range(r):
        best = candidates[np.lexsort((candidates, total[candidates],
                                      -refined_counts[candidates, q]))[0]]
        errors[:, q] = np.sqrt(refined_err2[best])
    return errors


def maa_on_cameras(errors: np.ndarray, thresholds: np.ndarray, n_gt: int,
                   skip: int = SKIP_TOP_THRESHOLDS, deducted: int = CAMERAS_DEDUCTED) -> float:
    """mAA of one (scene, cluster) pair from :func:`registration_errors`; n_gt = scene size."""
    thresholds = np.asarray(thresholds, np.float64)[skip:]
    hits = np.sum(errors[:, skip:] < thresholds[None, :], axis=0)
    numerator = np.sum(np.maximum(hits - deducted, 0))
    return 0.0 if numerator == 0 else float(numerator / (len(thresholds) * (n_gt - deducted)))


# --------------------------------------------------------------------------- tables
@dataclass
class ScoreReport:
    """Scores 0-100: overall, and one row per dataset (mAA, clustering, score, sizes)."""

    score: float
    mAA: float
    clusterness: float
    per_dataset: pd.DataFrame = field(repr=False)
    per_scene: pd.DataFrame = field(repr=False)

    def table(self) -> str:
        shown = self.per_dataset.copy()
        for col in ("mAA", "clusterness", "score"):
            shown[col] = shown[col].map(lambda v: f"{v:6.2f}")
        lines = [shown.to_string(index=False),
                 f"overall: score={self.score:.2f}  mAA={self.mAA:.2f}  "
                 f"clusterness={self.clusterness:.2f}  ({len(self.per_dataset)} datasets)"]
        return "\n".join(lines)


def _centers_by_scene(frame: pd.DataFrame, name: str) -> dict:
    """{dataset: {scene: {image: centre (3,)}}}, scenes in order of first appearance."""
    out: dict = {}
    for row, rec in enumerate(frame.itertuples(index=False)):
        where = f"{name}, line {row + 2}"
        R = parse_numbers(rec.rotation_matrix, 9, f"{where}, field rotation_matrix")
        t = parse_numbers(rec.translation_vector, 3, f"{where}, field translation_vector")
        scenes = out.setdefault(rec.dataset, {})
        scenes.setdefault(rec.scene, {})[rec.image] = camera_centers(R.reshape(3, 3), t)
    return out


def _read_thresholds(frame: pd.DataFrame, name: str) -> dict:
    """{dataset: {scene: thresholds (T,)}}; every scene must have the same count T."""
    missing = [c for c in ("dataset", "scene", "thresholds") if c not in frame.columns]
    if missing:
        raise DataError(f"{name}: missing column(s) {missing} (found {list(frame.columns)})")
    out: dict = {}
    for row, rec in enumerate(frame.itertuples(index=False)):
        out.setdefault(rec.dataset, {})[rec.scene] = parse_thresholds(
            rec.thresholds, f"{name}, line {row + 2}, field thresholds")
    counts = {len(ths) for scenes in out.values() for ths in scenes.values()}
    if len(counts) > 1:
        raise DataError(f"{name}: the number of thresholds varies per scene: {sorted(counts)}")
    return out


def _check_images(gt: dict, user: dict, dataset: str) -> None:
    gt_images = [img for scene in gt.values() for img in scene]
    if len(set(gt_images)) != len(gt_images):
        raise DataError(f"labels: dataset {dataset!r} has an image name in two scenes")
    user_images = [img for scene in user.values() for img in scene]
    missing = sorted(set(gt_images) - set(user_images))
    extra = sorted(set(user_images) - set(gt_images))
    if missing or extra or len(user_images) != len(set(user_images)):
        raise DataError(f"submission: dataset {dataset!r} does not list exactly the labelled "
                        f"images once (missing e.g. {missing[:3]}, unexpected e.g. {extra[:3]})")


@dataclass
class _SceneMatch:
    """The predicted cluster a ground-truth scene is scored against, and how it fares."""

    cluster: str
    shared: int  # images of the scene in the cluster
    cluster_size: int
    maa: float  # 0-1, on the shared cameras
    hits: np.ndarray  # (T - SKIP_TOP_THRESHOLDS,) cameras within each scored threshold
    scene_size: int  # images of the scene that count (0 when matched only to `outliers`)


def _best_cluster(gt_cams: dict, user_scenes: dict, ths: np.ndarray) -> _SceneMatch:
    """The cluster sharing most images with the scene (then best mAA, then first listed)."""
    names = list(user_scenes)
    shared, maa, sizes = np.zeros(len(names)), np.zeros(len(names)), np.zeros(len(names))
    errors: list[np.ndarray | None] = [None] * len(names)
    for j, name in enumerate(names):
        if name == OUTLIER_SCENE:
            continue
        user_cams = user_scenes[name]
        common = [img for img in gt_cams if img in user_cams]
        pred = np.array([user_cams[i] for i in common]).reshape(-1, 3)
        true = np.array([gt_cams[i] for i in common]).reshape(-1, 3)
        errors[j] = registration_errors(pred, true, ths)
        maa[j] = maa_on_cameras(errors[j], ths, len(gt_cams))
        shared[j], sizes[j] = len(common), len(user_cams)
    best = int(np.lexsort((-maa, -shared))[0])
    hits = np.zeros(len(ths) - SKIP_TOP_THRESHOLDS)
    if errors[best] is not None:
        hits = np.sum(errors[best][:, SKIP_TOP_THRESHOLDS:] < ths[None, SKIP_TOP_THRESHOLDS:],
                      axis=0)
    # As in the reference, a scene left with a predicted `outliers` group (no overlap with
    # any cluster) drops out of the image count but still costs 3 cameras.
    return _SceneMatch(cluster=names[best], shared=int(shared[best]),
                       cluster_size=int(sizes[best]), maa=float(maa[best]), hits=hits,
                       scene_size=0 if names[best] == OUTLIER_SCENE else len(gt_cams))


def _combined_scores(matches: list[_SceneMatch], n_thresholds: int) -> tuple[float, float, float]:
    """(mAA, clusterness, score), each 0-1, of one dataset from its scenes' best clusters:
    mAA pools the cameras of all scenes (3 per scene deducted), clusterness is the share of
    the chosen clusters' images that belong to their scene, the score their harmonic mean."""
    scored_thresholds = n_thresholds - SKIP_TOP_THRESHOLDS
    numerator = sum(np.sum(np.maximum(m.hits - CAMERAS_DEDUCTED, 0)) for m in matches)
    cameras = sum(m.scene_size for m in matches) - len(matches) * CAMERAS_DEDUCTED
    denominator = max(0, scored_thresholds * cameras)
    maa = 0.0 if denominator == 0 else float(numerator / denominator)
    size_sum = float(sum(m.cluster_size for m in matches))
    clusterness = 0.0 if size_sum == 0 else float(sum(m.shared for m in matches) / size_sum)
    total = maa + clusterness
    return maa, clusterness, 0.0 if total == 0 else 2 * maa * clusterness / total


def score_frames(submission: pd.DataFrame, labels: pd.DataFrame, thresholds: pd.DataFrame,
                 names: tuple[str, str, str] = ("submission", "labels", "thresholds"),
                 ) -> ScoreReport:
    """Score a submission against labels; all three are DataFrames of text columns.

    Only the datasets present in ``labels`` are scored; the submission must list each of their
    images exactly once (it may hold other datasets, which are ignored).
    """
    check_pose_rows(submission, names[0])
    check_pose_rows(labels, names[1])
    user_data = _centers_by_scene(submission, names[0])
    gt_data = _centers_by_scene(labels, names[1])
    ths_data = _read_thresholds(thresholds, names[2])
    if not gt_data:
        raise DataError(f"{names[1]}: no labelled images to score")
    dataset_rows, scene_rows = [], []
    for dataset, gt_scenes in gt_data.items():
        if dataset not in user_data:
            raise DataError(f"{names[0]}: dataset {dataset!r} not found")
        user_scenes = user_data[dataset]
        _check_images(gt_scenes, user_scenes, dataset)
        scored = [s for s in gt_scenes if s != OUTLIER_SCENE]
        matches = [_best_cluster(gt_scenes[scene], user_scenes,
                                 _scene_thresholds(ths_data, dataset, scene, names[2]))
                   for scene in scored]
        n_thresholds = len(ths_data[dataset][scored[-1]]) if scored else SKIP_TOP_THRESHOLDS
        maa, clusterness, score = _combined_scores(matches, n_thresholds)
        scene_rows += [{"dataset": dataset, "scene": scene, "cluster": m.cluster,
                        "images": len(gt_scenes[scene]), "shared": m.shared,
                        "cluster_size": m.cluster_size, "mAA": 100 * m.maa}
                       for scene, m in zip(scored, matches)]
        dataset_rows.append({"dataset": dataset, "scenes": len(scored),
                             "images": sum(len(s) for s in gt_scenes.values()),
                             "clusters": sum(1 for u in user_scenes if u != OUTLIER_SCENE),
                             "mAA": 100 * maa, "clusterness": 100 * clusterness,
                             "score": 100 * score})
    per_dataset = pd.DataFrame(dataset_rows)
    return ScoreReport(score=float(per_dataset["score"].mean()),
                       mAA=float(per_dataset["mAA"].mean()),
                       clusterness=float(per_dataset["clusterness"].mean()),
                       per_dataset=per_dataset, per_scene=pd.DataFrame(scene_rows))


def _scene_thresholds(ths_data: dict, dataset: str, scene: str, name: str) -> np.ndarray:
    try:
        return ths_data[dataset][scene]
    except KeyError:
        raise DataError(f"{name}: no thresholds for {dataset}/{scene}") from None


def score_submission(submission_csv: str | Path, labels_csv: str | Path,
                     thresholds_csv: str | Path) -> ScoreReport:
    """Score the files at these paths (see :func:`score_frames`)."""
    return score_frames(read_submission(submission_csv), read_submission(labels_csv),
                        read_submission(thresholds_csv),
                        names=(str(submission_csv), str(labels_csv), str(thresholds_csv)))


def score_subset(submission: pd.DataFrame, labels_csv: str | Path, thresholds_csv: str | Path,
                 images: pd.DataFrame) -> ScoreReport:
    """Score a submission on the labelled ``images`` (columns dataset, image) only, e.g. the
    validation split of the training data."""
    labels = read_submission(labels_csv)
    keys = images[["dataset", "image"]].astype(str).drop_duplicates()
    labels = labels.merge(keys, on=["dataset", "image"], how="inner")
    return score_frames(submission, labels, read_submission(thresholds_csv),
                        names=("submission", str(labels_csv), str(thresholds_csv)))


def true_scenes(images: pd.DataFrame, labels_csv: str | Path) -> pd.Series:
    """Ground-truth scene of each row of ``images`` (columns dataset, image); NaN if
    unlabelled. Indexed like ``images``."""
    labels = read_submission(labels_csv)[["dataset", "image", "scene"]]
    merged = images[["dataset", "image"]].merge(labels, on=["dataset", "image"], how="left")
    return pd.Series(merged["scene"].to_numpy(), index=images.index)


def seen_unseen_summary(report: ScoreReport, seen_scenes: set[str]) -> str:
    """Mean per-scene mAA (0-100) of the scenes seen in training vs the unseen ones."""
    scenes = report.per_scene
    parts = []
    for label, mask in (("seen", scenes["scene"].isin(seen_scenes)),
                        ("unseen", ~scenes["scene"].isin(seen_scenes))):
        if mask.any():
            parts.append(f"{label} scenes: mean mAA {scenes.loc[mask, 'mAA'].mean():.2f} "
                         f"over {int(mask.sum())} scene(s)")
    return "; ".join(parts) if parts else "no scored scenes"


def score_test_set(submission_csv: str | Path, data_dir: str | Path, seen_scenes: set[str],
                   table: pd.DataFrame, run_dir: str | Path) -> pd.Series | None:
    """Score a run's submission when ``data_dir`` has test labels (demo and laid-out data;
    on Kaggle the score is computed there): the table and the seen/unseen split go to the
    log and ``score_test.csv``. Returns each row of ``table``'s true scene (for the plots),
    or None without labels."""
    data_dir = Path(data_dir)
    test_labels = data_dir / "test_labels.csv"
    if not test_labels.is_file():
        log.info("no test labels in %s: the test score is computed by Kaggle", data_dir)
        return None
    report = score_submission(submission_csv, test_labels, data_dir / "test_thresholds.csv")
    log.info("test score:\n%s\n%s", report.table(), seen_unseen_summary(report, seen_scenes))
    write_csv_atomic(report.per_dataset, Path(run_dir) / "score_test.csv")
    return true_scenes(table, test_labels)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.evaluation",
                                     description="Score a submission with the IMC 2025 metric.")
    parser.add_argument("submission", help="submission.csv to score")
    parser.add_argument("labels", help="ground truth (train_labels.csv layout)")
    parser.add_argument("thresholds", help="thresholds (train_thresholds.csv layout)")
    parser.add_argument("--per-scene", action="store_true", help="also print the scene table")
    args = parser.parse_args(argv)
    try:
        report = score_submission(args.submission, args.labels, args.thresholds)
    except (DataError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report.table())
    if args.per_scene:
        print(report.per_scene.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
