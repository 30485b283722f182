"""DINOv2 global descriptors for pair selection, from a model folder attached offline.

A stage of the geometric pipeline between features and matching: each image becomes one
vector, and ``src.geometric.pairs.select_pairs`` pairs every image with its nearest
neighbours by it (alone, or joined with VLAD's neighbours). The model is a Hugging Face
``transformers`` DINOv2 in the layout of Kaggle's ``metaresearch/dinov2`` models (variant
"transformers"): ``config.json`` beside ``model.safetensors`` or ``pytorch_model.bin``. It is
loaded from that folder only, never from the network, and ``transformers`` is imported only
when descriptors are computed (``--help`` and VLAD runs never load it).

Descriptor of an image, float32 (2·hidden,), unit length (1536 values for DINOv2 base): the
last layer's class token and the mean of its patch tokens, each L2-normalised, then
concatenated; the concatenation of the two is what the DINOv2 paper's linear probes read.
The image goes in whole, squashed to ``image_side`` x ``image_side`` pixels (a centre crop
would drop the borders that a neighbouring view may share; one shape for all images lets
them go through in batches), RGB scaled to [0, 1] and normalised with ImageNet's mean and
standard deviation, as in DINOv2's training.

Descriptors are cached per dataset in one ``.npz`` file (names, descriptors, the
configuration as JSON), named by ``Dinov2Conf.cache_key()``; images already there are not
computed again unless ``overwrite``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import numbers
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from config import ConfigError
from src.data_io import DataError, atomic_path, read_image_rgb
from src.geometric.options import DINOV2_IMAGE_SIDE, TORCH_DEVICES, check_choices
from src.geometric.pairs import normalise_descriptors
from src.progress import progress

log = logging.getLogger(__name__)

__all__ = ["Dinov2Conf", "dinov2_descriptors", "model_folder", "ATTACH_HINT"]

CONFIG_FILE = "config.json"
# The weights files transformers loads from a folder, in its order of preference; an index
# file names the shards of a model saved in several pieces.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
MODEL_TYPES = ("dinov2", "dinov2_with_registers")  # config.json's model_type
ATTACH_HINT = ("attach a DINOv2 model in Hugging Face transformers format, e.g. the Kaggle "
               "model metaresearch/dinov2 (framework Transformers, variation base), and pass "
               "the folder that holds its config.json and model.safetensors, e.g. "
               "--retrieval-weights /kaggle/input/dinov2/transformers/base/1")
# DINOv2 was trained on RGB images in [0, 1] normalised with ImageNet's channel statistics.
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


# =========================================================================== configuration
@dataclass(frozen=True)
class Dinov2Conf:
    """How to compute DINOv2 descriptors. ``cache_key()`` names the cache file."""

    weights: str = ""  # model folder: config.json + model.safetensors or pytorch_model.bin
    image_side: int = DINOV2_IMAGE_SIDE  # square input side, px, rounded down to whole patches
    batch_size: int = 16  # images per forward pass: memory, not results
    device: str = "auto"  # torch device: auto (CUDA if present), cpu, cuda

    def __post_init__(self) -> None:
        check_choices(self, {"device": TORCH_DEVICES})
        for name in ("image_side", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"Dinov2Conf.{name} must be an integer >= 1, got {value!r}")
            object.__setattr__(self, name, int(value))  # plain int, so it goes into JSON

    def to_json(self) -> str:
        """What the descriptors depend on, as canonical JSON (sorted keys): the model folder,
        its config.json's hash and its weights files' sizes (hashing the weights would read
        hundreds of MB a run), and the image side. Not the device nor the batch size, which
        change rounding only. FileNotFoundError (see :func:`model_folder`) without a model."""
        folder = model_folder(self.weights)
        sizes = {name: (folder / name).stat().st_size for name in WEIGHT_FILES
                 if (folder / name).is_file()}
        config_sha1 = hashlib.sha1((folder / CONFIG_FILE).read_bytes()).hexdigest()
        return json.dumps({"weights": str(folder.resolve()), "config_sha1": config_sha1,
                           "weight_sizes": sizes, "image_side": self.image_side},
                          sort_keys=True)

    def cache_key(self) -> str:
        """Short stable name for file names, e.g. ``dinov2-224-3f9a1c2b``: the image side,
        then a hash of :meth:`to_json`."""
        digest = hashlib.sha1(self.to_json().encode()).hexdigest()[:8]
        return f"dinov2-{self.image_side}-{digest}"


def model_folder(weights: str | os.PathLike) -> Path:
    """``weights`` as the folder of a transformers model, checked: FileNotFoundError naming
    what is missing (the folder, its config.json or its weights file) and what to attach."""
    if not str(weights):
        raise FileNotFoundError(f"DINOv2 retrieval needs its model folder "
                                f"(--retrieval-weights DIR); {ATTACH_HINT}")
    folder = Path(weights)
    if not folder.is_dir():
        raise FileNotFoundError(f"DINOv2 model folder not found: {folder}; {ATTACH_HINT}")
    if not (folder / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{folder} has no {CONFIG_FILE}, so it is not a transformers "
                                f"model folder{_nested_models(folder)}; {ATTACH_HINT}")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise FileNotFoundError(f"{folder} has {CONFIG_FILE} but no weights file "
                                f"({' or '.join(WEIGHT_FILES)}); {ATTACH_HINT}")
    return folder


def _nested_models(folder: Path) -> str:
    """A hint naming model folders up to three levels below ``folder``: Kaggle mounts a model
    at ``/kaggle/input/<model>/<framework>/<variation>/<version>``, and the folder one
    passes is easily a level or three too high."""
    found = sorted(str(p.parent) for depth in (1, 2, 3)
                   for p in folder.glob("/".join(["*"] * depth + [CONFIG_FILE])))
    if not found:
        return ""
    return f" (but {', '.join(found[:3])}{' ...' if len(found) > 3 else ''} " \
           f"{'is one' if len(found) == 1 else 'are'}: pass that folder)"


# =========================================================================== descriptors
def dinov2_descriptors(image_dir: str | os.PathLike, names: list[str], conf: Dinov2Conf,
                       cache_path: str | os.PathLike | None = None,
                       overwrite: bool = False) -> np.ndarray:
    """(len(names), 2·hidden) float32 DINOv2 descriptors of the images ``image_dir/name``,
    unit rows in the order of ``names`` (see the module doc).

    An image that cannot be read gets a zero row (and a warning naming it), as VLAD gives
    an image without features; it is not cached, so a later run tries it again.
    ``cache_path`` (optional): the ``.npz`` cache; rows of images already there (with the
    same :meth:`Dinov2Conf.to_json`) are reused unless ``overwrite``. Raises
    FileNotFoundError for a missing model folder or file, ImportError without
    transformers, config.ConfigError for a model that is not a DINOv2.
    """
    folder = model_folder(conf.weights)
    config = conf.to_json()
    image_dir = Path(image_dir)
    cached = {} if overwrite or cache_path is None else _read_cache(Path(cache_path), config)
    todo = [name for name in dict.fromkeys(names) if name not in cached]
    if todo:
        computed, width = _compute(image_dir, todo, conf, folder)
        cached.update(computed)
        if cache_path is not None:
            _write_cache(Path(cache_path), config, cached)
    else:
        width = next(iter(cached.values())).shape[0] if cached else 0
    if not names:
        return np.zeros((0, width), np.float32)
    return np.stack([cached[name] for name in names]).astype(np.float32)


def _compute(image_dir: Path, names: list[str], conf: Dinov2Conf, folder: Path
             ) -> tuple[dict[str, np.ndarray], int]:
    """Descriptors of ``names`` ({name: (2·hidden,) float32}, zero rows for unreadable
    images) and their width."""
    from src.geometric.torch_compat import torch_device

    device = torch_device(conf.device)
    network, patch_size, first_patch = _load_network(str(folder.resolve()), device)
    side = max(patch_size, conf.image_side // patch_size * patch_size)
    if side != conf.image_side:
        log.info("DINOv2 input side %d px rounded to %d, a multiple of its %d-px patches",
                 conf.image_side, side, patch_size)
    width = 2 * int(network.config.hidden_size)
    out: dict[str, np.ndarray] = {}
    pixels: dict[str, np.ndarray] = {}  # the batch being gathered
    for index, name in enumerate(progress(names, f"dinov2 {image_dir.name}", "image")):
        try:
            pixels[name] = _pixels(read_image_rgb(image_dir / name), side)
        except (OSError, DataError, cv2.error) as exc:
            log.warning("%s: cannot read the image (%s); its DINOv2 descriptor is zero",
                        image_dir / name, exc)
            out[name] = np.zeros(width, np.float32)
        if pixels and (len(pixels) == conf.batch_size or index == len(names) - 1):
            rows = _forward(network, device, np.stack(list(pixels.values())), first_patch)
            out.update(zip(pixels, rows))
            pixels = {}
    return out, width


def _pixels(image_rgb: np.ndarray, side: int) -> np.ndarray:
    """uint8 RGB (H, W, 3) -> float32 (3, side, side), ImageNet-normalised."""
    shrinking = image_rgb.shape[0] * image_rgb.shape[1] > side * side
    # INTER_AREA averages the pixels a shrunk one covers (no aliasing); it is blocky when
    # enlarging, where bilinear is smooth.
    resized = cv2.resize(image_rgb, (side, side),
                         interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    scaled = (resized.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(scaled.transpose(2, 0, 1))


def _forward(network, device: str, pixels: np.ndarray, first_patch: int) -> np.ndarray:
    """(B, 3, S, S) float32 -> (B, 2·hidden) float32 descriptors (see the module doc)."""
    import torch

    with torch.inference_mode():
        tokens = network(pixel_values=torch.from_numpy(pixels).to(device)).last_hidden_state
        class_token = tokens[:, 0].float().cpu().numpy()
        patch_mean = tokens[:, first_patch:].mean(dim=1).float().cpu().numpy()
    joined = np.concatenate([normalise_descriptors(class_token),
                             normalise_descriptors(patch_mean)], axis=1)
    return (joined / np.sqrt(2.0)).astype(np.float32)


@lru_cache(maxsize=1)
def _load_network(folder: str, device: str):
    """(network in eval mode on ``device``, patch size in px, index of the first patch
    token), loaded once per folder and device: the pipeline asks again for every dataset."""
    import torch

    from src.geometric.torch_compat import stand_in_hidden

    # transformers looks a name up on the hub unless it is told not to; ours is a local
    # folder (local_files_only), and offline mode keeps any other look-up off the network.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with stand_in_hidden():
        try:
            import transformers
        except ImportError as error:
            raise ImportError(f"DINOv2 retrieval needs the package transformers ({error}): "
                              "`pip install -r requirements.txt` installs it (Kaggle's "
                              "images have it)") from error
        # One log line says what was loaded (below); transformers' per-tensor bar would add
        # a line of its own to every run log.
        transformers.utils.logging.disable_progress_bar()
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
        if config.model_type not in MODEL_TYPES:
            raise ConfigError(f"{Path(folder) / CONFIG_FILE}: model_type "
                              f"{config.model_type!r} is not DINOv2 ({' or '.join(MODEL_TYPES)});"
                              f" {ATTACH_HINT}")
        # float32 whatever the file stores: the same descriptors on a CPU and a GPU.
        network = transformers.AutoModel.from_pretrained(folder, local_files_only=True,
                                                         dtype=torch.float32)
    first_patch = 1 + int(getattr(config, "num_register_tokens", 0) or 0)
    log.info("DINOv2 (%s, hidden %d, patch %d) from %s on %s", config.model_type,
             config.hidden_size, config.patch_size, folder, device)
    return network.eval().to(device), int(config.patch_size), first_patch


# =========================================================================== cache
def _read_cache(path: Path, config: str) -> dict[str, np.ndarray]:
    """{name: descriptor} from a cache written with ``config``; {} (and a log line) for a
    missing, unreadable or differently configured one."""
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["config"]) != config:
                log.info("%s was computed with another configuration; recomputing", path)
                return {}
            return dict(zip((str(n) for n in data["names"]), data["descriptors"]))
    except (OSError, ValueError, KeyError) as error:
        log.warning("%s cannot be read (%s); recomputing", path, error)
        return {}


def _write_cache(path: Path, config: str, descriptors: dict[str, np.ndarray]) -> None:
    """Write the readable images' descriptors (non-zero rows) atomically."""
    kept = {name: row for name, row in descriptors.items() if np.any(row)}
    width = next(iter(descriptors.values())).shape[0]
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, names=np.array(list(kept), dtype=str),
                 descriptors=np.array(list(kept.values()), np.float32).reshape(len(kept), width),
                 config=np.array(config))
