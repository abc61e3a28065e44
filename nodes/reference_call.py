"""One FlashFace U-Net call inside ComfyUI's sampling.

The DIFFUSION_MODEL wrapper `ReferenceAttentionWrapper` turns each U-Net call into a FlashFace call:
it works out every row's reference strength from its cond's role, runs the reference U-Net once at
this timestep (keys/values projected once, shared by all rows), and runs the main U-Net with three
patches: conv_in's mask channel, the capture of each reference block's norm1 output (first in the
attn1_patch list, so it sees the block's own tokens even under ToMe or HyperTile) and the SA' term
(last in the attn1_output_patch list, after such patches have restored the tokens). Everything a
call holds lives in one `FlashFaceCall`, dropped in a `finally`.

The face-position mask reaches the U-Net as a model cond (`FACE_MASK_COND`, added by an object
patch of the model's `extra_conds`), so ComfyUI crops it with the latent for area conds and batches
it with the rows.
"""

import functools
from dataclasses import dataclass, field

import comfy.conds
import comfy.patcher_extension
import torch
from comfy.ldm.modules.attention import optimized_attention

from ..flashface_core.masks import latent_mask
from ..flashface_core.reference_attention import attention_lse_for, project_references, reference_attention
from .flashface_model import ReferenceModules, runtime_block_key
from .reference_cache import cached_reference_states
from .shared_rows import SharedRows

WRAPPER_KEY = "flashface"
FACE_MASK_COND = "flashface_face_mask"
# transformer_options key a guider sets to give each cond (by its index in the guider's cond list,
# i.e. cond_or_uncond) a role; rows of conds without a role use EARLY.
ROLES_KEY = "flashface_roles"
FULL, OFF, EARLY = "full", "off", "early"


@dataclass(frozen=True)
class ReferenceSettings:
    latents: torch.Tensor  # [N, 4, h, w], already in the model's latent space
    multiplicity: torch.Tensor | None  # [N] or None when all 1
    contexts: tuple  # ((context [1, L, C], weight), ...): the negative prompt's entries
    reference_strength: float
    strength_before_launch: float
    sigma_start: float  # active while sigma_end <= sigma <= sigma_start
    sigma_end: float


class ReferenceAttentionWrapper:
    """DIFFUSION_MODEL wrapper that makes one U-Net call a FlashFace call."""

    def __init__(self, modules_patcher, settings: ReferenceSettings):
        self.modules_patcher = modules_patcher
        self.settings = settings

    @property
    def modules(self) -> ReferenceModules:
        return self.modules_patcher.model

    def __call__(self, executor, x, timesteps, context, y, control, transformer_options, **kwargs):
        call = FlashFaceCall(self.modules, self.row_strengths(transformer_options, x.shape[0]).to(x.device, x.dtype),
                             mask_rows=kwargs.get(FACE_MASK_COND))
        try:
            if bool((call.strengths != 0).any()):
                call.references = self.reference_keys_values(timesteps, x)
            call.shared_rows = SharedRows.plan(executor.class_obj, x, timesteps, context, y, control,
                                               call.mask_rows, transformer_options)
            out = executor(x, timesteps, context, y, control, call.install(transformer_options), **kwargs)
            call.check_blocks_ran()
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

    def reference_keys_values(self, timesteps, x):
        """The ten blocks' reference keys/values for this step (projected once, shared by all rows); the
        reference pass itself is reused when this step's was stored before (reference_cache.py)."""
        states = cached_reference_states(self.modules_patcher, self.settings, timesteps, x, self.reference_states)
        return {key: project_references(states[key], self.modules.projections(key), self.settings.multiplicity)
                for key in self.modules.block_names}

    def reference_states(self, timesteps, x):
        """The reference U-Net on the clean reference latents at this step's timestep, conditioned on the
        negative prompt: each block's norm1 output [N, tokens, C]. A negative with several entries
        (ConditioningCombine) runs once per entry; the states are mixed by the entries' weights."""
        mixed = {}
        total = sum(weight for _, weight in self.settings.contexts)
        for context, weight in self.settings.contexts:
            for key, state in self._reference_pass(timesteps, x, context).items():
                share = state * (weight / total) if len(self.settings.contexts) > 1 else state
                mixed[key] = share if key not in mixed else mixed[key] + share
        return mixed

    def _reference_pass(self, timesteps, x, context):
        wanted = self.modules.block_names
        captured = {}

        def capture(n, context_attn1, value_attn1, extra_options):
            key = runtime_block_key(extra_options)
            if key in wanted:
                captured[key] = n
            return n, context_attn1, value_attn1

        latents = self.settings.latents.to(x.device, x.dtype)
        count = latents.shape[0]
        self.modules.reference_unet(
            latents, timesteps[:1].expand(count), context.to(x.device, x.dtype).expand(count, -1, -1),
            transformer_options={"patches": {"attn1_patch": [capture]}},
        )
        if captured.keys() != wanted.keys():
            raise RuntimeError(
                "FlashFace: the reference U-Net never reached blocks "
                f"{sorted(wanted[k] for k in wanted.keys() - captured.keys())}; this ComfyUI version "
                "names its transformer blocks differently. Please report it with your ComfyUI version."
            )
        return captured


@dataclass
class FlashFaceCall:
    """Everything one U-Net call holds: row strengths, projected references, the rows' face masks, the
    row-sharing plan and each reference block's norm1 output between its two patches."""

    modules: ReferenceModules
    strengths: torch.Tensor
    mask_rows: torch.Tensor | None = None  # [rows, 1, h, w] from the FACE_MASK_COND model cond
    references: dict = field(default_factory=dict)
    shared_rows: SharedRows | None = None
    normed: dict = field(default_factory=dict)  # block key -> norm1 output, set in attn1_patch
    blocks_seen: set = field(default_factory=set)

    def install(self, transformer_options):
        """A copy of transformer_options with this call's patches added around the user's."""
        options = dict(transformer_options)
        patches = {k: list(v) for k, v in options.get("patches", {}).items()}
        patches.setdefault("attn1_patch", []).insert(0, self.capture_normed_input)
        patches.setdefault("attn1_output_patch", []).append(self.add_reference_attention)
        if self.mask_rows is not None:
            patches.setdefault("input_block_patch", []).insert(0, self.add_mask_channel)
        if self.shared_rows is not None:
            self.shared_rows.add_patches(patches)
        options["patches"] = patches
        return options

    def capture_normed_input(self, n, context_attn1, value_attn1, extra_options):
        key = runtime_block_key(extra_options)
        if key in self.modules.block_names:
            self.normed[key] = n
        return n, context_attn1, value_attn1

    def add_reference_attention(self, n, extra_options):
        key = runtime_block_key(extra_options)
        normed = self.normed.pop(key, None)
        if normed is None:
            return n
        self.blocks_seen.add(key)
        attention = functools.partial(optimized_attention, transformer_options=extra_options)
        # The CPU merge computes attention itself: only when no pack overrides ComfyUI's attention.
        merged = None if "optimized_attention_override" in extra_options else attention_lse_for(normed.device)
        term = reference_attention(normed, self.strengths, self.modules.projections(key), extra_options["n_heads"],
                                   self.references.get(key), attention=attention, attention_lse=merged)
        return n + term

    def add_mask_channel(self, h, transformer_options):
        """conv_in's 5th input channel: conv(mask, W[:, 4:5]) added to the 4-channel conv output."""
        if transformer_options.get("block") != ("input", 0):
            return h
        return h + self.modules.mask_conv(self.mask_rows.to(h.dtype))

    def check_blocks_ran(self):
        """Every reference block ran, or none did (a cache such as EasyCache skipped the U-Net)."""
        names = self.modules.block_names
        missing = names.keys() - self.blocks_seen
        if missing and self.blocks_seen:
            raise RuntimeError(
                f"FlashFace: reference attention never ran in blocks {sorted(names[k] for k in missing)}; "
                "this ComfyUI version names its transformer blocks differently. Please report it."
            )

    def release(self):
        self.references = {}
        self.mask_rows = None
        self.shared_rows = None
        self.normed = {}


def face_mask_conds(extra_conds, face_mask):
    """`extra_conds` of the model plus the face-position mask at the noise's latent size, as a model cond
    that ComfyUI crops to a cond's area and batches with the rows like the latent itself."""

    @functools.wraps(extra_conds)
    def with_face_mask(**kwargs):
        out = extra_conds(**kwargs)
        noise = kwargs.get("noise")
        if noise is None:
            return out
        mask = latent_mask(face_mask, noise.shape[-2], noise.shape[-1]).unsqueeze(1)
        out[FACE_MASK_COND] = comfy.conds.CONDNoiseShape(mask.to(noise.device, noise.dtype))
        return out

    return with_face_mask


def install_reference_attention(model_patcher, modules_patcher, settings: ReferenceSettings, face_mask=None):
    """Adds the wrapper, the reference modules and (with a face mask) the mask cond to `model_patcher`."""
    model_patcher.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY,
                                       ReferenceAttentionWrapper(modules_patcher, settings))
    model_patcher.set_additional_models(WRAPPER_KEY, [modules_patcher])
    if face_mask is not None:
        model_patcher.add_object_patch("extra_conds",
                                       face_mask_conds(model_patcher.get_model_object("extra_conds"), face_mask))


def has_reference_attention(model_patcher):
    wrappers = model_patcher.wrappers.get(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, {})
    return bool(wrappers.get(WRAPPER_KEY))
