"""The torchvision stand-in against real torchvision outputs recorded in a fixture."""
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from src.geometric.torch_compat import deform_conv2d, ensure_torchvision  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "torch" / "deform_conv2d_torchvision.npz"


@pytest.mark.parametrize("case", [0, 1, 2])
def test_deform_conv2d_matches_recorded_torchvision(case):
    # Recorded with torchvision 0.29.1 (offsets up to ~8 px, some taps fall outside the image).
    data = np.load(FIXTURE)
    arg = lambda k: torch.from_numpy(data[f"case{case}/{k}"])  # noqa: E731
    mask = arg("mask") if f"case{case}/mask" in data.files else None
    got = deform_conv2d(arg("x"), arg("off"), arg("w"), arg("b"),
                        stride=int(data[f"case{case}/stride"]),
                        padding=int(data[f"case{case}/padding"]), mask=mask)
    np.testing.assert_allclose(got.numpy(), data[f"case{case}/y"], atol=1e-4, rtol=1e-4)


def test_zero_offsets_reduce_to_plain_convolution():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 3, 8, 7, generator=gen)
    weight = torch.randn(4, 3, 3, 3, generator=gen)
    bias = torch.randn(4, generator=gen)
    offset = torch.zeros(1, 18, 8, 7)
    got = deform_conv2d(x, offset, weight, bias, padding=1)
    want = torch.nn.functional.conv2d(x, weight, bias, padding=1)
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5)


def test_ensure_torchvision_gives_a_usable_module():
    ensure_torchvision()
    import torchvision
    from torchvision.models import resnet
    assert callable(torchvision.ops.deform_conv2d)
    assert resnet.conv3x3(2, 3).kernel_size == (3, 3)
    assert resnet.conv1x1(2, 3).kernel_size == (1, 1)
