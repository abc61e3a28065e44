"""Detector selection: the backends by name, and `auto`'s order among them."""
from __future__ import annotations

import logging
from typing import Sequence

from . import insightface_backend, retinaface_onnx
from .types import Detector, FaceModelNotFound

log = logging.getLogger(__name__)

DETECTOR_NAMES = ("auto", "builtin", "insightface", "official")


def make_detector(
    name: str = "auto",
    insightface_roots: Sequence[str] = (),
    flashface_dirs: Sequence[str] = (),
    device: str = "cpu",
) -> Detector:
    """The detector `name`; `auto` takes official, then insightface, then builtin, the first whose
    model files are present. `device` is the torch device of the official network."""
    from . import retinaface_official  # imported on use: it needs torch, which the other backends do not

    loaders = {
        "official": lambda: retinaface_official.OfficialRetinaFace.from_dirs(flashface_dirs, device),
        "insightface": lambda: insightface_backend.InsightFaceDetector.from_roots(insightface_roots),
        "builtin": retinaface_onnx.BuiltinRetinaFace,
    }
    if name not in DETECTOR_NAMES:
        raise ValueError(f"unknown face detector {name!r}; choose one of {', '.join(DETECTOR_NAMES)}")
    if name != "auto":
        return loaders[name]()
    for candidate in ("official", "insightface"):
        try:
            detector = loaders[candidate]()
        except FaceModelNotFound as missing:
            log.debug("auto face detector: %s not available: %s", candidate, missing)
            continue
        log.info("auto face detector: using %s", detector.name)
        return detector
    detector = loaders["builtin"]()
    log.info("auto face detector: using %s (no official or insightface model files found)", detector.name)
    return detector
