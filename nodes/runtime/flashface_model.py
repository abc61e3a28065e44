"""The FLASHFACE value LoadFlashFace outputs: the loaded weights, and what is built from them per host model.

* `FlashFaceModel`: the weights (frozen) plus, per host U-Net layout and devices, its `ReferenceModules`.
* `ReferenceModules`: the reference U-Net, the ten blocks' SA' layers and conv_in's mask channel.
  They are built from ComfyUI's casting layers (`comfy.ops.manual_cast`) and live in a ModelPatcher
  of their own that sampling loads with the main model (`set_additional_models`), so the memory
  manager moves, partially loads or offloads them like the U-Net, and they compute in the dtype of
  their input: the compute dtype of the model being sampled, whatever dtype the weights are kept in.
"""

import torch.nn as nn
from comfy_api.latest import io

import comfy.model_patcher
import comfy.ops
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

from ...flashface_core.checkpoint import FlashFaceWeights
from .errors import FlashFaceNodeError
from .node_ids import APPLY_REFERENCE_ATTENTION
from .reference_cache import attach_reference_store

OFFICIAL_GROUPNORM_EPS = 1e-6
CASTING_OPS = comfy.ops.manual_cast
FlashFaceType = io.Custom("FLASHFACE")


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


def block_key(block_name):
    """'middle_block.1' -> ('middle', 0, 0); 'output_blocks.7.1' -> ('output', 7, 0): ComfyUI's
    runtime (block, block_index) for the one transformer of that block."""
    parts = block_name.split(".")
    if parts[0] == "middle_block":
        return ("middle", 0, 0)
    if parts[0] == "output_blocks":
        return ("output", int(parts[1]), 0)
    raise ValueError(f"no reference attention in {block_name}")


def runtime_block_key(extra_options):
    """The (block, block_index) key of the transformer block a patch is called from, or None."""
    block = extra_options.get("block")
    if block is None:
        return None
    return (block[0], block[1], extra_options.get("block_index", 0))


class ReferenceModules(nn.Module):
    """The parts of FlashFace that SD1.5's U-Net lacks, as one module for ComfyUI's memory manager."""

    def __init__(self, reference_unet, ref_attn_weights, mask_conv_weight):
        super().__init__()
        self.block_names = {block_key(block): block for block in ref_attn_weights}
        self.reference_unet = reference_unet
        self.reference_attention = nn.ModuleDict(
            {_module_name(block): _projections(weights) for block, weights in ref_attn_weights.items()}
        )
        self.mask_conv = _layer(CASTING_OPS.Conv2d(1, mask_conv_weight.shape[0], mask_conv_weight.shape[-1],
                                                   padding=mask_conv_weight.shape[-1] // 2, bias=False,
                                                   device="meta"), mask_conv_weight)

    def projections(self, key):
        """The SA' layers of the block at runtime key `key` (see `block_key`)."""
        return self.reference_attention[_module_name(self.block_names[key])]


def _module_name(block):
    return block.replace(".", "_")


def _projections(weights):
    out_dim, in_dim = weights["to_q.weight"].shape
    layers = nn.Module()
    for name in ("to_q", "to_k", "to_v"):
        setattr(layers, name, _layer(CASTING_OPS.Linear(in_dim, out_dim, bias=False, device="meta"),
                                     weights[f"{name}.weight"]))
    layers.to_out = _layer(CASTING_OPS.Linear(out_dim, in_dim, device="meta"),
                           weights["to_out.0.weight"], weights["to_out.0.bias"])
    return layers


def _layer(layer, weight, bias=None):
    """`layer` holding the given frozen parameters themselves."""
    layer.weight = weight
    if bias is not None:
        layer.bias = bias
    return layer


def build_reference_modules(weights: FlashFaceWeights, model_patcher):
    """ReferenceModules for the host model's U-Net layout, in a ModelPatcher on its devices. They hold
    FlashFace's frozen parameters themselves, in the dtype LoadFlashFace gave them (no copy)."""
    unet_config = dict(model_patcher.model.model_config.unet_config, in_channels=4)
    reference_unet = UNetModel(**unet_config, device="meta", operations=CASTING_OPS)
    missing, unexpected = reference_unet.load_state_dict(weights.reference_unet_state_dict(), strict=False,
                                                         assign=True)
    if missing or unexpected:
        raise FlashFaceNodeError(
            f"{APPLY_REFERENCE_ATTENTION}: the FlashFace reference U-Net does not fit this model's U-Net layout "
            f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}). Use an SD1.5 checkpoint."
        )
    reference_unet.requires_grad_(False)
    set_groupnorm_eps(reference_unet)
    modules = ReferenceModules(reference_unet, weights.ref_attn, weights.mask_conv_weight)
    last = max(modules.block_names, key=lambda key: (key[0] == "output", key[1]))
    end_reference_unet_at(reference_unet, modules.block_names[last])
    return comfy.model_patcher.ModelPatcher(
        modules, load_device=model_patcher.load_device, offload_device=model_patcher.offload_device
    )


class NormOnlyBlock(nn.Module):
    """The reference U-Net's last reference block. FlashFace reads only its norm1 output (official
    `reference_unet.py`), so it stops there: it hands norm1(x) to the attn1 patches (the reference pass's
    capture) and returns x."""

    def __init__(self, block):
        super().__init__()
        self.norm1 = block.norm1

    def forward(self, x, context=None, transformer_options={}):
        normed = self.norm1(x)
        for patch in transformer_options.get("patches", {}).get("attn1_patch", []):
            normed = patch(normed, normed, normed, transformer_options)[0]
        return x


def end_reference_unet_at(reference_unet, last_block):
    """Drops what follows the last reference block's norm1 in the reference U-Net: the rest of that block,
    its proj_out and the output layers only make an image nobody uses (~4 GFLOP per reference)."""
    transformer = reference_unet.get_submodule(last_block)
    transformer.transformer_blocks[0] = NormOnlyBlock(transformer.transformer_blocks[0])
    transformer.proj_out = nn.Identity()
    reference_unet.out = nn.Identity()


def set_groupnorm_eps(module):
    for layer in module.modules():
        if isinstance(layer, nn.GroupNorm):
            layer.eps = OFFICIAL_GROUPNORM_EPS
