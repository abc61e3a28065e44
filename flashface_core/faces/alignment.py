"""Reference-face crops exactly as FlashFace makes them (spec §3.2-3.3).

The official pipeline crops the detector box (rounded, no margin), levels the eyes with an
in-plane rotation of that crop, and letterboxes it to 224x224 with PadToSquare.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image

from .types import Face


def resize_longer_side(image: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """Scale so the longer side is `size`, with Python's round (half to even) and PIL's bicubic
    filter, as the official PadToSquare does. Returns the image and the scale factor."""
    height, width = image.shape[:2]
    scale = size / max(width, height)
    new_size = (round(width * scale), round(height * scale))
    return np.asarray(Image.fromarray(image).resize(new_size, Image.BICUBIC)), scale


def letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, float, tuple[int, int]]:
    """FlashFace's PadToSquare: scale the longer side to `size`, pad black, centred.

    Returns the square image, the scale factor and the (left, top) padding, so that detections on
    the square map back with `(p - offset) / scale`.
    """
    resized, scale = resize_longer_side(image, size)
    new_h, new_w = resized.shape[:2]
    left, top = (size - new_w) // 2, (size - new_h) // 2
    square = np.zeros((size, size) + image.shape[2:], dtype=image.dtype)
    square[top:top + new_h, left:left + new_w] = resized
    return square, scale, (left, top)


def pad_to_square(image: np.ndarray, size: int = 224) -> np.ndarray:
    """A whole image letterboxed to `size` x `size` (reference crop mode 'none')."""
    return letterbox(image, size)[0]


def eye_line_angle(landmarks: np.ndarray) -> float:
    """Degrees to rotate counter-clockwise (PIL's convention) so the eye line becomes level.

    Same result as the official law-of-cosines construction: the acute tilt of the eye line,
    negative when the left eye sits lower than the right one.
    """
    (left_x, left_y), (right_x, right_y) = landmarks[0], landmarks[1]
    tilt = math.degrees(math.atan2(abs(right_y - left_y), abs(right_x - left_x)))
    return -tilt if left_y > right_y else tilt


def crop_reference_face(image: np.ndarray, face: Face, size: int = 224) -> np.ndarray:
    """The official reference crop of `face` from an RGB uint8 image: uint8 [size, size, 3]."""
    x1, y1, x2, y2 = (int(v) for v in np.round(face.box))  # numpy rounds half to even, like torch
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"face box {face.box} is empty after rounding; the detection is too small to crop")
    # PIL fills the part of the box outside the image with black, as the official crop does.
    crop = Image.fromarray(image).crop((x1, y1, x2, y2))
    angle = eye_line_angle(face.landmarks)
    if angle:
        crop = crop.rotate(angle)  # about the crop centre, expand=False, NEAREST, black corners
    return pad_to_square(np.asarray(crop), size)
