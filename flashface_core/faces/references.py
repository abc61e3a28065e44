"""From a batch of reference photos to FlashFace's 224x224 reference faces.

Policies for photos that do not hold exactly one face:
* 'error'   - the official behaviour: every photo must hold exactly one face.
* 'largest' - take the largest face; a photo without a face is an error.
* 'skip'    - drop photos with no face, and photos with several faces too (we cannot tell which
              person is meant, and a wrong identity would poison the references); fails only
              when no photo is left.
"""
from __future__ import annotations

import logging
from typing import Optional, Sequence

import numpy as np

from .alignment import crop_reference_face, pad_to_square
from .types import Detector, Face

log = logging.getLogger(__name__)

POLICIES = ("largest", "error", "skip")
CROP_MODES = ("face", "none")


def largest_face(faces: Sequence[Face]) -> Face:
    return max(faces, key=lambda face: face.area)


def choose_face(faces: list[Face], index: int, policy: str) -> Optional[Face]:
    """The face to use from reference image `index` under `policy`; None means skip the image."""
    if len(faces) == 1:
        return faces[0]
    if policy == "largest" and faces:
        return largest_face(faces)
    if policy == "skip":
        log.warning("reference image %d has %d faces, skipping it (policy 'skip' needs exactly one)", index, len(faces))
        return None
    fix = "use a photo with one face" if not faces else "crop the photo to one person or use policy 'largest'"
    raise ValueError(f"reference image {index} (batch index, from 0) has {len(faces)} faces; "
                     f"policy '{policy}' needs {'a face' if policy == 'largest' else 'exactly one face'}: {fix}")


def prepare_reference_crops(
    images: Sequence[np.ndarray],
    detector: Optional[Detector],
    policy: str = "largest",
    crop: str = "face",
    size: int = 224,
) -> tuple[list[np.ndarray], list[int], list[Optional[Face]]]:
    """Reference crops (uint8 [size, size, 3]), the indices of the images they came from, and their faces.

    crop='face' detects and makes the official aligned crop; crop='none' letterboxes the whole
    image without detection (faces are then None and the detector is not used).
    """
    if policy not in POLICIES or crop not in CROP_MODES:
        raise ValueError(f"unknown policy {policy!r} or crop {crop!r}; policies: {POLICIES}, crops: {CROP_MODES}")
    if crop == "none":
        return [pad_to_square(image, size) for image in images], list(range(len(images))), [None] * len(images)
    crops, kept, chosen = [], [], []
    for index, image in enumerate(images):
        face = choose_face(detector.detect(image), index, policy)
        if face is not None:
            crops.append(crop_reference_face(image, face, size))
            kept.append(index)
            chosen.append(face)
    if not crops:
        raise ValueError(f"none of the {len(images)} reference images holds exactly one face "
                         f"(detector: {detector.name}); give photos with one clearly visible face each")
    return crops, kept, chosen
