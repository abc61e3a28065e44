"""LoadFlashFace: the FlashFace weights file from the `flashface` models folder."""

import logging
import os

import torch
from comfy_api.latest import io

import comfy.model_management
import folder_paths

from ..flashface_core.checkpoint import FlashFaceCheckpointError, load_flashface
from .errors import FlashFaceNodeError
from .flashface_model import build_reference_modules
from .reference_cache import attach_reference_store

log = logging.getLogger(__name__)

FOLDER = "flashface"
EXTENSIONS = {".ckpt", ".pt", ".pth", ".safetensors"}
WEIGHT_DTYPES = {"default": None, "fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
FlashFaceType = io.Custom("FLASHFACE")
# Face detector files share models/flashface (the official retinaface_resnet50.pth lives there) or are
# insightface's (det_10g.onnx, ...): not FlashFace weights, so the file list leaves them out.
DETECTOR_FILE_PREFIXES = ("retinaface", "det_", "scrfd")


def flashface_candidates(names):
    """The files of the flashface folder that can be FlashFace weights (no face detector files)."""
    def is_detector(name):
        base = os.path.basename(name).lower()
        return base.startswith(DETECTOR_FILE_PREFIXES) or base.endswith(".onnx")

    return [name for name in names if not is_detector(name)]


def register_model_folders():
    """`models/flashface` (and `models/insightface`), keeping paths from extra_model_paths.yaml."""
    for name, extensions in ((FOLDER, EXTENSIONS), ("insightface", set())):
        paths, known = folder_paths.folder_names_and_paths.get(name, ([], set()))
        default = os.path.join(folder_paths.models_dir, name)
        if default not in paths:
            paths = [*paths, default]
        folder_paths.folder_names_and_paths[name] = (paths, set(known) | extensions)


class FlashFaceModel:
    """The loaded weights plus, per host model layout, the reference modules built from them."""

    def __init__(self, name, weights):
        self.name = name
        self.weights = weights.frozen_parameters()
        self._modules = {}

    def modules_for(self, model_patcher):
        """The reference U-Net etc. for this host model's layout and devices (built once; they hold the
        loaded weights themselves, so each layout costs no weight memory)."""
        key = (repr(sorted(model_patcher.model.model_config.unet_config.items(), key=str)),
               str(model_patcher.load_device), str(model_patcher.offload_device))
        if key not in self._modules:
            self._modules[key] = build_reference_modules(self.weights, model_patcher)
            attach_reference_store(self._modules[key])
        return self._modules[key]


class LoadFlashFace(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoadFlashFace",
            display_name="Load FlashFace",
            category="FlashFace",
            description="Loads flashface.ckpt (or a converted .safetensors) from models/flashface.",
            inputs=[
                io.Combo.Input("flashface_name", options=flashface_candidates(folder_paths.get_filename_list(FOLDER)),
                               tooltip="FlashFace weights in models/flashface: the official flashface.ckpt "
                                       "or a file made by `python -m flashface_core.convert`. Face detector "
                                       "files (retinaface_resnet50.pth here, insightface packs in "
                                       "models/insightface) are used by the detector inputs and not listed."),
                io.Combo.Input("weight_dtype", options=list(WEIGHT_DTYPES), default="default",
                               tooltip="Precision to keep the weights in. 'default' follows ComfyUI's choice "
                                       "for U-Nets on your device (fp16 on most GPUs, fp32 on CPU)."),
            ],
            outputs=[FlashFaceType.Output(display_name="flashface",
                                          tooltip="FlashFace weights for ApplyReferenceAttention and EncodeReferences.")],
        )

    @classmethod
    def execute(cls, flashface_name, weight_dtype="default") -> io.NodeOutput:
        path = folder_paths.get_full_path(FOLDER, flashface_name)
        if path is None:
            searched = ", ".join(folder_paths.get_folder_paths(FOLDER))
            raise FlashFaceNodeError(
                f"LoadFlashFace: flashface_name '{flashface_name}' was not found in the flashface folder(s): "
                f"{searched}. Put flashface.ckpt (10.6 GB, see the README's Weights section) there."
            )
        if weight_dtype not in WEIGHT_DTYPES:
            raise FlashFaceNodeError(f"LoadFlashFace: weight_dtype must be one of {list(WEIGHT_DTYPES)}, got {weight_dtype!r}")
        dtype = WEIGHT_DTYPES[weight_dtype] or comfy.model_management.unet_dtype()
        try:
            weights = load_flashface(path, dtype=dtype)
        except FlashFaceCheckpointError as error:
            raise FlashFaceNodeError(f"LoadFlashFace: flashface_name: {error}") from error  # error names the path
        # The file name only: logs get shared, and full paths carry home folders and user names.
        log.info("FlashFace: loaded %s (%d parameters, %s)", os.path.basename(path), weights.num_parameters(), dtype)
        return io.NodeOutput(FlashFaceModel(flashface_name, weights))
