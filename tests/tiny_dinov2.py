"""A tiny randomly initialised DINOv2 saved the way Kaggle's transformers models are laid out
(config.json + model.safetensors, or + pytorch_model.bin): what the retrieval tests attach
instead of real weights, which they never download."""

from __future__ import annotations

from pathlib import Path

# Small enough to build and run in well under a second: 32-d tokens, two layers, 14-px
# patches of a 56-px image (16 patches).
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            patch_size=14, image_size=56)
TINY_SIDE = 56  # the input side the tests run it at (Config.retrieval_image_side)


def save_tiny_dinov2(folder: Path, weights_format: str = "safetensors", seed: int = 0) -> Path:
    """Write the model into ``folder`` with its weights as ``model.safetensors`` or
    ``pytorch_model.bin`` (``weights_format`` "safetensors" or "bin"); returns ``folder``.
    The same seed gives the same weights in either format."""
    import torch

    from src.geometric.torch_compat import stand_in_hidden

    # As in src.geometric.retrieval: an earlier test may have registered the torchvision
    # stand-in, which transformers' import cannot take.
    with stand_in_hidden():
        from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    model = Dinov2Model(Dinov2Config(**TINY)).eval()
    folder = Path(folder)
    if weights_format == "safetensors":
        model.save_pretrained(folder)
    elif weights_format == "bin":
        # transformers 5 saves safetensors only; older exports (and some Kaggle uploads)
        # carry a pickled state dict, which it still loads.
        model.config.save_pretrained(folder)
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    else:
        raise ValueError(f"weights_format must be 'safetensors' or 'bin', got {weights_format!r}")
    return folder
