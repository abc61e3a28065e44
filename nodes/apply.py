"""ApplyReferenceAttention: a clone of the SD1.5 MODEL that is FlashFace and sees the references."""

import torch
from comfy_api.latest import io

from .base_checkpoint import MODEL_FIX, difference_patches, require_sd15_unet
from .loader import FlashFaceType
from .errors import FlashFaceNodeError
from .flashface_model import patch_main_unet
from .reference_call import ReferenceSettings, has_reference_attention, install_reference_attention
from .references import ReferencesType


class ApplyReferenceAttention(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ApplyReferenceAttention",
            display_name="FlashFace Apply Reference Attention",
            category="FlashFace",
            description="Turns your SD1.5 MODEL into FlashFace (a patched clone) that attends to the reference faces.",
            inputs=[
                io.Model.Input("model", tooltip="The MODEL of your SD1.5 checkpoint (LoRAs may be applied before or after)."),
                FlashFaceType.Input("flashface", tooltip="From LoadFlashFace."),
                ReferencesType.Input("references", tooltip="From EncodeReferences."),
                io.Conditioning.Input("negative", tooltip="The negative prompt: the official code conditions the "
                                                          "reference pass on it."),
                io.Float.Input("reference_strength", default=1.2, min=0.0, max=3.0, step=0.05,
                               tooltip="Reference feature strength after the launch step (official 'lamda_feat', "
                                       "0.7-1.4). Lower it if the face looks pasted on."),
                io.Float.Input("strength_before_launch", default=0.85, min=0.0, max=3.0, step=0.05,
                               tooltip="Reference strength before the launch step, and on every row with samplers "
                                       "other than FlashFace's (e.g. a plain KSampler)."),
                io.Mask.Input("face_mask", optional=True,
                              tooltip="Where the face should be (FaceMask). Not connected = no position constraint."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.01, optional=True,
                               tooltip="Sampling progress at which the references start to act."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.01, optional=True,
                               tooltip="Sampling progress after which the references stop acting."),
                io.Model.Input("base_model", optional=True,
                               tooltip="To keep your checkpoint's style: the MODEL of the SD1.5 base FlashFace was "
                                       "fine-tuned from (v1-5-pruned-emaonly). FlashFace is then applied as a "
                                       "difference on top of `model`. Not connected: FlashFace's own U-Net."),
                io.Float.Input("checkpoint_strength", default=1.0, min=0.0, max=2.0, step=0.05, optional=True,
                               tooltip="With base_model: how much of your checkpoint's change to SD1.5 is kept, "
                                       "W = W_flashface + strength * (W_model - W_base). 0 = plain FlashFace."),
            ],
            outputs=[io.Model.Output(display_name="model", tooltip="A FlashFace clone of the model.")],
        )

    @classmethod
    def execute(cls, model, flashface, references, negative, reference_strength, strength_before_launch,
                face_mask=None, start_percent=0.0, end_percent=1.0, base_model=None,
                checkpoint_strength=1.0) -> io.NodeOutput:
        if has_reference_attention(model):
            raise FlashFaceNodeError(
                "ApplyReferenceAttention: `model` already has FlashFace reference attention. Connect the "
                "checkpoint's MODEL instead; to use more photos, put them all into one EncodeReferences."
            )
        if not negative:
            raise FlashFaceNodeError("ApplyReferenceAttention: `negative` is empty; connect a CLIPTextEncode output.")
        if start_percent > end_percent:
            raise FlashFaceNodeError(
                f"ApplyReferenceAttention: start_percent ({start_percent}) is after end_percent ({end_percent})."
            )
        require_sd15_unet("model", model, flashface.weights, MODEL_FIX)
        differences = None if base_model is None else difference_patches(base_model, flashface.weights,
                                                                          checkpoint_strength)
        modules = flashface.modules_for(model)
        model_sampling = model.get_model_object("model_sampling")
        multiplicity = torch.tensor(references.multiplicity, dtype=torch.float64)
        settings = ReferenceSettings(
            latents=model.model.process_latent_in(references.latents),
            multiplicity=None if bool((multiplicity == 1).all()) else multiplicity,
            # The reference pass sees the negative prompt; each entry with its strength, as ComfyUI weighs conds.
            contexts=tuple((entry[0][:1], float(entry[1].get("strength", 1.0))) for entry in negative),
            reference_strength=reference_strength,
            strength_before_launch=strength_before_launch,
            sigma_start=float(model_sampling.percent_to_sigma(start_percent)),
            sigma_end=float(model_sampling.percent_to_sigma(end_percent)),
        )
        face_mask = None if face_mask is None else face_mask.reshape(-1, *face_mask.shape[-2:]).float().cpu()
        patched = model.clone()
        patch_main_unet(patched, flashface.weights, differences)
        install_reference_attention(patched, modules, settings, face_mask)
        return io.NodeOutput(patched)
