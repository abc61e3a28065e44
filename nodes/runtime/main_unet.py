"""FlashFace's main U-Net on a clone of the user's MODEL, in one of two ways.

* FlashFace's own weights and GroupNorm eps 1e-6 as object patches: while the clone is loaded its
  modules hold FlashFace's own parameters, so no patched copy of the U-Net is made, and LoRA patches
  (added before or after) are computed on top of FlashFace's weights. When FlashFace is kept in another
  dtype than the model, the clone casts weights at run time (as ModelComputeDtype does) instead of
  keeping a converted copy.
* With ApplyReferenceAttention's `base_model`: FlashFace as a difference on top of the user's SD1.5
  checkpoint. Each main-U-Net weight FlashFace has gets, first on its key, a `FlashFaceDifference` weight adapter.
ComfyUI's calculate_weight hands it its working copy of the user model's stored weight (when the model
is loaded; in lowvram mode at every forward) and it turns that into W_flashface + strength * (W_user - W_base)
in place (flashface_core/any_checkpoint.py). W_base is the base MODEL's own parameter: referenced, never
copied, only moved to the compute device key by key. LoRAs later on the key apply on top.
"""

import uuid

import torch
import torch.nn as nn

import comfy.model_patcher
import comfy.weight_adapter

from ...flashface_core.any_checkpoint import add_flashface_difference_, unet_mismatch
from ...flashface_core.checkpoint import FlashFaceWeights
from .errors import FlashFaceNodeError
from .flashface_model import OFFICIAL_GROUPNORM_EPS
from .node_ids import APPLY_REFERENCE_ATTENTION

UNET_PREFIX = "diffusion_model."
MODEL_FIX = "Load an SD1.5 checkpoint (CheckpointLoaderSimple) and connect its MODEL."
BASE_FIX = ("Connect the MODEL of plain SD1.5 (v1-5-pruned-emaonly.safetensors, loaded with "
            "CheckpointLoaderSimple): FlashFace's change is measured from it.")


class FlashFaceDifference(comfy.weight_adapter.WeightAdapterBase):
    """One weight's W_flashface + strength * (W_user - W_base); `weight` is W_user when this patch is first."""

    name = "flashface_difference"

    def __init__(self, flashface_weight, base_weight, base_convert, strength):
        self.flashface_weight = flashface_weight
        self.base_weight = base_weight
        self.base_convert = base_convert  # ComfyUI's per-layer decode of stored weights (e.g. scaled fp8) or None
        self.strength = strength

    def calculate_weight(self, weight, key, strength, strength_model, offset, function,
                         intermediate_dtype=None, original_weight=None):
        base = self.base_weight
        if self.base_convert is not None:  # decoded in float32, as ComfyUI decodes the user's weight
            base = self.base_convert(base.to(weight.device, torch.float32, copy=True), inplace=True)
        return add_flashface_difference_(weight, self.flashface_weight, base, self.strength)


def require_sd15_unet(input_name, model_patcher, weights: FlashFaceWeights, fix):
    """Raise, naming the input and what it holds, unless the MODEL has every FlashFace main-U-Net key
    with FlashFace's shape (4-channel conv_in, SD1.5's text context)."""
    found = {key.removeprefix(UNET_PREFIX): tuple(tensor.shape)
             for key, tensor in model_patcher.model_state_dict(UNET_PREFIX).items()}
    mismatch = unet_mismatch({key: tuple(tensor.shape) for key, tensor in weights.unet.items()}, found)
    if mismatch:
        raise FlashFaceNodeError(
            f"{APPLY_REFERENCE_ATTENTION}: `{input_name}` is not an SD1.5 U-Net that FlashFace fits: {mismatch}. {fix}"
        )


def difference_patches(base_model, weights: FlashFaceWeights, strength):
    """Key -> FlashFaceDifference for every FlashFace main-U-Net weight, on the base MODEL's stored
    weights (the originals, also while a patched or FlashFace clone of it is loaded). A base with weight patches
    (a LoRA, a merge) is refused: the difference must be taken from the SD1.5 FlashFace started from."""
    require_sd15_unet("base_model", base_model, weights, BASE_FIX)
    stored = base_model.get_key_patches(UNET_PREFIX)  # the unpatched originals even while a clone is loaded
    keys = [UNET_PREFIX + key for key in weights.unet]
    patched = [key for key in keys if len(stored[key]) > 1]
    if patched:
        raise FlashFaceNodeError(
            f"{APPLY_REFERENCE_ATTENTION}: `base_model` has weight patches (a LoRA or a merge?) on {len(patched)} "
            f"U-Net weights, e.g. {patched[0].removeprefix(UNET_PREFIX)}. {BASE_FIX} Put LoRAs on `model`."
        )
    # While a FlashFace clone of the base is loaded, its modules hold FlashFace's parameters (object
    # patches); the originals are then in the object-patch backup that all clones share.
    originals = base_model.object_patches_backup
    differences = {}
    for key in keys:
        _, _, convert = comfy.model_patcher.get_key_weight(base_model.model, key)
        differences[key] = FlashFaceDifference(weights.unet[key.removeprefix(UNET_PREFIX)],
                                               originals.get(key, stored[key][0][0]), convert, strength)
    return differences


def patch_main_unet(model_patcher, weights: FlashFaceWeights, differences=None):
    """FlashFace's main U-Net on a clone: its parameters and GroupNorm eps as object patches. With
    `differences` (key -> weight adapter, `difference_patches`) FlashFace is instead a weight patch placed
    *first* on each key, computed from the user's weight, so LoRAs still apply on top. The caller has
    checked the model's shapes (`require_sd15_unet`)."""
    if differences:
        for key in model_patcher.add_patches(differences):
            key_patches = model_patcher.patches[key]
            key_patches.insert(0, key_patches.pop())
    else:
        for key, parameter in weights.unet.items():
            model_patcher.add_object_patch(f"diffusion_model.{key}", parameter)
        # The dtype the model stores its weights in (its modules may hold another clone's patches now).
        if any(p.dtype != model_patcher.model.get_dtype() for p in weights.unet.values()):
            model_patcher.force_cast_weights = True
    # Other weights than its source's: ComfyUI must load this clone anew (move these parameters to the
    # load device, apply the casting flag) instead of reusing a loaded clone with the same patches.
    model_patcher.patches_uuid = uuid.uuid4()
    # Every GroupNorm, whatever its current eps: the shared module may be patched by another clone now.
    for name, layer in model_patcher.model.diffusion_model.named_modules():
        if isinstance(layer, nn.GroupNorm):
            model_patcher.add_object_patch(f"diffusion_model.{name}.eps", OFFICIAL_GROUPNORM_EPS)
