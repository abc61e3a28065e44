"""The FaceSimilarity node inside a real ComfyUI, on the real test photos with the dlib identity model."""

import importlib
import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image

from support.paths import FACES, required_file


def test_face_similarity_node_in_comfyui(host):
    for module in ("onnxruntime", "dlib", "face_recognition_models"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} not installed (pip install onnxruntime dlib-bin face_recognition_models)")
    host.model_folders.register_model_folders()
    node = importlib.import_module(f"{host.pack.__name__}.nodes.face_similarity").FaceSimilarity
    info = node.GET_NODE_INFO_V1()
    names = ("woman_1", "man_2", "man_3")
    images = [np.asarray(Image.open(required_file(FACES / f"{name}.jpg", "test photo", "FLASHFACE_FACES"))
                         .convert("RGB").resize((256, 256))) for name in names]
    batch = torch.from_numpy(np.stack(images)).float() / 255
    scores, ranked, report = node.execute(batch, batch[1:2], "builtin", "dlib").result
    assert info["category"] == "FlashFace"
    assert all("tooltip" in spec[1] for spec in info["input"]["required"].values())
    assert info["output_is_list"] == [True, False, False] and len(info["output_tooltips"]) == 3
    assert list(ranked.shape) == [3, 256, 256, 3] and torch.equal(ranked[0], batch[1])
    assert scores[1] == 1.0 and scores[2] > scores[0]
    assert "builtin" in report and "dlib" in report
