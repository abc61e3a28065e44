"""Faces at any size: a square crop around a face at SD resolution, and the repaint stitched back.

A face of 150 px in a 3000 px photo is cut out with context, scaled to `size` (512) for the sampler, and
the repaint is scaled back and blended into the photo through the face mask. Nothing of the photo outside
the crop goes through the VAE or the U-Net, and pixels outside the mask's support are not touched.
Images are ComfyUI's [B, H, W, C] floats in 0..1, masks [B, H, W].
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .region_mask import feathered

SHAPES = ("ellipse", "box")
BLENDS = ("change", "replace")


@dataclass(frozen=True)
class Placement:
    """Where a crop was cut from its image: a square of `side` original pixels at (left, top)."""

    left: int
    top: int
    side: int


@dataclass(frozen=True, eq=False)
class FaceCrops:
    """What FaceStitch needs to put the repaint back (one FACE_CROP for a batch of images)."""

    height: int  # the original images' size
    width: int
    placements: tuple  # one Placement per image; None: that image was passed through untouched
    crops: torch.Tensor  # [B, size, size, C] the crops as cut: the repaint is applied as its change to them
    masks: torch.Tensor  # [B, size, size] the face masks in crop coordinates

    @property
    def size(self) -> int:
        return self.crops.shape[1]


def square_placement(box, context: float, height: int, width: int) -> Placement:
    """A square of `context` times the box's longer side, centred on the box, kept inside the image by
    shifting it (never padded); a square larger than the image's shorter side is shrunk to that side."""
    x1, y1, x2, y2 = box
    side = int(round(context * max(x2 - x1, y2 - y1)))
    side = max(1, min(side, height, width))
    left = int(round((x1 + x2) / 2 - side / 2))
    top = int(round((y1 + y2) / 2 - side / 2))
    return Placement(min(max(left, 0), width - side), min(max(top, 0), height - side), side)


def resample(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[B, H, W, C] (or masks [B, H, W]) to height x width: area averaging down, bicubic up, clamped to 0..1
    (bicubic overshoots); the same size is returned as is."""
    if images.shape[1:3] == (height, width):
        return images
    channels_last = images.ndim == 4
    planes = images.movedim(-1, 1) if channels_last else images.unsqueeze(1)
    if height <= planes.shape[2] and width <= planes.shape[3]:
        out = F.interpolate(planes.float(), size=(height, width), mode="area")
    else:
        out = F.interpolate(planes.float(), size=(height, width), mode="bicubic", align_corners=False)
    out = out.clamp(0, 1).to(images.dtype)
    return out.movedim(1, -1) if channels_last else out.squeeze(1)


def mask_box(mask: torch.Tensor):
    """The box (x1, y1, x2, y2), right/bottom exclusive, of a [H, W] mask's nonzero pixels; None if it has none."""
    rows = torch.nonzero(mask.amax(dim=1) > 0).flatten()
    cols = torch.nonzero(mask.amax(dim=0) > 0).flatten()
    if rows.numel() == 0:
        return None
    return float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)


def crop_face_mask(box, placement: Placement, size: int, shape: str = "ellipse", grow: int = 0,
                   feather: int = 0) -> torch.Tensor:
    """[size, size] mask of the face box in crop pixels: the box (or the ellipse inscribed in it), grown by
    `grow` crop pixels on every side, feathered by `feather` crop pixels."""
    if shape not in SHAPES:
        raise ValueError(f"unknown mask shape {shape!r}; use one of {SHAPES}")
    scale = size / placement.side
    x1, y1, x2, y2 = ((v - offset) * scale for v, offset in zip(box, (placement.left, placement.top) * 2))
    x1, y1, x2, y2 = x1 - grow, y1 - grow, x2 + grow, y2 + grow
    centres = np.arange(size, dtype=np.float32) + 0.5
    inside_x = (centres >= x1) & (centres < x2)
    inside_y = (centres >= y1) & (centres < y2)
    if shape == "box":
        mask = (inside_y[:, None] & inside_x[None, :]).astype(np.float32)
    else:
        radius_x, radius_y = max((x2 - x1) / 2, 0.5), max((y2 - y1) / 2, 0.5)
        dx = (centres[None, :] - (x1 + x2) / 2) / radius_x
        dy = (centres[:, None] - (y1 + y2) / 2) / radius_y
        mask = (dx * dx + dy * dy <= 1).astype(np.float32)
    return torch.from_numpy(feathered(mask, feather))


def cut(image: torch.Tensor, placement: Placement, size: int) -> torch.Tensor:
    """The [size, size, C] crop of one [H, W, C] image."""
    p = placement
    return resample(image[None, p.top:p.top + p.side, p.left:p.left + p.side], size, size)[0]


def crop_faces(images: torch.Tensor, boxes, context: float, size: int, shape: str = "ellipse", grow: int = 0,
               feather: int = 0) -> FaceCrops:
    """Cut one square per image around its box (`square_placement`) with its face mask (`crop_face_mask`);
    a box None gives a centred square and an empty mask: that image is passed through."""
    height, width = images.shape[1:3]
    placements, crops, masks = [], [], []
    for image, box in zip(images, boxes):
        if box is None:  # the centred square of the shorter side, so the crops still make one batch
            placement = square_placement((0, 0, width, height), 1.0, height, width)
        else:
            placement = square_placement(box, context, height, width)
        crops.append(cut(image, placement, size))
        masks.append(torch.zeros(size, size) if box is None
                     else crop_face_mask(box, placement, size, shape, grow, feather))
        placements.append(None if box is None else placement)
    return FaceCrops(height, width, tuple(placements), torch.stack(crops), torch.stack(masks).to(images.device))


def check_stitch_inputs(record: FaceCrops, images: torch.Tensor, repaints: torch.Tensor, masks):
    """ValueError naming the input ('image', 'crops', 'mask') that does not fit the FACE_CROP."""
    batch, size = len(record.placements), record.size
    if tuple(images.shape[:3]) != (batch, record.height, record.width):
        raise ValueError(f"image: {images.shape[0]} image(s) of {images.shape[2]}x{images.shape[1]}, but face_crop "
                         f"was made from {batch} image(s) of {record.width}x{record.height}; connect the image that "
                         "went into FaceCrop (or the FaceStitch before it)")
    if images.shape[3] != record.crops.shape[3]:
        raise ValueError(f"image: {images.shape[3]} channels, but face_crop was made from {record.crops.shape[3]}")
    if repaints.shape[3] != images.shape[3]:
        raise ValueError(f"crops: {repaints.shape[3]} channels, but image has {images.shape[3]}; give both as RGB")
    if tuple(repaints.shape[1:3]) != (size, size) or repaints.shape[0] not in (1, batch):
        raise ValueError(f"crops: {repaints.shape[0]} image(s) of {repaints.shape[2]}x{repaints.shape[1]}, but "
                         f"face_crop holds {batch} crop(s) of {size}x{size}; connect the repainted crops "
                         "(VAEDecode of the sampled crop latent)")
    if masks is not None and (tuple(masks.shape[1:]) != (size, size) or masks.shape[0] not in (1, batch)):
        raise ValueError(f"mask: {masks.shape[0]} mask(s) of {masks.shape[2]}x{masks.shape[1]}, but the crops are "
                         f"{size}x{size} ({batch} of them); connect a mask in crop coordinates (FaceCrop's mask)")


def stitch(record: FaceCrops, images: torch.Tensor, repaints: torch.Tensor, masks=None, feather: int = 0,
           blend: str = "change") -> torch.Tensor:
    """The images with each repaint scaled back into its square and blended through its mask (FaceCrop's
    unless `masks` is given, feathered by a further `feather` crop pixels).

    'change' adds the repaint's change to the crop (image + mask * (repaint - crop), both scaled back): what the
    sampler left alone keeps the photo's own pixels, detail finer than the crop included, and a repaint equal
    to the crop gives the image back bit-exact. 'replace' puts the scaled repaint itself inside the mask.
    Pixels where the scaled mask is 0 are the input's, bit-identical. The inputs are not changed."""
    if blend not in BLENDS:
        raise ValueError(f"unknown blend {blend!r}; use one of {BLENDS}")
    check_stitch_inputs(record, images, repaints, masks)
    masks = record.masks if masks is None else masks
    out = images.clone()
    for index, placement in enumerate(record.placements):
        if placement is None:
            continue
        mask = masks[index if masks.shape[0] > 1 else 0].float().clamp(0, 1)
        mask = torch.from_numpy(feathered(mask.cpu().numpy(), feather)).to(images.device)
        p = placement
        region = images[index, p.top:p.top + p.side, p.left:p.left + p.side]
        alpha = resample(mask[None], p.side, p.side)[0, ..., None].to(images.dtype)
        repaint = resample(repaints[index if repaints.shape[0] > 1 else 0][None].to(images), p.side, p.side)[0]
        if blend == "change":
            crop = resample(record.crops[index][None].to(images), p.side, p.side)[0]
            blended = region + alpha * (repaint - crop)
        else:
            blended = region + alpha * (repaint - region)
        out[index, p.top:p.top + p.side, p.left:p.left + p.side] = torch.where(
            alpha > 0, blended.clamp(0, 1), region)
    return out
