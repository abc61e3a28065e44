"""Identity similarity between faces, for ranking generated images against the references.

Backends, best first:
* insightface ArcFace (recognition model of a user-placed antelopev2/buffalo_l pack): 5-point
  similarity-transform alignment to 112x112, cosine similarity of the embeddings, in -1..1.
* dlib ResNet (packages dlib-bin + face_recognition_models, all offline): score = 1 - Euclidean
  distance of the 128-d descriptors. dlib's same-person radius 0.6 is a score of 0.4, but on the
  FlashFace example photos some different people scored above 0.4 while every same-person pair
  scored higher still (>= 0.52 vs <= 0.51): rank by score rather than thresholding it.
Higher is more alike for both; the two scales are not comparable with each other.
"""
from __future__ import annotations

import importlib.util
import logging
import math
import os
from functools import lru_cache
from typing import Protocol, Sequence

import numpy as np
from PIL import Image

from .insightface_backend import find_pack, pick_model
from .onnx_sessions import onnx_session
from .references import largest_face
from .types import Detector, Face, FaceModelNotFound

log = logging.getLogger(__name__)

EMBEDDER_NAMES = ("auto", "insightface", "dlib")
DLIB_INSTALL = "pip install dlib-bin face_recognition_models"
# ArcFace's 112x112 landmark template (insightface), in the same order as Face.landmarks.
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], np.float64)


class Embedder(Protocol):
    name: str

    def embed(self, image: np.ndarray, face: Face) -> np.ndarray: ...

    def similarity(self, a: np.ndarray, b: np.ndarray) -> float: ...


def similarity_transform(source: np.ndarray, target: np.ndarray) -> tuple[complex, complex]:
    """Least-squares rotation + uniform scale + shift mapping source points onto target points,
    as z = a * w + b on points written as complex numbers."""
    w = source[:, 0] + 1j * source[:, 1]
    z = target[:, 0] + 1j * target[:, 1]
    w_centred, z_centred = w - w.mean(), z - z.mean()
    a = np.vdot(w_centred, z_centred) / np.vdot(w_centred, w_centred).real
    return a, z.mean() - a * w.mean()


def align_arcface(image: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """The face warped so its 5 landmarks land on the ArcFace template: uint8 [size, size, 3]."""
    # The template counts pixel centres from 0 (OpenCV); PIL and our landmarks put them at +0.5.
    a, b = similarity_transform(landmarks.astype(np.float64), ARCFACE_TEMPLATE * size / 112 + 0.5)
    inverse_a = 1 / a  # PIL wants output -> input: w = (z - b) / a
    shift = -b * inverse_a
    coefficients = (inverse_a.real, -inverse_a.imag, shift.real, inverse_a.imag, inverse_a.real, shift.imag)
    warped = Image.fromarray(image).transform((size, size), Image.AFFINE, coefficients, Image.BILINEAR)
    return np.asarray(warped)


class ArcFaceEmbedder:
    def __init__(self, model_path: str):
        self.name = f"insightface ArcFace ({os.path.basename(os.path.dirname(model_path))}, cosine)"
        self.session = onnx_session(model_path)

    @classmethod
    def from_roots(cls, roots: Sequence[str]) -> "ArcFaceEmbedder":
        return cls(pick_model(find_pack(roots), "recognition"))

    def embed(self, image: np.ndarray, face: Face) -> np.ndarray:
        aligned = align_arcface(image, face.landmarks).astype(np.float32)
        blob = ((aligned - 127.5) / 127.5).transpose(2, 0, 1)[None]  # RGB
        embedding = self.session.run(None, {self.session.get_inputs()[0].name: blob})[0][0]
        return embedding / np.linalg.norm(embedding)

    def similarity(self, a: np.ndarray, b: np.ndarray) -> float:
        return float(np.dot(a, b))


@lru_cache(maxsize=1)
def load_dlib_models():
    """dlib's 5-point shape predictor and ResNet face encoder, located without importing
    face_recognition_models (its __init__ needs pkg_resources, gone from current setuptools)."""
    try:
        import dlib
    except ImportError as error:
        raise ImportError(f"the dlib face similarity backend needs dlib: {DLIB_INSTALL}") from error
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the dlib face similarity backend needs the model files: {DLIB_INSTALL}")
    models = os.path.join(list(spec.submodule_search_locations)[0], "models")
    shapes = os.path.join(models, "shape_predictor_5_face_landmarks.dat")
    encoder = os.path.join(models, "dlib_face_recognition_resnet_model_v1.dat")
    for path in (shapes, encoder):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} is missing; reinstall: pip install --force-reinstall face_recognition_models")
    return dlib, dlib.shape_predictor(shapes), dlib.face_recognition_model_v1(encoder)


class DlibEmbedder:
    name = "dlib ResNet (1 - L2 distance)"

    def __init__(self):
        self.dlib, self.shape_predictor, self.encoder = load_dlib_models()

    def embed(self, image: np.ndarray, face: Face) -> np.ndarray:
        image = np.ascontiguousarray(image)
        x1, y1, x2, y2 = (int(round(v)) for v in face.box)
        # dlib's own 5 points (its encoder was trained on its alignment), seeded with our box.
        shape = self.shape_predictor(image, self.dlib.rectangle(x1, y1, x2, y2))
        return np.array(self.encoder.compute_face_descriptor(image, shape, 0), np.float32)

    def similarity(self, a: np.ndarray, b: np.ndarray) -> float:
        return 1.0 - float(np.linalg.norm(a - b))


def make_embedder(name: str = "auto", insightface_roots: Sequence[str] = ()) -> Embedder:
    if name not in EMBEDDER_NAMES:
        raise ValueError(f"unknown face similarity backend {name!r}; choose one of {', '.join(EMBEDDER_NAMES)}")
    if name == "insightface":
        return ArcFaceEmbedder.from_roots(insightface_roots)
    if name == "dlib":
        return DlibEmbedder()
    try:
        return ArcFaceEmbedder.from_roots(insightface_roots)
    except FaceModelNotFound as missing:
        log.debug("face similarity: no insightface recognition model: %s", missing)
    try:
        return DlibEmbedder()
    except ImportError as error:
        raise ImportError(
            "no face similarity backend available: place an insightface pack (antelopev2 or buffalo_l) "
            f"under {', '.join(insightface_roots) or 'models/insightface'}/models/, or {DLIB_INSTALL}"
        ) from error


def identity_scores(candidates: Sequence[np.ndarray], references: Sequence[np.ndarray],
                    detector: Detector, embedder: Embedder) -> list[float]:
    """Each candidate's mean similarity to the references (largest face of each image); NaN for a
    candidate without a face. References without a face are left out."""
    def embedding(image: np.ndarray):
        faces = detector.detect(image)
        return embedder.embed(image, largest_face(faces)) if faces else None

    reference_embeddings = [e for e in map(embedding, references) if e is not None]
    if not reference_embeddings:
        raise ValueError(f"no face found in any of the {len(references)} reference images "
                         f"(detector: {detector.name}); give references with a visible face")
    scores = []
    for index, image in enumerate(candidates):
        candidate = embedding(image)
        if candidate is None:
            log.warning("face similarity: no face in candidate image %d, score NaN", index)
            scores.append(math.nan)
        else:
            scores.append(float(np.mean([embedder.similarity(candidate, r) for r in reference_embeddings])))
    return scores


def rank_by_score(scores: Sequence[float]) -> list[int]:
    """Indices from the highest score to the lowest, NaN last."""
    return sorted(range(len(scores)), key=lambda i: math.inf if math.isnan(scores[i]) else -scores[i])
