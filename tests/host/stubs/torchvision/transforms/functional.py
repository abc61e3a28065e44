"""to_pil_image / to_tensor for float images, as torchvision computes them (Inpaint-CropAndStitch resizes
through them); nothing else of torchvision.transforms.functional."""

import numpy as np
import torch
from PIL import Image

_CHANNELS = (1, 3, 4)  # L, RGB, RGBA


def to_pil_image(pic):
    """A [C, H, W] or [H, W] float tensor in 0..1 as a PIL image (255·x truncated to uint8, as torchvision)."""
    if pic.ndim == 2:
        pic = pic.unsqueeze(0)
    if pic.shape[0] not in _CHANNELS:
        raise ValueError(f"to_pil_image: {pic.shape[0]} channels are not supported by this stand-in")
    array = pic.mul(255).byte().permute(1, 2, 0).numpy()
    return Image.fromarray(array[:, :, 0] if pic.shape[0] == 1 else array)


def to_tensor(image):
    """A PIL image as a [C, H, W] float tensor in 0..1."""
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div(255)

