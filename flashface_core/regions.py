"""Where each identity's references act: region masks resampled to the latent and to every block's token grid.

Resampling is linear (area averaging when shrinking, bilinear when growing; both weigh their inputs with
weights that sum to 1), so regions that sum to 1 at one resolution sum to 1 at every resolution: two
complementary people stay complementary in every block.
"""

import torch.nn.functional as F


def resample_region(mask, height, width):
    """A [B, H, W] (or [B, 1, H, W]) mask in 0..1 at [B, height, width] (or [B, 1, height, width])."""
    grids = mask if mask.ndim == 4 else mask.unsqueeze(1)
    source_height, source_width = grids.shape[-2:]
    if (source_height, source_width) != (height, width):
        shrunk = (min(source_height, height), min(source_width, width))
        if shrunk != (source_height, source_width):
            grids = F.interpolate(grids.float(), size=shrunk, mode="area")
        if shrunk != (height, width):
            grids = F.interpolate(grids.float(), size=(height, width), mode="bilinear", align_corners=False)
    grids = grids.to(mask.dtype)
    return grids if mask.ndim == 4 else grids.squeeze(1)


def region_tokens(mask, height, width):
    """A [B, 1, h, w] region as one weight per query token of a height x width block: [B, height*width],
    in the row-major token order of ComfyUI's transformer blocks."""
    return resample_region(mask, height, width).flatten(1)
