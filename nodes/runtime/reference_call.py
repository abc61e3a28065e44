"""One FlashFace U-Net call inside ComfyUI's sampling.

The DIFFUSION_MODEL wrapper `ReferenceAttentionWrapper` turns each U-Net call into a FlashFace call:
it works out every row's reference strength from its cond's role, runs the reference U-Net once at
this timestep (keys/values projected once, shared by all rows), and runs the main U-Net with three
patches: conv_in's mask channel, the capture of each reference block's norm1 output (first in the
attn1_patch list, so it sees the block's own tokens even under ToMe or HyperTile) and the SA' term
(last in the attn1_output_patch list, after such patches have restored the tokens). Everything a
call holds lives in one `FlashFaceCall`, dropped in a `finally`.

Several identities (chained ApplyReferenceAttention nodes) share one wrapper: each has its own
references, negative, strengths and region, and its own reference pass; the SA' term mixes them per
query token (flashface_core.reference_attention.identities_reference_attention).

Each row's reference strength follows from its label (cond_or_uncond: 1 is the negative, anything
else a prompt row), the step (before or after the launch timestep of the model's GuidanceSettings) and
whether the call is the one for the row without references (guidance.py).

The face-position mask (the union of the identities' masks, or the sampler's noise mask) and each
identity's region reach the U-Net as model conds (`FACE_MASK_COND`, `region_cond_key(k)`, added by an
object patch of the model's `extra_conds`), so ComfyUI crops them with the latent for area conds and
batches them with the rows.
"""

import functools
from dataclasses import dataclass, field

import comfy.conds
import comfy.patcher_extension
import torch
from comfy.ldm.modules.attention import optimized_attention

from ...flashface_core.guidance import GuidanceSettings
from ...flashface_core.masks import latent_mask
from ...flashface_core.reference_cache import tensor_fingerprint
from ...flashface_core.reference_attention import (attention_lse_for, identities_reference_attention, identity_weights,
                                                   project_references)
from ...flashface_core.regions import region_tokens, resample_region
from .errors import FlashFaceNodeError
from .flashface_model import ReferenceModules, runtime_block_key
from .forked_rows import STEP_KEY, FlashFaceOwn, ForkedRows
from .guidance import GUIDANCE_KEY, WITHOUT_REFERENCES_KEY, WRAPPER_KEY, guidance_settings
from .node_ids import APPLY_REFERENCE_ATTENTION
from .reference_cache import cached_reference_states

FACE_MASK_COND = "flashface_face_mask"
NEGATIVE = 1  # ComfyUI's cond_or_uncond label of the negative prompt's rows


def region_cond_key(identity_index):
    return f"flashface_region_{identity_index}"


@dataclass(frozen=True)
class ReferenceSettings:
    """One identity: its references and how strongly and where they act."""

    latents: torch.Tensor  # [N, 4, h, w], already in the model's latent space
    multiplicity: torch.Tensor | None  # [N] or None when all 1
    contexts: tuple  # ((context [1, L, C], weight), ...): the negative prompt's entries
    reference_strength: float
    strength_before_launch: float
    sigma_start: float  # active while sigma_end <= sigma <= sigma_start
    sigma_end: float
    face_mask: torch.Tensor | None = None  # [B, H, W] where the face goes (any size), None = anywhere
    face_mask_from_noise_mask: bool = False  # the face goes where the sampler's noise mask is
    region: torch.Tensor | None = None  # [B, H, W] in 0..1 where the references act (any size), None = everywhere

    @functools.cached_property
    def reference_pass_fingerprint(self) -> str:
        """Content hash of what the reference pass sees (latents, negative entries and their weights)."""
        parts = [tensor_fingerprint(self.latents)]
        parts += [(tensor_fingerprint(context), float(weight)) for context, weight in self.contexts]
        return repr(parts)


class ReferenceAttentionWrapper:
    """DIFFUSION_MODEL wrapper that makes one U-Net call a FlashFace call for one or more identities."""

    def __init__(self, modules_patcher, identities: tuple[ReferenceSettings, ...], flashface_name=""):
        self.modules_patcher = modules_patcher
        self.identities = identities
        self.flashface_name = flashface_name  # names the weights in the error for a chain mixing two FlashFaces

    @property
    def modules(self) -> ReferenceModules:
        return self.modules_patcher.model

    def __call__(self, executor, x, timesteps, context, y, control, transformer_options, **kwargs):
        strengths = [self.row_strengths(identity, transformer_options, timesteps, x.shape[0]).to(x.device, x.dtype)
                     for identity in self.identities]
        call = FlashFaceCall(self.modules, strengths, self.region_rows(kwargs), mask_rows=kwargs.get(FACE_MASK_COND))
        try:
            call.references = [self.reference_keys_values(timesteps, x, identity) if call.acts(index) else None
                               for index, identity in enumerate(self.identities)]
            three_way = self.phase(transformer_options, timesteps).three_way
            call.forked = ForkedRows.plan(executor.class_obj, x, timesteps, context, y, control, transformer_options,
                                          kwargs, three_way, self.own())
            out = executor(x, timesteps, context, y, control, call.install(transformer_options), **kwargs)
            call.check_blocks_ran()
            return out if call.forked is None else call.forked.keep(out)
        finally:
            call.release()

    def own(self):
        conds = {FACE_MASK_COND} | {region_cond_key(index) for index in range(len(self.identities))}
        return FlashFaceOwn(frozenset(conds), frozenset({GUIDANCE_KEY, STEP_KEY}), WRAPPER_KEY)

    @staticmethod
    def phase(transformer_options, timesteps):
        return (guidance_settings(transformer_options) or GuidanceSettings()).phase(timesteps.reshape(-1)[0])

    def region_rows(self, model_kwargs):
        """Each identity's region rows [rows, 1, h, w] from its model cond, None for the whole image."""
        regions = []
        for index, identity in enumerate(self.identities):
            rows = model_kwargs.get(region_cond_key(index))
            if identity.region is not None and rows is None:
                raise RuntimeError(
                    f"FlashFace: the region of identity {index + 1} did not reach the U-Net; another node replaced "
                    f"the model's extra_conds after {APPLY_REFERENCE_ATTENTION}. Apply that node first."
                )
            regions.append(rows)
        return regions

    def row_strengths(self, identity: ReferenceSettings, transformer_options, timesteps, batch):
        """Each row's reference strength for `identity`: off outside its start/end and in the call for the
        row without references; before the launch step the early strength on every row; after it the full
        strength on prompt rows and, in three-way steps, none on the negative (official `context_diffusion.py`)."""
        sigma = transformer_options.get("sigmas")
        if sigma is not None and not (identity.sigma_end <= float(sigma.reshape(-1)[0]) <= identity.sigma_start):
            return torch.zeros(batch)
        if transformer_options.get(WITHOUT_REFERENCES_KEY):
            return torch.zeros(batch)
        phase = self.phase(transformer_options, timesteps)
        prompt = identity.reference_strength if phase.launched else identity.strength_before_launch
        negative = 0.0 if phase.three_way else prompt
        labels = transformer_options.get("cond_or_uncond") or [0]
        per_chunk = [negative if label == NEGATIVE else prompt for label in labels]
        return torch.tensor(per_chunk).repeat_interleave(batch // len(labels))

    def reference_keys_values(self, timesteps, x, identity: ReferenceSettings):
        """One identity's reference keys/values of the ten blocks for this step (projected once, shared by
        all rows); the reference pass itself is reused when this step's was stored before (reference_cache.py)."""
        states = cached_reference_states(self.modules_patcher, identity, timesteps, x,
                                         lambda t, latent: self.reference_states(t, latent, identity))
        return {key: project_references(states[key], self.modules.projections(key), identity.multiplicity)
                for key in self.modules.block_names}

    def reference_states(self, timesteps, x, identity: ReferenceSettings):
        """The reference U-Net on the identity's clean reference latents at this step's timestep,
        conditioned on its negative prompt: each block's norm1 output [N, tokens, C]. A negative with
        several entries (ConditioningCombine) runs once per entry; the states are mixed by the entries'
        weights."""
        mixed = {}
        total = sum(weight for _, weight in identity.contexts)
        for context, weight in identity.contexts:
            for key, state in self._reference_pass(timesteps, x, identity.latents, context).items():
                share = state * (weight / total) if len(identity.contexts) > 1 else state
                mixed[key] = share if key not in mixed else mixed[key] + share
        return mixed

    def _reference_pass(self, timesteps, x, latents, context):
        """The reference U-Net on `latents`, keeping each reference block's norm1 output (the U-Net ends
        at the last one: flashface_model.end_reference_unet_at)."""
        wanted = self.modules.block_names
        captured = {}
        latents = latents.to(x.device, x.dtype)
        count = latents.shape[0]
        self.modules.reference_unet(
            latents, timesteps[:1].expand(count), context.to(x.device, x.dtype).expand(count, -1, -1),
            transformer_options={"patches": {"attn1_patch": [norm1_capture(captured, wanted)]}},
        )
        if captured.keys() != wanted.keys():
            raise RuntimeError(
                "FlashFace: the reference U-Net never reached blocks "
                f"{sorted(wanted[k] for k in wanted.keys() - captured.keys())}; this ComfyUI version "
                "names its transformer blocks differently. Please report it with your ComfyUI version."
            )
        return captured


def norm1_capture(into: dict, wanted):
    """An attn1_patch that keeps each reference block's norm1 output in `into` (block key -> tokens)."""
    def capture(n, context_attn1, value_attn1, extra_options):
        key = runtime_block_key(extra_options)
        if key in wanted:
            into[key] = n
        return n, context_attn1, value_attn1

    return capture


@dataclass
class FlashFaceCall:
    """Everything one U-Net call holds: per identity its row strengths, region rows and projected
    references; the rows' face masks, the row-sharing plan, the identities' weights per block grid and
    each reference block's norm1 output between its two patches."""

    modules: ReferenceModules
    strengths: list  # per identity: [rows]
    regions: list  # per identity: [rows, 1, h, w] from its region cond, or None (the whole image)
    mask_rows: torch.Tensor | None = None  # [rows, 1, h, w] from the FACE_MASK_COND model cond
    references: list = field(default_factory=list)  # per identity: block key -> ReferenceKV, None if it is idle
    forked: ForkedRows | None = None  # prompt rows run again without references from the middle block on
    weights_by_grid: dict = field(default_factory=dict)  # (h, w) -> per identity [rows, h*w] or [rows, 1]
    normed: dict = field(default_factory=dict)  # block key -> norm1 output, set in attn1_patch
    blocks_seen: set = field(default_factory=set)

    def acts(self, index):
        """Whether identity `index` has a row with a non-zero strength inside its region."""
        acting = self.strengths[index] != 0
        region = self.regions[index]
        if region is not None:
            acting = acting & (region.flatten(1) != 0).any(1)
        return bool(acting.any())

    def weights(self, height, width):
        """The identities' weights s_k * m_k per row and query token of a height x width block (forked rows:
        strength 0)."""
        if (height, width) not in self.weights_by_grid:
            strengths, regions = self.strengths, self.regions
            if self.forked is not None:
                rows = self.forked.rows
                strengths = [torch.cat([s, s.new_zeros(rows.shape[0])]) for s in strengths]
                regions = [None if r is None else torch.cat([r, r.index_select(0, rows)]) for r in regions]
            regions = [None if r is None else region_tokens(r, height, width) for r in regions]
            self.weights_by_grid[(height, width)] = identity_weights(strengths, regions)
        return self.weights_by_grid[(height, width)]

    def install(self, transformer_options):
        """A copy of transformer_options with this call's patches added around the user's."""
        options = dict(transformer_options)
        patches = {k: list(v) for k, v in options.get("patches", {}).items()}
        patches.setdefault("attn1_patch", []).insert(0, norm1_capture(self.normed, self.modules.block_names))
        patches.setdefault("attn1_output_patch", []).append(self.add_reference_attention)
        if self.mask_rows is not None:
            patches.setdefault("input_block_patch", []).insert(0, self.add_mask_channel)
        if self.forked is not None:
            self.forked.add_patches(patches)
        options["patches"] = patches
        return options

    def add_reference_attention(self, n, extra_options):
        key = runtime_block_key(extra_options)
        normed = self.normed.pop(key, None)
        if normed is None:
            return n
        self.blocks_seen.add(key)
        attention = functools.partial(optimized_attention, transformer_options=extra_options)
        # The CPU merge computes attention itself: only when no pack overrides ComfyUI's attention.
        merged = None if "optimized_attention_override" in extra_options else attention_lse_for(normed.device)
        acting = [(weight, refs[key]) for weight, refs in zip(self.weights(*extra_options["activations_shape"][-2:]),
                                                              self.references) if refs is not None]
        term = identities_reference_attention(normed, [w for w, _ in acting], self.modules.projections(key),
                                              extra_options["n_heads"], [kv for _, kv in acting],
                                              attention=attention, attention_lse=merged)
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
        self.references = []
        self.regions = []
        self.mask_rows = None
        self.forked = None
        self.weights_by_grid = {}
        self.normed = {}


class FlashFaceConds:
    """`extra_conds` of the model plus FlashFace's model conds at the noise's latent size: the union of the
    identities' face masks (the face-position channel) and each identity's region. ComfyUI crops them to
    a cond's area and batches them with the rows like the latent itself."""

    def __init__(self, extra_conds, identities: tuple[ReferenceSettings, ...]):
        self.extra_conds = extra_conds  # the model's own, never another FlashFaceConds
        self.identities = identities
        functools.update_wrapper(self, extra_conds)

    def __call__(self, **kwargs):
        out = self.extra_conds(**kwargs)
        noise = kwargs.get("noise")
        if noise is None:
            return out
        height, width = noise.shape[-2:]
        face_masks = [latent_mask(mask, height, width) for mask in self.face_masks(kwargs.get("denoise_mask"))]
        if face_masks:
            union = functools.reduce(torch.maximum, face_masks).unsqueeze(1)
            out[FACE_MASK_COND] = comfy.conds.CONDNoiseShape(union.to(noise.device, noise.dtype))
        for index, identity in enumerate(self.identities):
            if identity.region is None:
                continue
            if identity.region.shape[0] > noise.shape[0]:
                raise FlashFaceNodeError(
                    f"{APPLY_REFERENCE_ATTENTION}: region of identity {index + 1} holds {identity.region.shape[0]} masks "
                    f"but the latent batch has {noise.shape[0]} images; give one region, or one per image."
                )
            region = resample_region(identity.region, height, width).unsqueeze(1)
            out[region_cond_key(index)] = comfy.conds.CONDNoiseShape(region.to(noise.device, noise.dtype))
        return out

    def face_masks(self, noise_mask):
        """Each identity's face mask [B, H, W]: its own, or the sampler's noise mask ([B, C, h, w] at latent
        size, as a detailer or SetLatentNoiseMask gives it)."""
        masks = []
        for index, identity in enumerate(self.identities):
            if identity.face_mask_from_noise_mask:
                if noise_mask is None:
                    raise FlashFaceNodeError(
                        f"{APPLY_REFERENCE_ATTENTION}: face_mask_from of identity {index + 1} is 'noise mask', but the "
                        "latent has no noise mask. Give the sampler a latent with one (SetLatentNoiseMask, VAEEncode"
                        "ForInpaint, a detailer), or set face_mask_from to 'face_mask input'."
                    )
                masks.append(noise_mask[:, 0].float().cpu())
            elif identity.face_mask is not None:
                masks.append(identity.face_mask)
        return masks


def install_reference_attention(model_patcher, modules_patcher, identities: tuple[ReferenceSettings, ...],
                                flashface_name=""):
    """Puts the wrapper for `identities` (replacing one for fewer identities), the reference modules and
    the face-mask/region conds on `model_patcher`."""
    model_patcher.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY)
    model_patcher.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY,
                                       ReferenceAttentionWrapper(modules_patcher, identities, flashface_name))
    model_patcher.set_additional_models(WRAPPER_KEY, [modules_patcher])
    if any(i.face_mask is not None or i.face_mask_from_noise_mask or i.region is not None for i in identities):
        extra_conds = model_patcher.get_model_object("extra_conds")
        if isinstance(extra_conds, FlashFaceConds):
            extra_conds = extra_conds.extra_conds
        model_patcher.add_object_patch("extra_conds", FlashFaceConds(extra_conds, identities))


def reference_attention_wrapper(model_patcher) -> ReferenceAttentionWrapper | None:
    """The model's FlashFace wrapper (the identities applied so far), or None."""
    wrappers = model_patcher.wrappers.get(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, {})
    found = wrappers.get(WRAPPER_KEY)
    return found[0] if found else None


def has_reference_attention(model_patcher):
    return reference_attention_wrapper(model_patcher) is not None
