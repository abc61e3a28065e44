"""ApplyReferenceAttention: a clone of the SD1.5 MODEL that is FlashFace and sees the references."""

import torch
from comfy_api.latest import io

from ..flashface_core.guidance import GuidanceSettings
from .runtime.errors import FlashFaceNodeError
from .runtime.flashface_model import FlashFaceType
from .runtime.guidance import guidance_settings, set_guidance
from .runtime.main_unet import MODEL_FIX, difference_patches, patch_main_unet, require_sd15_unet
from .runtime.node_ids import APPLY_REFERENCE_ATTENTION as NODE
from .runtime.reference_call import ReferenceSettings, install_reference_attention, reference_attention_wrapper
from .runtime.reference_set import ReferencesType

FACE_MASK_INPUT, NOISE_MASK = "face_mask input", "noise mask"
MAX_IDENTITIES = 4  # a longer chain costs a reference pass per identity and leaves each face a few tokens


class ApplyReferenceAttention(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=NODE,
            display_name="FlashFace Apply Reference Attention",
            category="FlashFace",
            description="Turns your SD1.5 MODEL into FlashFace (a patched clone) that attends to the reference faces. "
                        "Chain several (each with its own references and region) for several people in one image.",
            inputs=[
                io.Model.Input("model", tooltip="The MODEL of your SD1.5 checkpoint (LoRAs may be applied before or "
                                                "after), or the MODEL of another ApplyReferenceAttention to add a "
                                                f"person (up to {MAX_IDENTITIES} in one chain)."),
                FlashFaceType.Input("flashface", tooltip="From LoadFlashFace."),
                ReferencesType.Input("references", tooltip="From EncodeReferences."),
                io.Conditioning.Input("negative", tooltip="The negative prompt: the official code conditions the "
                                                          "reference pass on it."),
                io.Float.Input("reference_strength", default=1.2, min=0.0, max=3.0, step=0.05,
                               tooltip="Reference feature strength after the launch step (official 'lamda_feat', "
                                       "0.7-1.4). Lower it if the face looks pasted on."),
                io.Float.Input("strength_before_launch", default=0.85, min=0.0, max=3.0, step=0.05,
                               tooltip="Reference strength before the launch step (the launch_timestep of the "
                                       "sampler or of FlashFaceGuidance)."),
                io.Mask.Input("face_mask", optional=True,
                              tooltip="Where the face should be (FaceMask). Not connected = no position constraint. "
                                      "In a chain the face masks of all people are joined."),
                io.Mask.Input("region", optional=True,
                              tooltip="Where this person's references act (e.g. FaceMask 'person_region'), any size: "
                                      "image or latent resolution, one mask or one per image. Not connected = the "
                                      "whole image. Where regions overlap they share the strength."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.01, optional=True,
                               tooltip="Sampling progress at which the references start to act."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.01, optional=True,
                               tooltip="Sampling progress after which the references stop acting."),
                io.Model.Input("base_model", optional=True,
                               tooltip="To keep your checkpoint's style: the MODEL of the SD1.5 base FlashFace was "
                                       "fine-tuned from (v1-5-pruned-emaonly). FlashFace is then applied as a "
                                       "difference on top of `model`. Not connected: FlashFace's own U-Net. "
                                       "In a chain, only on the first node."),
                io.Float.Input("checkpoint_strength", default=1.0, min=0.0, max=2.0, step=0.05, optional=True,
                               tooltip="With base_model: how much of your checkpoint's change to SD1.5 is kept, "
                                       "W = W_flashface + strength * (W_model - W_base). 0 = plain FlashFace."),
                io.Combo.Input("face_mask_from", options=[FACE_MASK_INPUT, NOISE_MASK], default=FACE_MASK_INPUT,
                               optional=True,
                               tooltip="'noise mask': the face goes where the sampler's noise mask is (the latent's "
                                       "mask, e.g. from SetLatentNoiseMask or FaceCrop), which follows a detailer's "
                                       "crop. 'face_mask input': the face_mask input (not connected = anywhere)."),
            ],
            outputs=[io.Model.Output(display_name="model", tooltip="A FlashFace clone of the model.")],
        )

    @classmethod
    def execute(cls, model, flashface, references, negative, reference_strength, strength_before_launch,
                face_mask=None, start_percent=0.0, end_percent=1.0, base_model=None,
                checkpoint_strength=1.0, region=None, face_mask_from=FACE_MASK_INPUT) -> io.NodeOutput:
        if not negative:
            raise FlashFaceNodeError(f"{NODE}: `negative` is empty; connect a CLIPTextEncode output.")
        if face_mask_from == NOISE_MASK and face_mask is not None:
            raise FlashFaceNodeError(f"{NODE}: face_mask_from is 'noise mask' and face_mask is connected too. "
                                     "Disconnect face_mask, or set face_mask_from to 'face_mask input'.")
        if start_percent > end_percent:
            raise FlashFaceNodeError(f"{NODE}: start_percent ({start_percent}) is after end_percent ({end_percent}).")
        chain = reference_attention_wrapper(model)
        earlier = chain.identities if chain is not None else ()
        if chain is not None:
            check_chain(chain, model, flashface, base_model)
        else:
            require_sd15_unet("model", model, flashface.weights, MODEL_FIX)
        face_mask = None if face_mask is None else face_mask.reshape(-1, *face_mask.shape[-2:]).float().cpu()
        region = None if region is None else region.reshape(-1, *region.shape[-2:]).float().cpu()
        check_masks(face_mask, region, earlier)
        differences = None if base_model is None else difference_patches(base_model, flashface.weights,
                                                                          checkpoint_strength)
        modules = flashface.modules_for(model)  # in a chain: the same modules (check_chain)
        model_sampling = model.get_model_object("model_sampling")
        multiplicity = torch.tensor(references.multiplicity, dtype=torch.float64)
        identity = ReferenceSettings(
            latents=model.model.process_latent_in(references.latents),
            multiplicity=None if bool((multiplicity == 1).all()) else multiplicity,
            # The reference pass sees the negative prompt; each entry with its strength, as ComfyUI weighs conds.
            contexts=tuple((entry[0][:1], float(entry[1].get("strength", 1.0))) for entry in negative),
            reference_strength=reference_strength,
            strength_before_launch=strength_before_launch,
            sigma_start=float(model_sampling.percent_to_sigma(start_percent)),
            sigma_end=float(model_sampling.percent_to_sigma(end_percent)),
            face_mask=face_mask,
            face_mask_from_noise_mask=face_mask_from == NOISE_MASK,
            region=region,
        )
        patched = model.clone()
        if chain is None:
            patch_main_unet(patched, flashface.weights, differences)
        if guidance_settings(patched.model_options.get("transformer_options", {})) is None:
            set_guidance(patched, GuidanceSettings())
        install_reference_attention(patched, modules, earlier + (identity,), flashface.name)
        return io.NodeOutput(patched)


def check_chain(chain, model, flashface, base_model):
    """A chained Apply adds an identity to the same FlashFace model (its weights are already in place)."""
    if flashface.modules_for(model) is not chain.modules_patcher:
        raise FlashFaceNodeError(
            f"{NODE}: flashface: `model` already has FlashFace '{chain.flashface_name}' applied, this node gets "
            f"'{flashface.name}'. Connect the same LoadFlashFace to every ApplyReferenceAttention of a chain."
        )
    if base_model is not None:
        raise FlashFaceNodeError(
            f"{NODE}: base_model: `model` comes from another ApplyReferenceAttention, which already chose the "
            "U-Net. Connect base_model to the first ApplyReferenceAttention of the chain only."
        )
    if len(chain.identities) >= MAX_IDENTITIES:
        raise FlashFaceNodeError(
            f"{NODE}: model: this chain already holds {len(chain.identities)} people, the most one image can "
            f"have ({MAX_IDENTITIES}). Put several photos of one person into one EncodeReferences instead."
        )


def check_masks(face_mask, region, earlier):
    """Masks the sampler can use: values in 0..1; one mask or one per image, the same count for every
    mask of the chain; a region that is not empty unless other people act elsewhere."""
    for name, mask in (("region", region), ("face_mask", face_mask)):
        if mask is not None and not (bool(torch.isfinite(mask).all()) and 0 <= float(mask.min()) <= float(mask.max()) <= 1):
            raise FlashFaceNodeError(f"{NODE}: {name}: values must lie in 0..1 (a MASK); got "
                                     f"{float(mask.min()):g}..{float(mask.max()):g}.")
    masks = [m for i in earlier for m in (i.face_mask, i.region)] + [face_mask, region]
    batches = {m.shape[0] for m in masks if m is not None} - {1}
    if len(batches) > 1:
        raise FlashFaceNodeError(
            f"{NODE}: region/face_mask: batch sizes {sorted(batches)} do not fit together (the face masks and "
            "regions of every person in the chain). Give one mask, or one per image of the same batch."
        )
    if region is not None and not bool(region.any()) and not earlier:
        raise FlashFaceNodeError(
            f"{NODE}: region is all zero: the references would act nowhere. Draw the region where the person "
            "goes, or leave it unconnected (the whole image)."
        )
