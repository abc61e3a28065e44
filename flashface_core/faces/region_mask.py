"""A soft mask over the detected face region(s) of an image."""
from __future__ import annotations

import numpy as np

from .types import Detector
from .references import largest_face


def box_blur(mask: np.ndarray, radius: int, axis: int) -> np.ndarray:
    """Mean over a window of 2*radius+1 along `axis`, edges replicated so a box touching the border stays 1 there."""
    padded = np.pad(mask, [(radius, radius) if a == axis else (0, 0) for a in range(mask.ndim)], mode="edge")
    summed = np.cumsum(padded, axis=axis, dtype=np.float64)
    summed = np.concatenate([np.zeros_like(summed.take([0], axis=axis)), summed], axis=axis)
    width = 2 * radius + 1
    upper = summed.take(np.arange(width, summed.shape[axis]), axis=axis)
    lower = summed.take(np.arange(0, summed.shape[axis] - width), axis=axis)
    return ((upper - lower) / width).astype(np.float32)


def face_region_mask(image: np.ndarray, detector: Detector, grow: int = 0, feather: int = 0,
                     which: str = "largest") -> np.ndarray:
    """float32 [H, W] in 0..1: 1 inside the face box(es) grown by `grow` px on every side, with a
    linear ramp `2*feather` px wide centred on the box edge (a box blur of radius `feather`)."""
    if which not in ("largest", "all"):
        raise ValueError(f"unknown face selection {which!r}; use 'largest' or 'all'")
    faces = detector.detect(image)
    if not faces:
        raise ValueError(f"no face found for the face mask (detector: {detector.name}); "
                         "use an image with a visible face or draw the mask by hand")
    height, width = image.shape[:2]
    mask = np.zeros((height, width), np.float32)
    for face in faces if which == "all" else [largest_face(faces)]:
        x1, y1, x2, y2 = np.round(np.array(face.box) + [-grow, -grow, grow, grow]).astype(int)
        mask[max(y1, 0):max(y2, 0), max(x1, 0):max(x2, 0)] = 1.0
    if feather > 0:
        mask = box_blur(box_blur(mask, feather, 0), feather, 1)
    return np.clip(mask, 0.0, 1.0)
