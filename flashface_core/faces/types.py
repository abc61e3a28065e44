"""What the face backends share: the face record, the detector interface, input checks."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


class FaceModelNotFound(FileNotFoundError):
    """A backend's model files are not where we looked; `auto` moves on to the next backend."""


@dataclass(frozen=True, eq=False)  # eq on numpy landmarks would be ambiguous; compare by identity
class Face:
    """One detected face in image pixels.

    `landmarks` is [5, 2] (x, y) in FlashFace's order: left eye, right eye, nose, left mouth
    corner, right mouth corner, where "left" means image-left.
    """

    box: tuple[float, float, float, float]  # x1, y1, x2, y2; may run past the image border
    score: float
    landmarks: np.ndarray

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = self.box
        return max(0.0, x2 - x1) * max(0.0, y2 - y1)


class Detector(Protocol):
    name: str

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in an RGB uint8 [H, W, 3] image, best score first."""


def faces_from_arrays(boxes: np.ndarray, scores: np.ndarray, landmarks: np.ndarray) -> list[Face]:
    """Face records from [N, 4], [N] and [N, 5, 2] arrays, best score first."""
    order = np.argsort(-scores, kind="stable")
    return [
        Face(tuple(float(v) for v in boxes[i]), float(scores[i]), landmarks[i].astype(np.float32))
        for i in order
    ]


def check_image(image: np.ndarray) -> np.ndarray:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"face detection needs an RGB uint8 image of shape [H, W, 3], got {image.dtype} "
            f"{list(image.shape)}; convert the image (drop alpha, scale 0..1 floats by 255) first"
        )
    return image
