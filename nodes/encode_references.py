"""EncodeReferences: reference photos -> the face crops FlashFace sees -> their VAE latents."""

import numpy as np
import torch
from comfy_api.latest import io

from ..flashface_core.faces.references import CROP_MODES, POLICIES, prepare_reference_crops
from ..flashface_core.reference_weights import OFFICIAL_REFERENCE_COUNT, parse_reference_weights, reference_multiplicity
from .runtime.detectors import detector_input, image_to_uint8, load_detector
from .runtime.errors import FlashFaceNodeError
from .runtime.flashface_model import FlashFaceType
from .runtime.node_ids import ENCODE_REFERENCES
from .runtime.reference_set import ReferenceSet, ReferencesType

REFERENCE_SIZE = 224  # the official crop size: 28x28 latents


class EncodeReferences(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=ENCODE_REFERENCES,
            display_name="FlashFace Encode References",
            category="FlashFace",
            description="Detects, aligns and crops the face in each reference photo and VAE-encodes the crops.",
            inputs=[
                FlashFaceType.Input("flashface", tooltip="From LoadFlashFace; checks the VAE fits its reference U-Net."),
                io.Vae.Input("vae", tooltip="Your SD1.5 checkpoint's VAE."),
                io.Image.Input("images", tooltip="Reference photos of the person (a batch; any number)."),
                detector_input(),
                io.Combo.Input("multiple_faces", options=list(POLICIES), default="largest",
                               tooltip="A photo with several faces: 'largest' takes the biggest one, 'error' stops, "
                                       "'skip' drops that photo (and photos without a face)."),
                io.Combo.Input("crop", options=list(CROP_MODES), default="face",
                               tooltip="'face' makes the official aligned face crop; 'none' uses each image whole "
                                       "(for images that already are face crops)."),
                io.String.Input("weights", default="", optional=True,
                                tooltip="Optional weight per image, e.g. '1,1,2' (empty = all 1). A weight of 2 "
                                        "counts that face like two copies of it."),
                io.Int.Input("pad_to", default=OFFICIAL_REFERENCE_COUNT, min=0, max=64, optional=True,
                             tooltip="Count fewer photos as this many, like the official demo's padding of "
                                     "1-3 photos to 4 copies (free here: no extra compute). 0 = no padding."),
            ],
            outputs=[
                ReferencesType.Output(display_name="references", tooltip="Reference latents for ApplyReferenceAttention."),
                io.Image.Output(display_name="face_crops", tooltip="The 224x224 crops the model sees, for preview."),
            ],
        )

    @classmethod
    def execute(cls, flashface, vae, images, detector="auto", multiple_faces="largest", crop="face", weights="",
                pad_to=OFFICIAL_REFERENCE_COUNT) -> io.NodeOutput:
        pictures = image_to_uint8(images)
        try:
            user_weights = parse_reference_weights(weights, len(pictures))
        except ValueError as error:
            raise FlashFaceNodeError(f"{ENCODE_REFERENCES}: weights: {error}") from error
        found = load_detector(ENCODE_REFERENCES, detector) if crop == "face" else None
        try:
            crops, kept, _ = prepare_reference_crops(pictures, found, multiple_faces, crop, REFERENCE_SIZE)
        except ValueError as error:
            raise FlashFaceNodeError(f"{ENCODE_REFERENCES}: images: {error}") from error
        pixels = torch.from_numpy(np.stack(crops)).float() / 255.0
        latents = vae.encode(pixels).float().cpu()
        expected = flashface.weights.ref_unet["input_blocks.0.0.weight"].shape[1]
        if latents.shape[1] != expected:
            raise FlashFaceNodeError(
                f"{ENCODE_REFERENCES}: vae makes {latents.shape[1]}-channel latents, FlashFace needs {expected}. "
                "Use the VAE of an SD1.5 checkpoint."
            )
        multiplicity = reference_multiplicity([user_weights[i] for i in kept], pad_to)
        return io.NodeOutput(ReferenceSet(latents, multiplicity), pixels)
