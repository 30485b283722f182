"""The geometric pipeline, per dataset: features -> pairs -> verified matches -> match-graph
scenes -> pycolmap SfM per scene -> one pose (or ``outliers``) per image.

Every stage caches its output under ``<cache_root>/<dataset>/`` (file names carry the stage's
configuration key) and skips work already done unless ``overwrite``. The pairs are chosen by
VLAD of the local features, by an attached DINOv2 model (``src.geometric.retrieval``) or by
both. The ``hybrid`` mode feeds the learned model in: its outlier head removes images before
matching and its backbone features choose the pairs.
"""

from __future__ import annotations

import logging
import logging.handlers
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from config import ConfigError
from src.geometric.concurrency import (available_cores, dataset_finished, helper_wanted,
                                       prepare_helper, sfm_slots, share_cores, spawn_possible)
from src.geometric.escalation import (EscalationConf, better_result, describe_outcome,
                                      escalate_scene, image_sizes, more_to_find,
                                      needs_escalation, weakly_tied)
from src.geometric.features import FeatureConf, Features, extract_dataset, load_all_features
from src.geometric.matching import (LIGHTGLUE_WEIGHTS, MatchConf, load_matched_features,
                                    load_verified_matches, match_and_verify)
from src.geometric.options import (AUTO_KEYPOINTS, AUTO_MAPPER, DATASET_WORKER_CORES,
                                   DATASET_WORKERS, DINOV2_RETRIEVALS, ESCALATION_KEYPOINTS,
                                   RETRIEVALS, UNREGISTERED, UNREGISTERED_POLICIES,
                                   check_choices)
from src.geometric.model_merge import Merge, MergeConf, describe_merges, merge_models
from src.geometric.pairs import PairsConf, select_pairs, vlad_descriptors
from src.geometric.retrieval import ATTACH_HINT, Dinov2Conf, dinov2_descriptors, model_folder
from src.geometric.reconstruction import (Model, ReconConf, SceneSfM, poses_for_images,
                                          reconstruct_scene)
from src.geometric.scene_graph import GraphConf, cluster_match_graph
from src.data_io import write_csv_atomic
from src.learned.options import OUTLIER_THRESHOLD
from src.progress import log_lines_only
from src.submission import OUTLIER_SCENE, PosePrediction, cluster_index, cluster_name, pose_table

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GeometricConf:
    features: FeatureConf = field(default_factory=FeatureConf)
    pairs: PairsConf = field(default_factory=PairsConf)
    matching: MatchConf = field(default_factory=MatchConf)
    graph: GraphConf = field(default_factory=GraphConf)
    reconstruction: ReconConf = field(default_factory=ReconConf)
    # Images of a scene that SfM could not register: "outliers", or kept in the scene's
    # cluster with a nan pose ("nan"); options.UNREGISTERED says why the default.
    unregistered: str = UNREGISTERED
    # Global descriptor for pair selection: "vlad" (from the local features, no network),
    # "backbone" (the learned model's features; hybrid mode), "dinov2" (the attached model
    # of ``dinov2``) or "vlad+dinov2" (each image's neighbours by both).
    retrieval: str = "vlad"
    dinov2: Dinov2Conf = field(default_factory=Dinov2Conf)
    # Scenes SfM maps badly are done again alone with more effort (escalation.py).
    escalation: EscalationConf = field(default_factory=EscalationConf)
    # A scene's models that agree on the points they share are joined (model_merge.py).
    merge: MergeConf = field(default_factory=MergeConf)
    # Why the features and matcher are what they are (``auto`` resolved by device), for the log.
    reason: str = field(default="as configured", compare=False)
    # Processes running the datasets side by side: 0 = auto (options.DATASET_WORKERS says
    # how many), 1 = one after the other in this process. Not a choice of what is computed.
    workers: int = field(default=DATASET_WORKERS, compare=False)

    def __post_init__(self) -> None:
        check_choices(self, {"unregistered": UNREGISTERED_POLICIES, "retrieval": RETRIEVALS})
        if self.retrieval in DINOV2_RETRIEVALS and not self.dinov2.weights:
            raise ValueError(f"retrieval {self.retrieval!r} needs a DINOv2 model folder "
                             f"(--retrieval-weights DIR); {ATTACH_HINT}")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) \
                or self.workers < 0:
            raise ValueError(f"GeometricConf.workers must be an integer >= 0, "
                             f"got {self.workers!r}")

    @classmethod
    def from_config(cls, cfg) -> "GeometricConf":
        """The geometric fields of a config.Config, with ``auto`` choices resolved; a
        combination that cannot run raises config.ConfigError naming it."""
        try:
            return cls._from_config(cfg)
        except ValueError as error:
            raise ConfigError(str(error)) from None

    @classmethod
    def _from_config(cls, cfg) -> "GeometricConf":
        retrieval = cfg.retrieval
        if retrieval == "auto":
            # A backbone without ImageNet weights retrieves no better than random pairs
            # (benchmarks/README.md, pair recall): VLAD unless weights are attached.
            hybrid_with_weights = cfg.pipeline == "hybrid" and bool(cfg.backbone_weights)
            retrieval = "backbone" if hybrid_with_weights else "vlad"
        if retrieval in DINOV2_RETRIEVALS:
            model_folder(cfg.retrieval_weights)  # a missing model stops the run before it starts
        elif cfg.retrieval_weights:
            log.warning("--retrieval-weights is set but the pairs are chosen by %s; the DINOv2 "
                        "model is not used (--retrieval dinov2 or vlad+dinov2 uses it)",
                        retrieval)
        features, matcher, reason = choose_features(cfg.features, cfg.matcher)
        return cls(
            features=FeatureConf(name=features,
                                 max_keypoints=choose_keypoints(features, cfg.max_keypoints,
                                                                cfg.torch_device),
                                 max_image_side=cfg.max_image_side,
                                 affine_tilt=cfg.affine_tilt, model=cfg.feature_model,
                                 weights=cfg.feature_weights, device=cfg.torch_device),
            pairs=PairsConf(top_k=cfg.pair_top_k, exhaustive_below=cfg.pair_exhaustive_below,
                            seed=cfg.seed),
            matching=MatchConf(matcher=matcher, ratio=cfg.match_ratio,
                               ransac_threshold_px=cfg.ransac_threshold_px,
                               min_inliers=cfg.min_verified_inliers, seed=cfg.seed,
                               weights=cfg.matcher_weights, device=cfg.torch_device,
                               rotation_retry=cfg.rotation_retry),
            graph=GraphConf(min_inliers=cfg.graph_min_inliers,
                            min_cluster_size=cfg.min_scene_size,
                            strong_inliers=cfg.graph_strong_inliers, seed=cfg.seed),
            reconstruction=ReconConf(mapper=cfg.mapper, fallback_mapper=AUTO_MAPPER[features],
                                     min_model_size=max(cfg.min_scene_size, 2), seed=cfg.seed,
                                     num_threads=cfg.sfm_threads,
                                     camera_sharing=cfg.camera_sharing,
                                     reregister_below_points=cfg.reregister_below_points),
            unregistered=cfg.unregistered, retrieval=retrieval,
            dinov2=Dinov2Conf(weights=cfg.retrieval_weights,
                              image_side=cfg.retrieval_image_side, device=cfg.torch_device),
            escalation=EscalationConf(
                below=cfg.escalate_below, weak_share=cfg.escalate_weak_share,
                max_keypoints=ESCALATION_KEYPOINTS["sift" if features == "sift" else "learned"]),
            merge=MergeConf(enabled=cfg.merge_models, seed=cfg.seed), reason=reason,
            workers=cfg.workers)


def choose_features(features: str = "auto", matcher: str = "auto") -> tuple[str, str, str]:
    """(features, matcher, why) with ``auto`` resolved by the device: on a CPU, SIFT with
    nearest-neighbour matching (seconds per dataset where ALIKED + LightGlue take minutes);
    where CUDA is present, ALIKED + LightGlue (milliseconds per image and pair there)."""
    reasons = []
    if features == "auto":
        from src.geometric.torch_compat import cuda_available
        features = "aliked" if cuda_available() else "sift"
        reasons.append("CUDA present" if features == "aliked" else "no CUDA: the fast CPU path")
    if matcher == "auto":
        matcher = "lightglue" if features in LIGHTGLUE_WEIGHTS else "nn-ratio"
    elif matcher == "lightglue" and features not in LIGHTGLUE_WEIGHTS:
        raise ValueError(f"--matcher lightglue needs learned features "
                         f"({' or '.join(LIGHTGLUE_WEIGHTS)}), not {features!r}")
    return features, matcher, "; ".join(reasons) or "as configured"


# Scenes mapped at once (_map_scenes): each has at most two mappings waiting, so four keep
# both SfM slots busy; the rest wait their turn, the largest first.
MAX_SCENE_THREADS = 4

# Columns of sfm_scenes.csv: what SfM made of each match-graph scene (_sfm_row).
SFM_COLUMNS = ["dataset", "graph_scene", "images", "mapper", "cameras", "escalation",
               "merged", "models", "model_sizes", "registered", "unregistered", "clusters",
               "seconds"]


def describe_mapper(conf: ReconConf) -> str:
    """The mapper as the log says it, e.g. ``"auto mapper (global first and on ties)"``."""
    if conf.mapper == "auto":
        return f"auto mapper ({conf.fallback_mapper} first and on ties)"
    return f"{conf.mapper} mapper"


def choose_keypoints(features: str, requested: int = 0, device: str = "auto") -> int:
    """``requested`` if set (> 0), else the options.AUTO_KEYPOINTS budget of the features on
    the device that will run them."""
    if requested > 0:
        return requested
    if features == "sift":
        return AUTO_KEYPOINTS["sift"]
    from src.geometric.torch_compat import torch_device
    return AUTO_KEYPOINTS[f"learned-{torch_device(device)}"]


def describe(conf: GeometricConf) -> str:
    """One line saying what the geometric pipeline will run, for the start of a run log."""
    f, m = conf.features, conf.matching
    name = f"{f.name} ({f.model})" if f.learned else f.name
    device = ""
    if f.learned or m.matcher == "lightglue":
        from src.geometric.torch_compat import torch_device
        device = f" on {torch_device(f.device)}"
    retrieval = conf.retrieval
    if retrieval in DINOV2_RETRIEVALS:
        retrieval += f" (DINOv2 {conf.dinov2.weights} at {conf.dinov2.image_side} px)"
    affine = ""
    if not f.learned and f.affine_tilt:
        affine = f" (+ squeezed 1/{f.affine_tilt:g} along x where under half are found)"
    return (f"features {name}, {f.max_keypoints} keypoints{affine} at <= {f.max_image_side} px, "
            f"matcher {m.matcher}{device}; pairs: exhaustive up to {conf.pairs.exhaustive_below}"
            f" images, else top {conf.pairs.top_k} by {retrieval}; "
            f"{describe_mapper(conf.reconstruction)} ({conf.reason})")


def pairs_key(conf: GeometricConf) -> str:
    """What chooses the pairs, for the matches cache's name, e.g. ``k10e30-vlad`` or
    ``k10e30-vlad+dinov2-224-3f9a1c2b``: the top k, the exhaustive limit and the retrieval
    (with the DINOv2 model's key). Matches cached for one choice of pairs are then never
    read as another's."""
    retrieval = "+".join(conf.dinov2.cache_key() if part == "dinov2" else part
                         for part in conf.retrieval.split("+"))
    return f"k{conf.pairs.top_k}e{conf.pairs.exhaustive_below}-{retrieval}"


def _nan_pose(dataset: str, image: str, scene: str) -> PosePrediction:
    return PosePrediction(dataset, image, scene, np.full((3, 3), np.nan), np.full(3, np.nan))


class _Stopwatch:
    """Seconds per stage, summed over calls: ``stopwatch("matching", fn, *args)`` runs
    ``fn(*args)`` and adds its wall time to ``seconds["matching"]``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, stage: str, fn, *args, **kwargs):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start
        return out


def reconstruct_dataset(dataset: str, image_dir: Path, images: list[str], conf: GeometricConf,
                        cache_dir: Path, overwrite: bool = False,
                        backbone_features: np.ndarray | None = None,
                        excluded: set[str] | None = None,
                        ) -> tuple[list[PosePrediction], dict[str, float], list[dict]]:
    """Scene and pose for each of ``images`` (one dataset), seconds per stage, and one row per
    match-graph scene saying what SfM made of it (see :func:`_sfm_row`).

    ``backbone_features`` (N, D) in the order of ``images`` are needed when
    ``conf.retrieval == "backbone"``; ``excluded`` images (e.g. flagged by the outlier head)
    go straight to ``outliers``.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    excluded = excluded or set()
    kept = [im for im in images if im not in excluded]
    stopwatch = _Stopwatch()
    if conf.reconstruction.num_threads == 1 and helper_wanted():
        # the helper's calls are SfM mappings: it imports their module, not the pipeline
        prepare_helper(reconstruct_scene.__module__)

    features_path = stopwatch("features", extract_dataset, image_dir, kept, conf.features,
                              cache_dir / f"features-{conf.features.cache_key()}.h5", overwrite)
    features = load_all_features(features_path)
    _warn_featureless(dataset, kept, features)
    global_desc = _global_descriptors(dataset, image_dir, images, kept, features, conf,
                                      backbone_features, cache_dir, overwrite, stopwatch)
    pairs = select_pairs(kept, global_desc, conf.pairs)
    match_path = cache_dir / (f"matches-{conf.features.cache_key()}-"
                              f"{conf.matching.cache_key()}-{pairs_key(conf)}.h5")
    verified = stopwatch("matching", match_and_verify, features_path, pairs, conf.matching,
                         match_path, overwrite, image_dir)
    scenes = stopwatch("clustering", cluster_match_graph, kept, verified, conf.graph)
    _log_scenes(dataset, kept, pairs, verified, scenes, len(excluded), conf.graph.min_inliers)
    # The file may also hold pairs of an earlier run of this configuration that chose others
    # (other images excluded in hybrid mode): SfM gets this run's pairs, as the graph did.
    selected = set(pairs)
    inlier_matches = {pair: m for pair, m in load_verified_matches(match_path).items()
                      if pair in selected}
    # the keypoints the matches index: an image matched turned has its turned detections
    matched = load_matched_features(features_path, match_path, features)
    result, sfm_rows = _reconstruct_scenes(dataset, image_dir, kept, scenes, matched,
                                           inlier_matches, conf, cache_dir, overwrite,
                                           stopwatch)
    predictions = [result.get(im) or _nan_pose(dataset, im, OUTLIER_SCENE) for im in images]
    return predictions, stopwatch.seconds, sfm_rows


def _warn_featureless(dataset: str, images: list[str], features: dict[str, Features]) -> None:
    featureless = [im for im in images if len(features[im]) == 0]
    if featureless:
        log.warning("%s: %d image(s) without keypoints (blank, tiny or unreadable), they will "
                    "be outliers: %s", dataset, len(featureless),
                    ", ".join(featureless[:10]) + (" ..." if len(featureless) > 10 else ""))


def _global_descriptors(dataset: str, image_dir: Path, images: list[str], kept: list[str],
                        features: dict[str, Features], conf: GeometricConf,
                        backbone_features: np.ndarray | None, cache_dir: Path, overwrite: bool,
                        stopwatch: _Stopwatch) -> np.ndarray | list[np.ndarray] | None:
    """(len(kept), D) descriptors that choose the pairs: the backbone's (rows of ``images``),
    VLAD of the local features or DINOv2's; for vlad+dinov2 both arrays, whose neighbours
    ``select_pairs`` joins; None when the dataset is small enough for all pairs."""
    if conf.retrieval == "backbone" and backbone_features is not None:
        order = [images.index(im) for im in kept]
        return backbone_features[order]
    if conf.retrieval == "backbone" and len(kept) > conf.pairs.exhaustive_below:
        log.warning("%s: backbone retrieval asked for but no backbone features given; "
                    "retrieving with VLAD", dataset)
    if len(kept) <= conf.pairs.exhaustive_below:
        return None
    descriptors = []
    if conf.retrieval != "dinov2":  # vlad, vlad+dinov2, or backbone without its features
        descriptors.append(stopwatch("retrieval", vlad_descriptors,
                                     [features[im].descriptors for im in kept],
                                     seed=conf.pairs.seed))
    if conf.retrieval in DINOV2_RETRIEVALS:
        cache_path = cache_dir / f"retrieval-{conf.dinov2.cache_key()}.npz"
        descriptors.append(stopwatch("retrieval", dinov2_descriptors, image_dir, kept,
                                     conf.dinov2, cache_path, overwrite))
    return descriptors[0] if len(descriptors) == 1 else descriptors


def _log_scenes(dataset: str, kept: list[str], pairs: list[tuple[str, str]],
                verified: pd.DataFrame, scenes: dict[str, str], num_excluded: int,
                min_inliers: int) -> None:
    """One line on what matching and clustering found; a warning when nothing matched."""
    edges = int((verified["inliers"] >= min_inliers).sum())
    if len(kept) > 1 and edges == 0:
        log.warning("%s: no pair of its %d images has %d verified matches; every image is "
                    "an outlier", dataset, len(kept), min_inliers)
    log.info("%s: %d images, %d pairs, %d verified, %d scene(s), %d outlier(s)", dataset,
             len(kept), len(pairs), edges, len(set(scenes.values()) - {OUTLIER_SCENE}),
             sum(s == OUTLIER_SCENE for s in scenes.values()) + num_excluded)


def _reconstruct_scenes(dataset: str, image_dir: Path, kept: list[str], scenes: dict[str, str],
                        features: dict[str, Features],
                        inlier_matches: dict[tuple[str, str], np.ndarray], conf: GeometricConf,
                        cache_dir: Path, overwrite: bool, stopwatch: _Stopwatch
                        ) -> tuple[dict[str, PosePrediction], list[dict]]:
    """SfM of each match-graph scene, in cluster order; a prediction per image of a scene,
    and a row per scene. A scene's models become clusters numbered on from the previous
    scene's. The scenes are mapped first (side by side, see :func:`_map_scenes`), then
    each one's models are joined and, where it came out badly, it is redone."""
    result: dict[str, PosePrediction] = {}
    rows = []
    next_cluster = 0
    names = sorted(set(scenes.values()) - {OUTLIER_SCENE}, key=cluster_index)
    jobs = []
    for scene in names:
        members = [im for im in kept if scenes[im] == scene]
        member_set = set(members)
        matches = {pair: m for pair, m in inlier_matches.items()
                   if pair[0] in member_set and pair[1] in member_set}
        keypoints = {im: features[im].keypoints for im in members}
        work_dir = cache_dir / "sfm" / f"{conf.reconstruction.cache_key()}-{scene}"
        jobs.append((image_dir, members, keypoints, matches, work_dir, conf.reconstruction,
                     overwrite, None, image_sizes(features, members)))
    mapped = stopwatch("reconstruction", _map_scenes, jobs, conf.reconstruction)
    for scene, job, (sfm, seconds) in zip(names, jobs, mapped):
        _, members, _, matches, work_dir = job[:5]
        started = time.perf_counter()
        models, merges = stopwatch("merging", merge_models, sfm.models, matches, conf.merge)
        if merges:
            log.info("%s/%s: %s", dataset, scene, describe_merges(merges))
        sfm, merges, escalation = _escalate_if_needed(
            dataset, scene, image_dir, members, sfm._replace(models=models), merges,
            [features[im] for im in members], matches, conf, cache_dir, work_dir,
            overwrite, stopwatch)
        models = sfm.models
        merged = describe_merges(merges)
        seconds += time.perf_counter() - started
        predictions, first_cluster = _scene_predictions(dataset, members, models, next_cluster,
                                                        conf.unregistered)
        result.update(predictions)
        rows.append(_sfm_row(dataset, scene, members, models, sfm.mapper, sfm.cameras,
                             escalation, merged, range(next_cluster, first_cluster), seconds))
        next_cluster = first_cluster
        if not models:
            log.warning("%s/%s: SfM found no model for %d image(s); they are %s", dataset,
                        scene, len(members),
                        "kept with nan poses" if conf.unregistered == "nan" else "outliers")
    return result, rows


def _map_scenes(jobs: list[tuple], conf: ReconConf) -> list[tuple[SceneSfM, float]]:
    """:func:`reconstruction.reconstruct_scene` of each job's arguments and the seconds it
    took (waiting for other scenes' mappings included), in job order. Scenes are
    independent: where this process has a core to spare and the mapper runs on one thread,
    up to MAX_SCENE_THREADS scenes at once, the largest first, each in a thread here that
    sends its mappings to whichever of this process and the helper is free
    (concurrency.sfm_slots; the same models either way, tested). The demo's 10-image scenes map
    in ~0.1 s each; one at a time, their mappings, camera choices and the other mapper
    waited on one another with a core idle."""
    if len(jobs) < 2 or conf.num_threads != 1 or not helper_wanted():
        return [_timed_scene(*job) for job in jobs]
    largest_first = sorted(range(len(jobs)), key=lambda k: -len(jobs[k][1]))
    with sfm_slots() as slots, ThreadPoolExecutor(min(len(jobs), MAX_SCENE_THREADS),
                                                  thread_name_prefix="scene") as scenes:
        futures = {k: scenes.submit(_timed_scene, *jobs[k]) for k in largest_first}
        try:
            return [futures[k].result() for k in range(len(jobs))]
        except BaseException:  # a scene failed (or Ctrl-C): the others stop at their next call
            slots.cancel_waiting()
            scenes.shutdown(cancel_futures=True)
            raise


def _timed_scene(*job) -> tuple[SceneSfM, float]:
    """:func:`reconstruction.reconstruct_scene` of one job and its wall seconds."""
    started = time.perf_counter()
    sfm = reconstruct_scene(*job)
    return sfm, time.perf_counter() - started


def _escalate_if_needed(dataset: str, scene: str, image_dir: Path, members: list[str],
                        sfm: SceneSfM, merges: list[Merge], member_features: list[Features],
                        matches: dict[tuple[str, str], np.ndarray], conf: GeometricConf,
                        cache_dir: Path, work_dir: Path, overwrite: bool,
                        stopwatch: _Stopwatch) -> tuple[SceneSfM, list[Merge], str]:
    """The scene's SfM (models joined) and merges, redone with more effort when it came
    out badly (escalation.needs_escalation: ``matches``, those of its pairs that were
    matched, say which images are weakly tied) and more effort can find more
    (escalation.more_to_find), kept when better; and what happened ("" if nothing was
    redone)."""
    weak_pairs = conf.escalation.weak_pairs
    min_matches = conf.reconstruction.min_num_matches
    weak = weakly_tied(members, matches, min_matches, weak_pairs)
    reason = needs_escalation(sfm.models, len(members), conf.escalation, len(weak))
    if not reason:
        return sfm, merges, ""
    if not more_to_find([len(f) for f in member_features],
                        [max(f.image_size) for f in member_features], len(matches),
                        conf.features, conf.escalation):
        log.info("%s/%s: %s, but every pair was matched and no image filled its keypoint "
                 "budget: not redone", dataset, scene, reason)
        return sfm, merges, f"{reason}; nothing more to find, not redone"
    redone, redone_merges, redone_matches = stopwatch(
        "escalation", escalate_scene, image_dir, members, conf.features, conf.matching,
        conf.reconstruction, conf.escalation, work_dir.with_name(work_dir.name + "-escalated"),
        overwrite, f"{dataset}/{scene}", conf.merge)
    weak_redone = weakly_tied(members, redone_matches, min_matches, weak_pairs)
    kept = better_result(redone.models, sfm.models, weak_escalated=len(weak_redone),
                         weak_fast=len(weak))
    outcome = describe_outcome(reason, sfm.models, redone.models, kept, weak_fast=len(weak),
                               weak_escalated=len(weak_redone))
    log.info("%s/%s: %s", dataset, scene, outcome)
    if kept:
        return redone, redone_merges, outcome
    return sfm, merges, outcome


def _sfm_row(dataset: str, scene: str, members: list[str], models: list[Model], mapper: str,
             cameras: str, escalation: str, merged: str, clusters: range, seconds: float
             ) -> dict:
    """What SfM made of one match-graph scene: the mapper (for "auto": the one kept and
    why), the cameras kept and why, whether
    it was redone with more effort and which result was kept, which models were joined and
    on what evidence, the models' sizes, the images it registered, the submission clusters
    they became and the seconds it took (cached runs take none; scenes mapped side by side
    count the time their mappings waited for the others')."""
    registered = len(set(members) & {name for model in models for name in model.poses})
    return {"dataset": dataset, "graph_scene": scene, "images": len(members), "mapper": mapper,
            "cameras": cameras, "escalation": escalation, "merged": merged,
            "models": len(models),
            "model_sizes": "+".join(str(m.num_registered) for m in models),
            "registered": registered, "unregistered": len(members) - registered,
            "clusters": " ".join(cluster_name(k) for k in clusters),
            "seconds": round(seconds, 3)}


def _scene_predictions(dataset: str, members: list[str], models: list[Model],
                       first_cluster: int, unregistered: str
                       ) -> tuple[dict[str, PosePrediction], int]:
    """Predictions for the images of one scene, whose models (largest first) become clusters
    ``first_cluster``, ``first_cluster + 1``, ...; and the next free cluster index."""
    registered = poses_for_images(models, members)
    names = [cluster_name(first_cluster + k) for k in range(len(models))]
    # With the "nan" policy unregistered images stay with the scene's largest model (or
    # form the scene's cluster when SfM found none).
    fallback = names[0] if names else cluster_name(first_cluster)
    next_cluster = first_cluster + (len(names) if names else int(unregistered == "nan"))
    predictions = {}
    for image in members:
        if image in registered:
            model_index, R_cw, t_cw = registered[image]
            predictions[image] = PosePrediction(dataset, image, names[model_index], R_cw, t_cw)
        else:
            scene = fallback if unregistered == "nan" else OUTLIER_SCENE
            predictions[image] = _nan_pose(dataset, image, scene)
    return predictions, next_cluster


def run_geometric(test_images: pd.DataFrame, image_root: Path, conf: GeometricConf,
                  cache_root: Path, overwrite: bool = False,
                  backbone_features: np.ndarray | None = None,
                  outlier_prob: np.ndarray | None = None,
                  outlier_threshold: float = OUTLIER_THRESHOLD,
                  ) -> tuple[list[PosePrediction], pd.DataFrame, pd.DataFrame]:
    """All datasets of ``test_images`` (columns dataset, image), in ``conf.workers``
    processes (see :func:`dataset_workers`) or one after the other.

    ``backbone_features`` / ``outlier_prob`` are row-aligned with ``test_images`` (hybrid).
    Returns the predictions in row order, a table of seconds per stage per dataset, and a
    table of what SfM made of each match-graph scene (one row per scene, :func:`_sfm_row`),
    both in dataset order whatever order the datasets finish in.
    """
    jobs = []
    for dataset, group in test_images.groupby("dataset", sort=False):
        rows_idx = test_images.index.get_indexer(group.index)
        images = list(group["image"])
        excluded = set()
        if outlier_prob is not None:
            excluded = {im for im, p in zip(images, outlier_prob[rows_idx]) if p > outlier_threshold}
        feats = backbone_features[rows_idx] if backbone_features is not None else None
        jobs.append((dataset, Path(image_root) / dataset, images, conf,
                     Path(cache_root) / dataset, overwrite, feats, excluded))
    outcomes = _run_jobs(jobs, dataset_workers(conf, len(jobs)))

    predictions: dict[tuple[str, str], PosePrediction] = {}
    rows, sfm_rows = [], []
    for job, (preds, timings, scenes) in zip(jobs, outcomes):
        sfm_rows += scenes
        for p in preds:
            predictions[(p.dataset, p.image)] = p
        rows.append({"dataset": job[0], "images": len(job[2]), **timings})
    ordered = [predictions[(d, i)] for d, i in zip(test_images["dataset"], test_images["image"])]
    sfm_table = pd.DataFrame(sfm_rows, columns=SFM_COLUMNS)
    return ordered, pd.DataFrame(rows).fillna(0.0), sfm_table


# =========================================================================== dataset workers
def _torch_devices(conf: GeometricConf) -> set[str]:
    """The devices of the stages torch runs (learned features, LightGlue, DINOv2); empty
    when none does."""
    devices = []
    if conf.features.learned:
        devices.append(conf.features.device)
    if conf.matching.matcher == "lightglue":
        devices.append(conf.matching.device)
    if conf.retrieval in DINOV2_RETRIEVALS:
        devices.append(conf.dinov2.device)
    if not devices:
        return set()
    from src.geometric.torch_compat import torch_device
    return {torch_device(device) for device in devices}


def _uses_cuda(conf: GeometricConf) -> bool:
    """True when a stage run by torch runs on CUDA."""
    return "cuda" in _torch_devices(conf)


def dataset_workers(conf: GeometricConf, datasets: int) -> int:
    """Processes for ``datasets`` datasets: ``conf.workers``, or for 0 one per
    DATASET_WORKER_CORES available cores (a dataset keeps two busy by itself), and one
    where a torch stage (learned features, LightGlue, DINOv2) runs on CUDA (its single GPU
    would be shared by processes each holding the networks and a CUDA context, while the
    GPU stages already take milliseconds); never more than the
    datasets, at least one; one when this program cannot start processes
    (concurrency.spawn_possible)."""
    workers = conf.workers
    if workers == 0:
        workers = 1 if _uses_cuda(conf) else available_cores() // DATASET_WORKER_CORES
    workers = max(1, min(workers, datasets))
    return workers if workers == 1 or spawn_possible() else 1


def _run_jobs(jobs: list[tuple], workers: int) -> list[tuple]:
    """:func:`reconstruct_dataset` of each job's arguments, results in job order: here, one
    after the other, when ``workers`` is 1; else in that many processes.

    The processes are spawned (not forked: torch and OpenCV keep thread pools a fork would
    copy half-alive), each with cores // workers threads for OpenCV, BLAS and torch, and
    with CUDA each limited to 1 / workers of the GPU's memory. Their log records come back
    through a queue and are handled by this process's loggers, so they reach the run log
    and the terminal as they happen. One line per dataset done. A dataset's exception is
    logged with its name and raised here; the datasets not yet started are cancelled.
    """
    total = len(jobs)
    if workers <= 1:
        outcomes = []
        for done, job in enumerate(jobs, start=1):
            started = time.perf_counter()
            outcomes.append(_named_failure(job[0], reconstruct_dataset, *job))
            log.info("dataset %s done in %.1f s (%d/%d)", job[0],
                     time.perf_counter() - started, done, total)
        return outcomes

    threads = max(1, available_cores() // workers)
    conf = jobs[0][3]
    uses_torch = bool(_torch_devices(conf))
    gpu_share = 1.0 / workers if _uses_cuda(conf) else None
    log.info("%d datasets in %d worker processes, %d thread(s) each%s", total, workers,
             threads, f", {gpu_share:.0%} of the GPU's memory each" if gpu_share else "")
    context = multiprocessing.get_context("spawn")
    records = context.Queue()
    listener = logging.handlers.QueueListener(records, _HandledHere())
    listener.start()
    outcomes: list = [None] * total
    try:
        # the datasets not finished yet: as the last ones run, each busy worker takes more
        # threads for its side-by-side work (concurrency.share_cores)
        unfinished = context.Value("i", total)
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                                 initargs=(records, logging.getLogger().getEffectiveLevel(),
                                           threads, uses_torch, gpu_share,
                                           (unfinished, workers, available_cores()))) as pool:
            started = time.perf_counter()
            futures = {pool.submit(_timed_job, *job): k for k, job in enumerate(jobs)}
            try:
                for done, future in enumerate(as_completed(futures), start=1):
                    k = futures[future]
                    outcomes[k], seconds = _named_failure(jobs[k][0], future.result)
                    log.info("dataset %s done in %.1f s (%d/%d, %.1f s since the start)",
                             jobs[k][0], seconds, done, total, time.perf_counter() - started)
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    finally:
        listener.stop()  # handles what the queue still holds first
        records.close()
    return outcomes


def _named_failure(dataset: str, fn, *args):
    """``fn(*args)``; an exception is logged with the dataset's name, then raised."""
    try:
        return fn(*args)
    except Exception as error:
        log.error("dataset %s failed: %s: %s", dataset, type(error).__name__, error)
        error.add_note(f"(while reconstructing dataset {dataset!r})")
        raise


def _timed_job(*job) -> tuple[tuple, float]:
    """In a worker: :func:`reconstruct_dataset` of one job and its wall seconds."""
    started = time.perf_counter()
    try:
        outcome = reconstruct_dataset(*job)
    finally:
        dataset_finished()
    return outcome, time.perf_counter() - started


def _start_worker(records, level: int, threads: int, uses_torch: bool,
                  gpu_share: float | None, sharing: tuple) -> None:
    """A worker's set-up: logging into the parent's queue, its share of the threads (and
    of the GPU's memory), and log lines for progress (bars of several processes would
    overwrite each other on one terminal)."""
    import cv2
    from threadpoolctl import threadpool_limits

    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(logging.handlers.QueueHandler(records))
    root.setLevel(level)
    log_lines_only()
    cv2.setNumThreads(threads)
    share_cores(*sharing)  # what this process's stages may run side by side
    threadpool_limits(threads)  # BLAS and OpenMP, for the rest of the process
    if uses_torch:
        import torch
        torch.set_num_threads(threads)
        if gpu_share is not None:
            torch.cuda.set_per_process_memory_fraction(gpu_share)


class _HandledHere(logging.Handler):
    """Hands a worker's log record to this process's logger of the same name, so it goes
    where a record of this process would (run log, terminal, pytest's capture)."""

    def emit(self, record: logging.LogRecord) -> None:
        logging.getLogger(record.name).handle(record)


def predict_geometric(test_images: pd.DataFrame, image_root: Path, conf: GeometricConf,
                      run_dir: Path, overwrite: bool = False, hints=None,
                      outlier_threshold: float = OUTLIER_THRESHOLD,
                      ) -> tuple[list[PosePrediction], pd.DataFrame]:
    """The geometric pipeline as a run stage: :func:`run_geometric` with its caches in
    ``run_dir/geometric``, writing ``timings_geometric.csv``, ``sfm_scenes.csv`` (per
    match-graph scene: mapper, models, registered images, clusters) and
    ``predictions_test.csv``.

    ``hints`` (hybrid) is the learned model's prediction for ``test_images`` (row-aligned):
    its ``features`` choose the pairs and its table's ``outlier_prob`` above
    ``outlier_threshold`` removes images before matching. Returns the submission rows and
    the pose table (with ``scene``). main.py and the viewer's uploads both run this.
    """
    predictions, stage_seconds, sfm_scenes = run_geometric(
        test_images, image_root, conf, Path(run_dir) / "geometric", overwrite,
        backbone_features=hints.features if hints is not None else None,
        outlier_prob=hints.table["outlier_prob"].to_numpy() if hints is not None else None,
        outlier_threshold=outlier_threshold)
    write_csv_atomic(stage_seconds, Path(run_dir) / "timings_geometric.csv")
    write_csv_atomic(sfm_scenes, Path(run_dir) / "sfm_scenes.csv")
    table = pose_table(predictions)
    write_csv_atomic(table, Path(run_dir) / "predictions_test.csv")
    return predictions, table
