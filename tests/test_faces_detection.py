"""Face detectors: RetinaFace decoding math, the builtin ONNX detector on real photos, the official
ResNet-50 network on random weights, and backend selection."""
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from flashface_core.faces import FaceModelNotFound, make_detector, pad_to_square
from flashface_core.faces import retinaface_decode as rd
from flashface_core.faces.retinaface_official import OfficialRetinaFace, RetinaFaceResNet50

from support.paths import PHOTO_NAMES, REPO


def skimage_image(name: str) -> np.ndarray:
    data = pytest.importorskip("skimage.data", reason="scikit-image ships the public-domain test images")
    return getattr(data, name)()


def collage(images: list[np.ndarray], columns: int, tile: int = 256) -> np.ndarray:
    tiles = [pad_to_square(image, tile) for image in images]
    rows = [np.concatenate(tiles[i:i + columns], axis=1) for i in range(0, len(tiles), columns)]
    return np.concatenate(rows, axis=0)


# --- decoding math, hand-computed -------------------------------------------------------------

def test_prior_boxes_order_and_values():
    priors = rd.prior_boxes(16, 16)
    # stride 8: 2x2 cells x 2 sizes; strides 16 and 32: one cell (ceil) x 2 sizes
    assert priors.shape == (12, 4)
    np.testing.assert_allclose(priors[0], [0.25, 0.25, 1, 1])
    np.testing.assert_allclose(priors[1], [0.25, 0.25, 2, 2])
    np.testing.assert_allclose(priors[2], [0.75, 0.25, 1, 1])  # next column before next row
    np.testing.assert_allclose(priors[4], [0.25, 0.75, 1, 1])
    np.testing.assert_allclose(priors[8:10], [[0.5, 0.5, 4, 4], [0.5, 0.5, 8, 8]])
    np.testing.assert_allclose(priors[10:], [[1.0, 1.0, 16, 16], [1.0, 1.0, 32, 32]])
    wide = rd.prior_boxes(8, 32)
    np.testing.assert_allclose(wide[2], [12 / 32, 0.5, 16 / 32, 16 / 8])


def test_decode_hand_case():
    priors = np.array([[0.5, 0.5, 0.25, 0.25]], np.float32)
    loc = np.array([[1.0, 0.0, 5 * math.log(2), 0.0]], np.float32)
    landmarks = np.tile([1.0, -1.0], 5)[None].astype(np.float32)
    boxes, points = rd.decode(loc, landmarks, priors, height=100, width=200)
    # centre x 0.5 + 0.1*0.25 = 0.525 -> 105 px; width 0.25 * exp(0.2 * 5 ln 2) = 0.5 -> 100 px; height 25 px
    np.testing.assert_allclose(boxes, [[55, 37.5, 155, 62.5]], rtol=1e-5)
    np.testing.assert_allclose(points[0], [[105, 47.5]] * 5, rtol=1e-5)


def test_nms_hand_case():
    boxes = np.array([[0, 0, 9, 9], [1, 1, 10, 10], [20, 20, 29, 29], [0, 0, 9, 4]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.95], np.float32)
    # box 3 suppresses box 0 (IoU 50/100 = 0.5 with inclusive pixels) but not box 1 (36/114 = 0.32)
    assert rd.nms(boxes, scores, 0.4).tolist() == [3, 1, 2]


def test_postprocess_threshold_and_limits():
    priors = rd.prior_boxes(64, 64)
    scores = np.zeros(len(priors), np.float32)
    scores[[3, 100, 150]] = [0.95, 0.7, 0.5]
    loc, landmarks = np.zeros((len(priors), 4), np.float32), np.zeros((len(priors), 10), np.float32)
    boxes, kept, _ = rd.postprocess(loc, scores, landmarks, 64, 64, score_threshold=0.6, nms_iou=0.4)
    np.testing.assert_allclose(kept, [0.95, 0.7])
    _, kept, _ = rd.postprocess(loc, scores, landmarks, 64, 64, 0.6, 0.4, post_nms_top=1)
    np.testing.assert_allclose(kept, [0.95])


# --- builtin detector on real photos ------------------------------------------------------------

def test_builtin_one_face_per_photo_with_ordered_landmarks(builtin, photos):
    for name, image in zip(PHOTO_NAMES, photos):
        faces = builtin.detect(image)
        assert len(faces) == 1, name
        face = faces[0]
        x1, y1, x2, y2 = face.box
        (lex, ley), (rex, rey), (nx, ny), (lmx, lmy), (rmx, rmy) = face.landmarks
        assert np.all((face.landmarks >= [x1, y1]) & (face.landmarks <= [x2, y2])), name
        assert lex < rex and lmx < rmx, name
        assert max(ley, rey) < ny < min(lmy, rmy), name
        assert face.score > 0.99


def test_builtin_public_domain_images(builtin):
    assert len(builtin.detect(skimage_image("astronaut"))) == 1
    assert builtin.detect(skimage_image("coffee")) == []


def test_builtin_collages(builtin, photos):
    images = photos
    assert len(builtin.detect(collage(images[:2] + images[4:6], columns=2))) == 4
    mixed = [skimage_image("astronaut")] * 2 + images[:3] + images[5:8]
    faces = builtin.detect(collage(mixed, columns=4))
    assert len(faces) == 8
    assert [f.score for f in faces] == sorted((f.score for f in faces), reverse=True)


def test_builtin_rejects_non_rgb_uint8(builtin):
    with pytest.raises(ValueError, match="RGB uint8"):
        builtin.detect(np.zeros((32, 32, 3), np.float32))


# --- official RetinaFace-ResNet50 on random weights ---------------------------------------------

def test_official_state_dict_names_and_shapes():
    state = RetinaFaceResNet50().state_dict()
    groups = {}
    for key in state:
        groups[key.split(".")[0]] = groups.get(key.split(".")[0], 0) + 1
    # torchvision resnet50 has 320 entries; IntermediateLayerGetter drops fc (2)
    assert groups == {"body": 318, "fpn": 30, "ssh1": 30, "ssh2": 30, "ssh3": 30,
                      "class_head": 6, "bbox_head": 6, "landmark_head": 6}
    for key in ["body.conv1.weight", "body.layer1.0.downsample.1.running_var", "body.layer4.2.bn3.weight",
                "fpn.output3.0.weight", "fpn.merge1.1.bias", "ssh2.conv7x7_3.1.weight", "ssh3.conv5X5_1.0.weight"]:
        assert key in state
    assert state["fpn.output3.0.weight"].shape == (256, 2048, 1, 1)
    assert state["class_head.0.conv1x1.weight"].shape == (4, 256, 1, 1)
    assert state["bbox_head.1.conv1x1.weight"].shape == (8, 256, 1, 1)
    assert state["landmark_head.2.conv1x1.weight"].shape == (20, 256, 1, 1)


def test_official_weights_round_trip_and_detect(tmp_path):
    torch.manual_seed(0)
    (tmp_path / "cache").mkdir()
    torch.save(RetinaFaceResNet50().state_dict(), tmp_path / "cache" / "retinaface_resnet50.pth")
    detector = make_detector("official", flashface_dirs=[str(tmp_path)])
    assert detector.name.startswith("official")
    faces = detector.detect(np.random.default_rng(0).integers(0, 255, (120, 90, 3), dtype=np.uint8))
    assert len(faces) <= 750 and all(f.score > 0.6 for f in faces)


def test_official_rejects_foreign_checkpoint(tmp_path):
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "retinaface_resnet50.pth")
    with pytest.raises(ValueError, match="missing keys"):
        make_detector("official", flashface_dirs=[str(tmp_path)])


@pytest.mark.parametrize("content", [b"", b"<html>404</html>", b"PK\x03\x04 truncated zip"])
def test_official_damaged_file_is_named(tmp_path, content):
    (tmp_path / "retinaface_resnet50.pth").write_bytes(content)
    with pytest.raises(ValueError, match="retinaface_resnet50.pth cannot be read as a torch checkpoint"):
        make_detector("official", flashface_dirs=[str(tmp_path)])


class AnchorStub(torch.nn.Module):
    """Says 'face' at one anchor with zero offsets and remembers its input."""

    def __init__(self, anchor: int):
        super().__init__()
        self.anchor = anchor
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        self.seen = x
        count = len(rd.prior_boxes(640, 640))
        scores = torch.zeros(1, count)
        scores[0, self.anchor] = 0.99
        return scores, torch.zeros(1, count, 4), torch.zeros(1, count, 10)


def test_official_unpads_and_unscales():
    # stride-32 level starts after 2*(80*80) + 2*(40*40) anchors; cell (row 10, col 10), size 256
    stub = AnchorStub(16000 + (10 * 20 + 10) * 2)
    faces = OfficialRetinaFace(stub).detect(np.full((160, 320, 3), 255, np.uint8))
    # padded 640x640 box (208, 208, 464, 464); image scaled x2 and padded 160 px on top
    assert len(faces) == 1
    np.testing.assert_allclose(faces[0].box, [104, 24, 232, 152], atol=1e-3)
    np.testing.assert_allclose(faces[0].landmarks, [[168, 88]] * 5, atol=1e-3)
    # BGR minus mean: white -> 255 - mean, black padding -> -mean
    np.testing.assert_allclose(stub.seen[0, :, 0, 0], [-104, -117, -123])
    np.testing.assert_allclose(stub.seen[0, :, 320, 320], [151, 138, 132])


# --- selection ------------------------------------------------------------------------------------

def test_auto_falls_back_to_builtin_without_network(builtin, tmp_path, no_network):
    detector = make_detector("auto", insightface_roots=[str(tmp_path)], flashface_dirs=[str(tmp_path)])
    assert detector.name.startswith("builtin")


def test_auto_prefers_official(tmp_path, no_network):
    torch.save(RetinaFaceResNet50().state_dict(), tmp_path / "retinaface_resnet50.pth")
    assert make_detector("auto", flashface_dirs=[str(tmp_path)]).name.startswith("official")


def test_missing_official_weights_names_folders(tmp_path):
    with pytest.raises(FaceModelNotFound) as error:
        make_detector("official", flashface_dirs=[str(tmp_path / "a"), str(tmp_path / "b")])
    message = str(error.value)
    assert "retinaface_resnet50.pth" in message and str(tmp_path / "a") in message and str(tmp_path / "b") in message


def test_unknown_detector_name():
    with pytest.raises(ValueError, match="builtin"):
        make_detector("mtcnn")


# --- optional dependencies ------------------------------------------------------------------------

def test_package_imports_without_optional_dependencies():
    blocked = "import sys; sys.modules.update(onnxruntime=None, dlib=None, insightface=None); "
    check = "import flashface_core.faces; assert 'torch' not in sys.modules"  # torch only for the official backend
    subprocess.run([sys.executable, "-c", blocked + check], check=True, cwd=REPO)


def test_missing_packages_say_what_to_install(monkeypatch):
    from flashface_core.faces import onnx_sessions

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match="pip install onnxruntime"):
        onnx_sessions.onnx_session.__wrapped__(b"", 0)


def test_builtin_model_ships_with_the_pack_and_is_checked(tmp_path):
    from flashface_core.faces import retinaface_onnx

    assert len(retinaface_onnx.model_bytes()) == 1736694
    with pytest.raises(FileNotFoundError, match="retinaface_mobilenet0.25.onnx is missing"):
        retinaface_onnx.model_bytes.__wrapped__(tmp_path / "retinaface_mobilenet0.25.onnx")
    damaged = tmp_path / "damaged.onnx"
    damaged.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="damaged"):
        retinaface_onnx.model_bytes.__wrapped__(damaged)
