"""LoadFlashFace: the FlashFace weights file from the `flashface` models folder."""

import logging
import os

import torch
from comfy_api.latest import io

import comfy.model_management
import folder_paths

from ..flashface_core.checkpoint import FlashFaceCheckpointError, load_flashface
from .runtime.errors import FlashFaceNodeError
from .runtime.flashface_model import FlashFaceModel, FlashFaceType
from .runtime.model_folders import FLASHFACE_FOLDER, flashface_candidates
from .runtime.node_ids import LOAD_FLASHFACE

log = logging.getLogger(__name__)

WEIGHT_DTYPES = {"default": None, "fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


class LoadFlashFace(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=LOAD_FLASHFACE,
            display_name="Load FlashFace",
            category="FlashFace",
            description="Loads flashface.ckpt (or a converted .safetensors) from models/flashface.",
            inputs=[
                io.Combo.Input("flashface_name", options=flashface_candidates(folder_paths.get_filename_list(FLASHFACE_FOLDER)),
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
        path = folder_paths.get_full_path(FLASHFACE_FOLDER, flashface_name)
        if path is None:
            searched = ", ".join(folder_paths.get_folder_paths(FLASHFACE_FOLDER))
            raise FlashFaceNodeError(
                f"{LOAD_FLASHFACE}: flashface_name '{flashface_name}' was not found in the flashface folder(s): "
                f"{searched}. Put flashface.ckpt (10.6 GB, see the README's Weights section) there."
            )
        if weight_dtype not in WEIGHT_DTYPES:
            raise FlashFaceNodeError(f"{LOAD_FLASHFACE}: weight_dtype must be one of {list(WEIGHT_DTYPES)}, got {weight_dtype!r}")
        dtype = WEIGHT_DTYPES[weight_dtype] or comfy.model_management.unet_dtype()
        try:
            weights = load_flashface(path, dtype=dtype)
        except FlashFaceCheckpointError as error:
            raise FlashFaceNodeError(f"{LOAD_FLASHFACE}: flashface_name: {error}") from error  # error names the path
        # The file name only: logs get shared, and full paths carry home folders and user names.
        log.info("FlashFace: loaded %s (%d parameters, %s)", os.path.basename(path), weights.num_parameters(), dtype)
        return io.NodeOutput(FlashFaceModel(flashface_name, weights))
