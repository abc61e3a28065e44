"""The face-position mask: FlashFace's 5th U-Net input channel (official `demo_gradio.py`)."""

import torch
import torch.nn.functional as F

SHAPES = ("box", "official_square")
LATENT_STRIDE = 8


def face_position_mask(height, width, box, shape="box"):
    """A [height, width] 0/1 mask from a normalized box (x1, y1, x2, y2).

    'box' fills the box as drawn. 'official_square' reproduces the official demo:
    a square of side max(box width, box height) in pixels, anchored at the box's
    top-left corner and clipped by the image border. An all-zero box means "no
    position constraint" and gives an all-zero mask, as in the official code.
    """
    if shape not in SHAPES:
        raise ValueError(f"unknown mask shape {shape!r}; expected one of {SHAPES}")
    x1, y1, x2, y2 = (float(v) for v in box)
    if not (0 <= x1 <= x2 <= 1 and 0 <= y1 <= y2 <= 1):
        raise ValueError(f"box must satisfy 0 <= x1 <= x2 <= 1 and 0 <= y1 <= y2 <= 1, got {box}")
    left, top, right, bottom = int(x1 * width), int(y1 * height), int(x2 * width), int(y2 * height)
    mask = torch.zeros(height, width)
    if shape == "official_square":
        side = max(right - left, bottom - top)
        right, bottom = left + side, top + side
    mask[top:bottom, left:right] = 1.0
    return mask


def latent_mask(mask, latent_height, latent_width):
    """Bring a [B, H, W] pixel mask to latent size.

    At exactly 8x the latent size this is the official `mask[::8, ::8]`
    subsampling; other sizes are resampled with nearest-exact interpolation.
    """
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    height, width = mask.shape[-2:]
    if (height, width) == (latent_height, latent_width):
        return mask
    if (height, width) == (latent_height * LATENT_STRIDE, latent_width * LATENT_STRIDE):
        return mask[:, ::LATENT_STRIDE, ::LATENT_STRIDE]
    resized = F.interpolate(mask.unsqueeze(1).float(), size=(latent_height, latent_width), mode="nearest-exact")
    return resized.squeeze(1).to(mask.dtype)
