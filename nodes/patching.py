"""FlashFace inside a ComfyUI MODEL: weight patches, the reference U-Net, reference attention.

Data flow of one model call (the DIFFUSION_MODEL wrapper below):
the guider asks for 2 or 3 predictions -> `ReferenceAttentionWrapper.__call__` works out each
row's strength -> `run_reference_pass` runs the reference U-Net once at this timestep and
projects the ten blocks' stored hidden states to keys/values -> the main U-Net runs with
`add_mask_channel`, in the ten blocks `add_reference_attention`, and `SharedRows` (work of
rows with identical inputs done once, shared_rows.py) -> the stored states are dropped in a `finally`.
"""

import logging
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

import comfy.model_patcher
import comfy.ops
import comfy.patcher_extension
from comfy.ldm.modules.attention import optimized_attention
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

from ..flashface_core.checkpoint import FlashFaceWeights
from ..flashface_core.masks import latent_mask
from ..flashface_core.reference_attention import attention_lse_for, project_references, reference_attention
from .errors import FlashFaceNodeError
from .shared_rows import SharedRows, active_plan, share_skip_halves

log = logging.getLogger(__name__)

WRAPPER_KEY = "flashface"
# transformer_options key a guider sets to give each cond (by its index in the guider's
# cond list, i.e. cond_or_uncond) a role; rows of conds without a role use EARLY.
ROLES_KEY = "flashface_roles"
FULL, OFF, EARLY = "full", "off", "early"
OFFICIAL_GROUPNORM_EPS = 1e-6


def block_key(block_name):
    """'middle_block.1' -> ('middle', 0, 0); 'output_blocks.7.1' -> ('output', 7, 0): ComfyUI's
    runtime (block, block_index) for the one transformer of that block."""
    parts = block_name.split(".")
    if parts[0] == "middle_block":
        return ("middle", 0, 0)
    if parts[0] == "output_blocks":
        return ("output", int(parts[1]), 0)
    raise ValueError(f"no reference attention in {block_name}")


def _runtime_key(extra_options):
    block = extra_options.get("block")
    if block is None:
        return None
    return (block[0], block[1], extra_options.get("block_index", 0))


# ---------------------------------------------------------------------------------------
# Modules ComfyUI manages next to the main U-Net


class FlashFaceModules(nn.Module):
    """The parts of FlashFace that are not in SD1.5's U-Net, as one module so that ComfyUI's
    memory manager loads and offloads them together with the model."""

    def __init__(self, reference_unet, ref_attn_weights, mask_conv_weight, dtype):
        super().__init__()
        self.block_names = {block_key(block): block for block in ref_attn_weights}
        self.reference_unet = reference_unet
        self.reference_attention = nn.ModuleDict()
        for block, weights in ref_attn_weights.items():
            self.reference_attention[block.replace(".", "_")] = _projections(weights, dtype)
        self.mask_conv_weight = nn.Parameter(mask_conv_weight.to(dtype), requires_grad=False)

    def block_weights(self, block, dtype):
        """The block's SA' weights in the compute dtype (a no-op cast when they match)."""
        layers = self.reference_attention[block.replace(".", "_")]
        return {
            "to_q.weight": layers.to_q.weight.to(dtype),
            "to_k.weight": layers.to_k.weight.to(dtype),
            "to_v.weight": layers.to_v.weight.to(dtype),
            "to_out.0.weight": layers.to_out.weight.to(dtype),
            "to_out.0.bias": layers.to_out.bias.to(dtype),
        }


def _projections(weights, dtype):
    out_dim, in_dim = weights["to_q.weight"].shape
    layers = nn.Module()
    for name in ("to_q", "to_k", "to_v"):
        setattr(layers, name, _frozen_linear(weights[f"{name}.weight"], None, dtype))
    layers.to_out = _frozen_linear(weights["to_out.0.weight"], weights["to_out.0.bias"], dtype)
    return layers


def _frozen_linear(weight, bias, dtype):
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    layer.weight = nn.Parameter(weight.to(dtype), requires_grad=False)
    if bias is not None:
        layer.bias = nn.Parameter(bias.to(dtype), requires_grad=False)
    return layer


def build_flashface_modules(weights: FlashFaceWeights, model_patcher):
    """The reference U-Net (4 input channels, the host model's own config and dtype) and the
    extra attention/mask weights, wrapped in a ModelPatcher on the host model's devices."""
    base = model_patcher.model
    dtype = base.get_dtype()
    unet_config = dict(base.model_config.unet_config, in_channels=4)
    operations = comfy.ops.pick_operations(unet_config.get("dtype"), base.manual_cast_dtype)
    reference_unet = UNetModel(**unet_config, device="meta", operations=operations)
    state_dict = {k: v.to(dtype) for k, v in weights.reference_unet_state_dict().items()}
    missing, unexpected = reference_unet.load_state_dict(state_dict, strict=False, assign=True)
    if missing or unexpected:
        raise FlashFaceNodeError(
            "ApplyReferenceAttention: the FlashFace reference U-Net does not fit this model's U-Net layout "
            f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}). Use an SD1.5 checkpoint."
        )
    set_groupnorm_eps(reference_unet)
    modules = FlashFaceModules(reference_unet, weights.ref_attn, weights.mask_conv_weight, dtype)
    return comfy.model_patcher.ModelPatcher(
        modules, load_device=model_patcher.load_device, offload_device=model_patcher.offload_device
    )


def set_groupnorm_eps(module):
    for layer in module.modules():
        if isinstance(layer, nn.GroupNorm):
            layer.eps = OFFICIAL_GROUPNORM_EPS


# ---------------------------------------------------------------------------------------
# Main U-Net: FlashFace weights and GroupNorm eps as patches on a clone


def patch_main_unet(model_patcher, weights: FlashFaceWeights, weight_patches=None):
    """Replace the SD1.5 weights by FlashFace's with 'set' patches placed *first* on each key,
    so LoRA patches added before or after this node still apply on top of FlashFace.
    `weight_patches` (key -> patch value) replaces the 'set' patches, e.g. base_checkpoint.py's
    differences. The caller has checked the model's shapes (base_checkpoint.require_sd15_unet)."""
    patches = weight_patches or {f"diffusion_model.{key}": ("set", (tensor,)) for key, tensor in weights.unet.items()}
    for key in model_patcher.add_patches(patches):
        key_patches = model_patcher.patches[key]
        key_patches.insert(0, key_patches.pop())
    # Every GroupNorm, whatever its current eps: the shared module may be patched by another clone now.
    for name, layer in model_patcher.model.diffusion_model.named_modules():
        if isinstance(layer, nn.GroupNorm):
            model_patcher.add_object_patch(f"diffusion_model.{name}.eps", OFFICIAL_GROUPNORM_EPS)


# ---------------------------------------------------------------------------------------
# Per-call reference attention


class _ReferencePassDone(Exception):
    """Raised from the last capture point: nothing after it in the reference U-Net is used."""


@dataclass
class ReferenceSettings:
    latents: torch.Tensor  # [N, 4, h, w], already in the model's latent space
    multiplicity: torch.Tensor | None  # [N] or None when all 1
    context: torch.Tensor  # [1, L, C] negative-prompt embedding for the reference pass
    reference_strength: float
    strength_before_launch: float
    face_mask: torch.Tensor | None  # [M, H, W] pixel or latent resolution
    sigma_start: float  # active while sigma_end <= sigma <= sigma_start
    sigma_end: float


class ReferenceAttentionWrapper:
    """DIFFUSION_MODEL wrapper that makes one U-Net call a FlashFace call."""

    def __init__(self, modules_patcher, settings: ReferenceSettings):
        self.modules_patcher = modules_patcher
        self.settings = settings

    @property
    def modules(self) -> FlashFaceModules:
        return self.modules_patcher.model

    def __call__(self, executor, x, timesteps, context, y, control, transformer_options, **kwargs):
        strengths = self.row_strengths(transformer_options, x.shape[0]).to(x.device, x.dtype)
        call = ReferenceCall(self.modules, strengths)
        try:
            if bool((strengths != 0).any()):
                call.references = self.run_reference_pass(timesteps, x)
            call.mask_rows = self.mask_rows(transformer_options, x)
            call.shared_rows = SharedRows.plan(executor.class_obj, x, timesteps, context, y, control,
                                               call.mask_rows, transformer_options)
            with active_plan(call.shared_rows):
                out = executor(x, timesteps, context, y, control, call.install(transformer_options), **kwargs)
            call.check_all_blocks_ran()
            return out
        finally:
            call.release()

    def row_strengths(self, transformer_options, batch):
        """Each row's reference strength from its cond's role (see ROLES_KEY)."""
        s = self.settings
        sigma = transformer_options.get("sigmas")
        if sigma is not None and not (s.sigma_end <= float(sigma.reshape(-1)[0]) <= s.sigma_start):
            return torch.zeros(batch)
        value = {FULL: s.reference_strength, OFF: 0.0, EARLY: s.strength_before_launch}
        cond_indices = transformer_options.get("cond_or_uncond") or [0]
        roles = transformer_options.get(ROLES_KEY, ())
        per_chunk = [value[roles[i]] if i < len(roles) else value[EARLY] for i in cond_indices]
        return torch.tensor(per_chunk).repeat_interleave(batch // len(cond_indices))

    def mask_rows(self, transformer_options, x):
        """The face-position mask for every row at latent size, or None (no constraint)."""
        mask = self.settings.face_mask
        if mask is None:
            return None
        chunks = len(transformer_options.get("cond_or_uncond") or [0])
        samples = x.shape[0] // chunks
        mask = latent_mask(mask, x.shape[-2], x.shape[-1]).to(x.device, x.dtype)
        per_sample = mask[torch.arange(samples) % mask.shape[0]]
        return per_sample.repeat(chunks, 1, 1).unsqueeze(1)

    def run_reference_pass(self, timesteps, x):
        """The ten blocks' reference keys/values for this step (projected once, shared by all rows)."""
        states = self.capture_reference_states(timesteps, x)
        return {
            key: project_references(states[key], self.modules.block_weights(block, x.dtype), self.settings.multiplicity)
            for key, block in self.modules.block_names.items()
        }

    def capture_reference_states(self, timesteps, x):
        """The reference U-Net on the clean reference latents at this step's timestep, conditioned on
        the negative prompt; returns each block's normed hidden states [N, tokens, C] (norm1 output)."""
        wanted = self.modules.block_names
        last = max(wanted, key=lambda k: (k[0] == "output", k[1]))
        captured = {}

        def capture(n, context_attn1, value_attn1, extra_options):
            key = _runtime_key(extra_options)
            if key in wanted:
                captured[key] = n
                if key == last:
                    raise _ReferencePassDone
            return n, context_attn1, value_attn1

        latents = self.settings.latents.to(x.device, x.dtype)
        count = latents.shape[0]
        context = self.settings.context.to(x.device, x.dtype).expand(count, -1, -1)
        try:
            self.modules.reference_unet(
                latents, timesteps[:1].expand(count), context,
                transformer_options={"patches": {"attn1_patch": [capture]}},
            )
        except _ReferencePassDone:
            pass
        if captured.keys() != wanted.keys():
            raise RuntimeError(
                "FlashFace: the reference U-Net never reached blocks "
                f"{sorted(wanted[k] for k in wanted.keys() - captured.keys())}; this ComfyUI version "
                "names its transformer blocks differently. Please report it with your ComfyUI version."
            )
        return captured


@dataclass
class ReferenceCall:
    """State of one U-Net call: row strengths, projected references, rows' masks."""

    modules: FlashFaceModules
    strengths: torch.Tensor
    references: dict = field(default_factory=dict)
    mask_rows: torch.Tensor | None = None
    shared_rows: "SharedRows | None" = None
    pending: torch.Tensor | None = None
    blocks_seen: set = field(default_factory=set)

    def install(self, transformer_options):
        """A copy of transformer_options with this call's patches appended to the user's."""
        options = dict(transformer_options)
        patches = {k: list(v) for k, v in options.get("patches", {}).items()}
        patches.setdefault("attn1_patch", []).append(self.capture_normed_input)
        patches.setdefault("attn1_output_patch", []).append(self.add_reference_attention)
        if self.mask_rows is not None:
            patches.setdefault("input_block_patch", []).append(self.add_mask_channel)
        if self.shared_rows is not None:
            self.shared_rows.add_patches(patches)
        options["patches"] = patches
        return options

    def capture_normed_input(self, n, context_attn1, value_attn1, extra_options):
        if _runtime_key(extra_options) in self.modules.block_names:
            self.pending = n
        return n, context_attn1, value_attn1

    def add_reference_attention(self, n, extra_options):
        key = _runtime_key(extra_options)
        block = self.modules.block_names.get(key)
        if block is None:
            return n
        normed, self.pending = self.pending, None
        self.blocks_seen.add(key)
        term = reference_attention(
            normed, self.strengths, self.modules.block_weights(block, normed.dtype), extra_options["n_heads"],
            self.references.get(key), attention=optimized_attention, attention_lse=attention_lse_for(normed.device),
        )
        return n + term

    def add_mask_channel(self, h, transformer_options):
        """conv_in's 5th input channel: conv(mask, W[:, 4:5]) added to the 4-channel conv output."""
        if transformer_options.get("block") != ("input", 0):
            return h
        weight = self.modules.mask_conv_weight.to(h.dtype)
        return h + F.conv2d(self.mask_rows.to(h.dtype), weight, padding=weight.shape[-1] // 2)

    def check_all_blocks_ran(self):
        names = self.modules.block_names
        missing = names.keys() - self.blocks_seen
        if missing:
            raise RuntimeError(
                f"FlashFace: reference attention never ran in blocks {sorted(names[k] for k in missing)}; "
                "this ComfyUI version names its transformer blocks differently. Please report it."
            )

    def release(self):
        self.references = {}
        self.mask_rows = None
        self.shared_rows = None
        self.pending = None


def install_reference_attention(model_patcher, modules_patcher, settings: ReferenceSettings):
    model_patcher.add_wrapper_with_key(
        comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY,
        ReferenceAttentionWrapper(modules_patcher, settings),
    )
    model_patcher.set_additional_models(WRAPPER_KEY, [modules_patcher])
    share_skip_halves(model_patcher)


def has_reference_attention(model_patcher):
    wrappers = model_patcher.wrappers.get(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, {})
    return bool(wrappers.get(WRAPPER_KEY))
