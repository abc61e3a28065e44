"""A soft mask over a detected face of an image (or all of them), or over the person around that face."""
from __future__ import annotations

import numpy as np

from .types import Detector, Face

ORDERS = ("largest_first", "left_to_right")
AREAS = ("face", "person")
# A person around a face box, in face sizes: a head-and-shoulders-to-waist figure is about three heads
# wide, and the body reaches six face heights below the chin; half a face height above covers the hair.
PERSON_WIDTH, PERSON_ABOVE, PERSON_BELOW = 3.0, 0.5, 6.0


def box_blur(mask: np.ndarray, radius: int, axis: int) -> np.ndarray:
    """Mean over a window of 2*radius+1 along `axis`, edges replicated so a box touching the border stays 1 there."""
    padded = np.pad(mask, [(radius, radius) if a == axis else (0, 0) for a in range(mask.ndim)], mode="edge")
    summed = np.cumsum(padded, axis=axis, dtype=np.float64)
    summed = np.concatenate([np.zeros_like(summed.take([0], axis=axis)), summed], axis=axis)
    width = 2 * radius + 1
    upper = summed.take(np.arange(width, summed.shape[axis]), axis=axis)
    lower = summed.take(np.arange(0, summed.shape[axis] - width), axis=axis)
    return ((upper - lower) / width).astype(np.float32)


def feathered(mask: np.ndarray, feather: int) -> np.ndarray:
    """A linear ramp 2*feather px wide centred on the mask's edge (a box blur along each axis)."""
    if feather <= 0:
        return mask
    return np.clip(box_blur(box_blur(mask, feather, 0), feather, 1), 0.0, 1.0)


def select_face(faces: list[Face], face_index: int = 0, order: str = "largest_first") -> Face:
    """The `face_index`-th face (from 0) counting largest first or by box centre from left to right."""
    if order not in ORDERS:
        raise ValueError(f"unknown face order {order!r}; use one of {ORDERS}")
    if order == "largest_first":
        ordered = sorted(faces, key=lambda face: -face.area)
    else:
        ordered = sorted(faces, key=lambda face: face.box[0] + face.box[2])
    if not 0 <= face_index < len(ordered):
        raise ValueError(f"face_index {face_index} asks for face {face_index + 1} ({order}), but "
                         f"{len(ordered)} face(s) were found; faces count from 0")
    return ordered[face_index]


def person_box(box):
    """The box of the person around a face box (x1, y1, x2, y2): PERSON_WIDTH face widths wide, centred
    on the face, from PERSON_ABOVE face heights above it to PERSON_BELOW below it (not clipped)."""
    x1, y1, x2, y2 = box
    centre, width, height = (x1 + x2) / 2, x2 - x1, y2 - y1
    return (centre - PERSON_WIDTH * width / 2, y1 - PERSON_ABOVE * height,
            centre + PERSON_WIDTH * width / 2, y2 + PERSON_BELOW * height)


def face_region_mask(image: np.ndarray, detector: Detector, grow: int = 0, feather: int = 0, which: str = "one",
                     face_index: int = 0, order: str = "largest_first", area: str = "face") -> np.ndarray:
    """float32 [H, W] in 0..1: 1 inside the box of one face (`select_face`) or of all faces, or of the
    person around it (`area` 'person'), grown by `grow` px on every side, with a linear ramp
    `2*feather` px wide centred on the box edge (a box blur of radius `feather`)."""
    if which not in ("one", "all") or area not in AREAS:
        raise ValueError(f"unknown face selection {which!r} or area {area!r}; use 'one'/'all' and one of {AREAS}")
    faces = detector.detect(image)
    if not faces:
        raise ValueError(f"no face found for the face mask (detector: {detector.name}); "
                         "use an image with a visible face or draw the mask by hand")
    height, width = image.shape[:2]
    mask = np.zeros((height, width), np.float32)
    for face in faces if which == "all" else [select_face(faces, face_index, order)]:
        box = person_box(face.box) if area == "person" else face.box
        x1, y1, x2, y2 = np.round(np.array(box) + [-grow, -grow, grow, grow]).astype(int)
        mask[max(y1, 0):max(y2, 0), max(x1, 0):max(x2, 0)] = 1.0
    return feathered(mask, feather)
