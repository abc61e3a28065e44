"""FlashFace's nodes, one feature a module; what they put into ComfyUI is in `runtime/`. The math lives in
flashface_core."""

from typing_extensions import override

from comfy_api.latest import ComfyExtension, io

from .apply_reference_attention import ApplyReferenceAttention
from .encode_references import EncodeReferences
from .face_crop import FaceCrop, FaceStitch
from .face_mask import FaceMask
from .face_similarity import FaceSimilarity
from .load_flashface import LoadFlashFace
from .runtime.model_folders import register_model_folders
from .samplers import (FlashFaceDDIMSampler, FlashFaceGuidance, FlashFaceGuider, FlashFaceSampler,
                       FlashFaceTrailingScheduler)

NODES = [
    LoadFlashFace,
    EncodeReferences,
    FaceMask,
    ApplyReferenceAttention,
    FlashFaceGuidance,
    FlashFaceSampler,
    FlashFaceGuider,
    FlashFaceTrailingScheduler,
    FlashFaceDDIMSampler,
    FaceSimilarity,
    FaceCrop,
    FaceStitch,
]


class FlashFaceExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        # Before the schemas are built: LoadFlashFace lists the flashface folder.
        register_model_folders()
        return NODES
