"""The FaceSimilarity node inside a real ComfyUI (COMFYUI_PATH), run in a
subprocess so ComfyUI's imports stay out of the other tests."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from data_files import required_file
from test_faces_support import FACES

REPO = Path(__file__).resolve().parents[1]
COMFYUI = Path(os.environ["COMFYUI_PATH"]) if os.environ.get("COMFYUI_PATH") else None

SCRIPT = r"""
import importlib, importlib.util, json, sys, types

comfyui, repo, faces = sys.argv[1:4]
if importlib.util.find_spec("torchvision") is None:
    sys.path.append(f"{repo}/tests/host/stubs")  # import-only stand-in: ComfyUI imports it, this node never calls it
sys.path.insert(0, comfyui)
import comfy.options
comfy.options.enable_args_parsing()
sys.argv = [sys.argv[0], "--cpu"]
import utils.extra_config  # noqa: F401  (binds `utils` to ComfyUI's package, as main.py does)
import folder_paths
import numpy as np
import torch
from PIL import Image

pack = types.ModuleType("flashface_pack")
pack.__path__ = [repo]
sys.modules["flashface_pack"] = pack
importlib.import_module("flashface_pack.nodes.loader").register_model_folders()
node = importlib.import_module("flashface_pack.nodes.similarity").FaceSimilarity
info = node.GET_NODE_INFO_V1()
images = [np.asarray(Image.open(f"{faces}/{name}.jpg").convert("RGB").resize((256, 256)))
          for name in ("woman_1", "man_2", "man_3")]
batch = torch.from_numpy(np.stack(images)).float() / 255
scores, ranked, report = node.execute(batch, batch[1:2], "builtin", "dlib").result
print(json.dumps({"info": info, "scores": scores, "ranked_shape": list(ranked.shape), "report": report,
                  "first_is_man_2": bool(torch.equal(ranked[0], batch[1]))}))
"""


def test_face_similarity_node_in_comfyui():
    if COMFYUI is None or not (COMFYUI / "comfy_api").is_dir():
        pytest.skip(f"COMFYUI_PATH is not set to a ComfyUI checkout ({COMFYUI}): this test runs the node in ComfyUI")
    required_file(FACES / "man_2.jpg", "test photo", "FLASHFACE_FACES")
    for module in ("onnxruntime", "dlib", "face_recognition_models"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} not installed (pip install onnxruntime dlib-bin face_recognition_models)")
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(COMFYUI), str(REPO), str(FACES)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    info = result["info"]
    assert info["category"] == "FlashFace"
    assert all("tooltip" in spec[1] for spec in info["input"]["required"].values())
    assert info["output_is_list"] == [True, False, False] and len(info["output_tooltips"]) == 3
    assert result["ranked_shape"] == [3, 256, 256, 3] and result["first_is_man_2"]
    assert result["scores"][1] == 1.0 and result["scores"][2] > result["scores"][0]
    assert "builtin" in result["report"] and "dlib" in result["report"]
