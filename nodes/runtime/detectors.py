"""Face detectors for the nodes: the detector input, one cached detector per choice, images as RGB bytes."""

import functools

import numpy as np
from comfy_api.latest import io

from ...flashface_core.faces.detection import DETECTOR_NAMES, make_detector
from ...flashface_core.faces.types import FaceModelNotFound
from .errors import FlashFaceNodeError
from .model_folders import FLASHFACE_FOLDER, INSIGHTFACE_FOLDER, model_folders


def detector_input(optional=False):
    return io.Combo.Input(
        "detector", options=list(DETECTOR_NAMES), default="auto", optional=optional,
        tooltip="Face detector. 'auto' uses FlashFace's own RetinaFace-R50 (retinaface_resnet50.pth in "
                "models/flashface) if present, then insightface (antelopev2/buffalo_l in models/insightface), "
                "else the built-in RetinaFace that needs no download.",
    )


def load_detector(node_name, name):
    try:
        return _cached_detector(name, tuple(model_folders(INSIGHTFACE_FOLDER)),
                                 tuple(model_folders(FLASHFACE_FOLDER)))
    except (FaceModelNotFound, ImportError, ValueError, RuntimeError) as error:
        raise FlashFaceNodeError(f"{node_name}: detector '{name}': {error}") from error


@functools.lru_cache(maxsize=4)
def _cached_detector(name, insightface_roots, flashface_dirs):
    return make_detector(name, insightface_roots=insightface_roots, flashface_dirs=flashface_dirs)


def image_to_uint8(images):
    """ComfyUI IMAGE [B, H, W, C] floats in 0..1 -> list of RGB uint8 arrays (grey images made RGB,
    alpha dropped): the detectors take RGB only."""
    rgb = images.expand(*images.shape[:-1], 3) if images.shape[-1] == 1 else images[..., :3]
    pixels = (rgb.clamp(0, 1) * 255).round().to("cpu").numpy().astype(np.uint8)
    return list(pixels)
