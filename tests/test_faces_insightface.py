"""insightface packs: folder search (nested, missing, never a download) and SCRFD decoding, with
fake model files and fake onnxruntime sessions (no real pack can be had offline)."""
from types import SimpleNamespace

import numpy as np
import pytest

from flashface_core.faces import FaceModelNotFound, make_detector
from flashface_core.faces import insightface_backend as ib

pytestmark = pytest.mark.usefixtures("no_network")


class FakeSession:
    def __init__(self, outputs=(), input_shape=(1, 3, 640, 640), output_count=None):
        self.outputs = list(outputs)
        self.input_shape = list(input_shape)
        self.output_count = output_count if output_count is not None else len(self.outputs)

    def get_inputs(self):
        return [SimpleNamespace(name="input.1", shape=self.input_shape)]

    def get_outputs(self):
        return [SimpleNamespace(name=str(i)) for i in range(self.output_count)]

    def run(self, names, feeds):
        self.feeds = feeds
        return self.outputs


def fake_pack(folder, files):
    folder.mkdir(parents=True)
    for name in files:
        (folder / name).write_bytes(b"not really onnx")
    return folder


def test_nested_antelopev2_is_found_and_picked_by_name(tmp_path, monkeypatch):
    pack = fake_pack(tmp_path / "models" / "antelopev2" / "antelopev2",
                     ["1k3d68.onnx", "glintr100.onnx", "scrfd_10g_bnkps.onnx"])
    (tmp_path / "models" / "buffalo_l").mkdir()  # empty folders do not count
    monkeypatch.setattr(ib, "onnx_session", lambda *a: pytest.fail("a known file name needs no loading"))
    assert ib.find_pack([str(tmp_path)]) == str(pack)
    assert ib.pick_model(str(pack), "detection") == str(pack / "scrfd_10g_bnkps.onnx")
    assert ib.pick_model(str(pack), "recognition") == str(pack / "glintr100.onnx")


def test_pack_directly_under_root(tmp_path):
    pack = fake_pack(tmp_path / "buffalo_l", ["det_10g.onnx", "w600k_r50.onnx"])
    assert ib.find_pack([str(tmp_path / "missing"), str(tmp_path)]) == str(pack)


def test_missing_pack_names_every_folder_and_file(tmp_path):
    roots = [str(tmp_path / "one"), str(tmp_path / "two")]
    (tmp_path / "one" / "models" / "antelopev2").mkdir(parents=True)
    with pytest.raises(FaceModelNotFound) as error:
        make_detector("insightface", insightface_roots=roots)
    message = str(error.value)
    for folder in ib.candidate_folders(roots):
        assert folder in message
    for name in ("scrfd_10g_bnkps.onnx", "glintr100.onnx", "det_10g.onnx", "w600k_r50.onnx"):
        assert name in message
    assert "never downloads" in message


def test_unknown_file_names_are_routed_by_signature(tmp_path, monkeypatch):
    pack = fake_pack(tmp_path / "models" / "antelopev2", ["a.onnx", "b.onnx", "c.onnx"])
    sessions = {"a.onnx": FakeSession(input_shape=(1, 3, 112, 112), output_count=1),
                "b.onnx": FakeSession(input_shape=(1, 3, 192, 192), output_count=1),
                "c.onnx": FakeSession(output_count=9)}
    monkeypatch.setattr(ib, "onnx_session", lambda path, *a: sessions[path.rsplit("/", 1)[-1]])
    assert ib.pick_model(str(pack), "detection").endswith("c.onnx")
    assert ib.pick_model(str(pack), "recognition").endswith("a.onnx")
    (pack / "c.onnx").unlink()
    with pytest.raises(FaceModelNotFound, match="no detection model"):
        ib.pick_model(str(pack), "detection")


def test_damaged_model_file_is_named(tmp_path):
    pytest.importorskip("onnxruntime")
    fake_pack(tmp_path / "models" / "buffalo_l", ["det_10g.onnx"])
    # auto must not hide a broken pack behind the builtin fallback
    with pytest.raises(RuntimeError, match="det_10g.onnx.*download it again"):
        make_detector("auto", insightface_roots=[str(tmp_path)])


def scrfd_outputs(face_level: int, face_index: int, batch_axis: bool = False) -> list[np.ndarray]:
    """Outputs of a fake 640x640 SCRFD (2 anchors per cell) with one face; insightface's output order."""
    scores, boxes, points = [], [], []
    for level, stride in enumerate((8, 16, 32)):
        count = (640 // stride) ** 2 * 2
        score = np.zeros((count, 1), np.float32)
        box = np.zeros((count, 4), np.float32)
        point = np.zeros((count, 10), np.float32)
        if level == face_level:
            score[face_index] = 0.9
            box[face_index] = [3, 4, 3, 4]
            point[face_index] = [-1, -1, 1, -1, 0, 0, -1, 1, 1, 1]
        scores.append(score)
        boxes.append(box)
        points.append(point)
    outputs = scores + boxes + points
    return [o[None] for o in outputs] if batch_axis else outputs


@pytest.mark.parametrize("batch_axis", [False, True])
def test_scrfd_decoding_and_unpadding(tmp_path, monkeypatch, batch_axis):
    fake_pack(tmp_path / "models" / "antelopev2", ["scrfd_10g_bnkps.onnx"])
    # stride 16: 40x40 cells; row 20, col 25, second anchor -> anchor point (400, 320)
    session = FakeSession(scrfd_outputs(1, (20 * 40 + 25) * 2 + 1, batch_axis))
    monkeypatch.setattr(ib, "onnx_session", lambda *a: session)
    detector = make_detector("insightface", insightface_roots=[str(tmp_path)])
    assert detector.name == "insightface (antelopev2/scrfd_10g_bnkps.onnx)"
    image = np.zeros((320, 640, 3), np.uint8)
    image[..., 0] = 255
    faces = detector.detect(image)
    # letterbox: scale 1, 160 px of padding on top; box (352, 256, 448, 384) in the padded square
    assert len(faces) == 1 and faces[0].score == pytest.approx(0.9)
    np.testing.assert_allclose(faces[0].box, [352, 96, 448, 224])
    np.testing.assert_allclose(faces[0].landmarks, [[384, 144], [416, 144], [400, 160], [384, 176], [416, 176]])
    blob = session.feeds["input.1"]
    assert blob.shape == (1, 3, 640, 640)
    np.testing.assert_allclose(blob[0, :, 0, 0], [-127.5 / 128] * 3)  # black padding
    np.testing.assert_allclose(blob[0, :, 320, 320], [127.5 / 128, -127.5 / 128, -127.5 / 128])  # red stays in channel 0


def test_scrfd_without_landmarks_is_refused():
    outputs = [o for o in scrfd_outputs(0, 0) if o.shape[-1] != 10]
    with pytest.raises(ValueError, match="5-point landmarks"):
        ib.decode_scrfd(outputs, 640)
