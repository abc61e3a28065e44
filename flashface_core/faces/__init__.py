"""Face detection, FlashFace reference crops, face masks and identity similarity.

onnxruntime (a requirement: the built-in detector runs on it) and dlib (optional) are imported only when
a backend that needs them runs, so importing the pack loads neither.
"""
from .alignment import crop_reference_face, eye_line_angle, letterbox, pad_to_square
from .detection import DETECTOR_NAMES, make_detector
from .references import CROP_MODES, POLICIES, prepare_reference_crops
from .region_mask import face_region_mask
from .similarity import EMBEDDER_NAMES, Embedder, identity_scores, make_embedder, rank_by_score
from .types import Detector, Face, FaceModelNotFound

__all__ = [
    "CROP_MODES", "DETECTOR_NAMES", "EMBEDDER_NAMES", "POLICIES", "Detector", "Embedder", "Face",
    "FaceModelNotFound", "crop_reference_face", "eye_line_angle", "face_region_mask", "identity_scores",
    "letterbox", "make_detector", "make_embedder", "pad_to_square", "prepare_reference_crops", "rank_by_score",
]
