"""RetinaFace anchors, box/landmark decoding and NMS, shared by the builtin and official backends.

Numbers from the RetinaFace configs FlashFace uses (spec §3.1): two anchor sizes per level at
strides 8/16/32, offsets scaled by variances 0.1 (centres, landmarks) and 0.2 (log sizes).
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

MIN_SIZES = ((16, 32), (64, 128), (256, 512))
STRIDES = (8, 16, 32)
VARIANCES = (0.1, 0.2)
MEAN_BGR = np.array([104.0, 117.0, 123.0], np.float32)


def rgb_to_network_input(image: np.ndarray) -> np.ndarray:
    """RGB uint8 [H, W, 3] -> float32 [1, 3, H, W] in BGR with the mean removed, as RetinaFace was trained."""
    network_input = np.empty((1, 3) + image.shape[:2], np.float32)
    # one pass: planar BGR view of the uint8 image, mean subtracted straight into float32
    np.subtract(image.transpose(2, 0, 1)[::-1], MEAN_BGR[:, None, None], out=network_input[0])
    return network_input


@lru_cache(maxsize=8)
def prior_boxes(height: int, width: int) -> np.ndarray:
    """Anchors [N, 4] as (cx, cy, w, h) relative to the image, in the networks' output order:
    level, then row, then column, then anchor size. Cached: treat the result as read-only."""
    levels = []
    for stride, sizes in zip(STRIDES, MIN_SIZES):
        rows, cols = math.ceil(height / stride), math.ceil(width / stride)
        cy, cx = np.meshgrid((np.arange(rows) + 0.5) * stride / height,
                             (np.arange(cols) + 0.5) * stride / width, indexing="ij")
        for_each_size = [
            np.stack([cx, cy, np.full_like(cx, s / width), np.full_like(cy, s / height)], axis=-1)
            for s in sizes
        ]
        levels.append(np.stack(for_each_size, axis=2).reshape(-1, 4))
    priors = np.concatenate(levels).astype(np.float32)
    priors.flags.writeable = False
    return priors


def decode(loc: np.ndarray, landmark_offsets: np.ndarray, priors: np.ndarray,
           height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Network offsets -> boxes [N, 4] (x1, y1, x2, y2) and landmarks [N, 5, 2] in input pixels."""
    centre, size = priors[:, :2], priors[:, 2:]
    box_centre = centre + loc[:, :2] * VARIANCES[0] * size
    box_size = size * np.exp(loc[:, 2:] * VARIANCES[1])
    scale = np.array([width, height], np.float32)
    boxes = np.concatenate([box_centre - box_size / 2, box_centre + box_size / 2], axis=1) * np.tile(scale, 2)
    points = centre[:, None] + landmark_offsets.reshape(-1, 5, 2) * VARIANCES[0] * size[:, None]
    return boxes, points * scale


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, best score first.

    Areas use the inclusive-pixel convention (+1), as FlashFace's RetinaFace does.
    """
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        inter_w = np.clip(np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1, 0, None)
        inter_h = np.clip(np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1, 0, None)
        inter = inter_w * inter_h
        iou = inter / (areas[best] + areas[rest] - inter)
        order = rest[iou <= iou_threshold]
    return np.array(keep, dtype=np.int64)


def postprocess(loc: np.ndarray, scores: np.ndarray, landmark_offsets: np.ndarray, height: int, width: int,
                score_threshold: float, nms_iou: float, pre_nms_top: int | None = None,
                post_nms_top: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's raw outputs (loc [N, 4], face probability [N], landmarks [N, 10]) -> kept boxes,
    scores and landmarks in input pixels, best first."""
    # Thresholding before the top-k gives the same set as the official top-k-then-threshold, cheaper.
    candidates = np.flatnonzero(scores > score_threshold)
    candidates = candidates[np.argsort(-scores[candidates], kind="stable")][:pre_nms_top]
    priors = prior_boxes(height, width)[candidates]
    boxes, points = decode(loc[candidates], landmark_offsets[candidates], priors, height, width)
    keep = nms(boxes, scores[candidates], nms_iou)[:post_nms_top]
    return boxes[keep], scores[candidates][keep], points[keep]
