"""insightface model packs (antelopev2, buffalo_l) that the user placed by hand, run with onnxruntime.

We never call insightface's FaceAnalysis: with a missing or mis-nested folder it tries to download
the pack from GitHub. We find the files ourselves (ComfyUI convention
`models/insightface/models/<pack>/*.onnx`, also `<pack>/<pack>/*.onnx` as the antelopev2 zip
unpacks) and run the SCRFD detector with our own decoding.
"""
from __future__ import annotations

import logging
import os
from typing import Sequence

import numpy as np

from .alignment import letterbox
from .onnx_sessions import onnx_session
from .retinaface_decode import nms
from .types import Face, FaceModelNotFound, check_image, faces_from_arrays

log = logging.getLogger(__name__)

# The files each pack ships for the two roles we use, best pack first.
PACK_FILES = {
    "antelopev2": {"detection": "scrfd_10g_bnkps.onnx", "recognition": "glintr100.onnx"},
    "buffalo_l": {"detection": "det_10g.onnx", "recognition": "w600k_r50.onnx"},
}
DETECTION_SIZE = 640


def candidate_folders(roots: Sequence[str]) -> list[str]:
    """Where a pack may sit under each root, in search order."""
    folders = []
    for root in roots:
        for pack in PACK_FILES:
            for parent in (os.path.join(root, "models"), root):
                folders += [os.path.join(parent, pack), os.path.join(parent, pack, pack)]
    return folders


def find_pack(roots: Sequence[str]) -> str:
    """The first pack folder that holds .onnx files; never downloads anything."""
    folders = candidate_folders(roots)
    for folder in folders:
        if os.path.isdir(folder) and any(name.endswith(".onnx") for name in os.listdir(folder)):
            return folder
    expected = "; ".join(f"{pack}/{', '.join(files.values())}" for pack, files in PACK_FILES.items())
    raise FaceModelNotFound(
        "no insightface model pack found. Searched: " + (", ".join(folders) or "(no insightface folders given)")
        + f". Expected one of: {expected} (plus the pack's other .onnx files), e.g. "
        "ComfyUI/models/insightface/models/antelopev2/scrfd_10g_bnkps.onnx. Unzip the pack there "
        "yourself; this node never downloads it."
    )


def has_role(session, role: str) -> bool:
    """insightface's own routing rule: a detector has >= 5 outputs; a recognizer takes 112x112."""
    if role == "detection":
        return len(session.get_outputs()) >= 5
    return list(session.get_inputs()[0].shape[2:]) == [112, 112] and len(session.get_outputs()) == 1


def pick_model(folder: str, role: str) -> str:
    """The pack's model file for `role` ('detection' or 'recognition'): its usual file name first,
    otherwise the first .onnx whose inputs and outputs fit the role."""
    known = {files[role] for files in PACK_FILES.values()}
    names = sorted((name for name in os.listdir(folder) if name.endswith(".onnx")), key=lambda n: (n not in known, n))
    for name in names:
        path = os.path.join(folder, name)
        if name in known or has_role(onnx_session(path), role):
            return path
    raise FaceModelNotFound(
        f"no {role} model among the .onnx files in {folder} ({', '.join(names) or 'none'}); expected "
        f"{' or '.join(sorted(known))} from the antelopev2 or buffalo_l pack"
    )


def decode_scrfd(outputs: list[np.ndarray], size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SCRFD outputs for a size x size input -> scores [N], boxes [N, 4], landmarks [N, 5, 2] in input pixels.

    Outputs come per stride (8, 16, 32[, 64, 128]) as scores [N, 1], box distances [N, 4] and
    landmark offsets [N, 10], in units of the stride, around anchor points on the grid
    (x = col * stride, y = row * stride), each point repeated once per anchor.
    """
    outputs = [o[0] if o.ndim == 3 else o for o in outputs]  # some exports keep the batch axis
    by_width = {width: [o for o in outputs if o.shape[-1] == width] for width in (1, 4, 10)}
    if not by_width[10] or not (len(by_width[1]) == len(by_width[4]) == len(by_width[10])):
        raise ValueError(
            f"unsupported SCRFD detector outputs {[list(o.shape) for o in outputs]}: need scores, boxes and "
            "5-point landmarks per stride (scrfd_10g_bnkps.onnx or det_10g.onnx)"
        )
    scores, boxes, points = [], [], []
    for level, (score, distance, offset) in enumerate(zip(*by_width.values())):
        stride = 8 * 2 ** level
        cells = size // stride
        anchors = len(score) // (cells * cells)
        row, col = np.divmod(np.repeat(np.arange(cells * cells), anchors), cells)
        centre = np.stack([col, row], axis=1).astype(np.float32) * stride
        scores.append(score[:, 0])
        boxes.append(np.concatenate([centre - distance[:, :2] * stride, centre + distance[:, 2:] * stride], axis=1))
        points.append(centre[:, None] + offset.reshape(-1, 5, 2) * stride)
    return np.concatenate(scores), np.concatenate(boxes), np.concatenate(points)


class InsightFaceDetector:
    def __init__(self, model_path: str, score_threshold: float = 0.5, nms_iou: float = 0.4):
        pack = os.path.basename(os.path.dirname(model_path))
        self.name = f"insightface ({pack}/{os.path.basename(model_path)})"
        self.session = onnx_session(model_path)
        self.score_threshold = score_threshold
        self.nms_iou = nms_iou

    @classmethod
    def from_roots(cls, roots: Sequence[str]) -> "InsightFaceDetector":
        return cls(pick_model(find_pack(roots), "detection"))

    def detect(self, image: np.ndarray) -> list[Face]:
        square, scale, offset = letterbox(check_image(image), DETECTION_SIZE)
        blob = ((square.astype(np.float32) - 127.5) / 128.0).transpose(2, 0, 1)[None]  # RGB, as SCRFD was trained
        outputs = self.session.run(None, {self.session.get_inputs()[0].name: blob})
        scores, boxes, points = decode_scrfd(outputs, DETECTION_SIZE)
        keep = scores >= self.score_threshold
        scores, boxes, points = scores[keep], boxes[keep], points[keep]
        keep = nms(boxes, scores, self.nms_iou)
        shift = np.array(offset, np.float32)
        return faces_from_arrays((boxes[keep] - np.tile(shift, 2)) / scale, scores[keep], (points[keep] - shift) / scale)
