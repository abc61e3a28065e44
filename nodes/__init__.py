"""ComfyUI glue for FlashFace; the math lives in flashface_core."""

from typing_extensions import override

from comfy_api.latest import ComfyExtension, io

from .apply import ApplyReferenceAttention
from .face_crop import FaceCrop, FaceStitch
from .loader import LoadFlashFace, register_model_folders
from .masks import FaceMask
from .references import EncodeReferences
from .similarity import FaceSimilarity
from .sampler_nodes import (FlashFaceDDIMSampler, FlashFaceGuidance, FlashFaceGuider, FlashFaceSampler,
                            FlashFaceTrailingScheduler)


class FlashFaceExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        # Before the schemas are built: LoadFlashFace lists the flashface folder.
        register_model_folders()
        return [
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
