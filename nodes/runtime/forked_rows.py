"""The prompt rows without references, forked off inside the step's first U-Net call where that is safe.

A three-way step needs, besides ComfyUI's [positive + references, negative] rows, the positive row
without references (guidance.py). Its encoder is the positive row's own: the same latent, timestep,
prompt and face mask, and FlashFace's reference attention sits only in the middle block and the
decoder. So when nothing but ComfyUI and FlashFace touches the call, the prompt rows are run a second
time from the middle block on only: the call gives ComfyUI its rows and keeps the extra ones for the
guidance (the same sums, not repeated). Anything else in the call (a ControlNet,
another pack's patches, wrappers, options or model conds, class labels, replaced block or embed
functions, context windows, several or weighted prompt entries) leaves the row to its own call.
"""

from dataclasses import dataclass

import torch
from comfy.ldm.modules.attention import BasicTransformerBlock
from comfy.ldm.modules.diffusionmodules import openaimodel

STEP_KEY = "flashface_step"  # transformer_options: the GuidanceStep of the sampler's current prediction
PROMPT = 0  # ComfyUI's cond_or_uncond label of prompt rows
# What a sampler's U-Net call carries when only ComfyUI and FlashFace are involved.
PLAIN_OPTIONS = {"cond_or_uncond", "uuids", "sigmas", "sample_sigmas", "patches", "patches_replace", "wrappers",
                 "callbacks"}
# Prompt entries that calc_cond_batch weighs or restricts: their rows are not simply the model output.
WEIGHED_ENTRY_KEYS = ("area", "mask", "timestep_start", "timestep_end", "hooks", "default", "control", "gligen")
FORWARD_TIMESTEP_EMBED = openaimodel.forward_timestep_embed


@dataclass
class GuidanceStep:
    """One prediction of the sampler: whether its first U-Net call came yet, and the model output of the
    prompt rows without references forked off in that call, if they could be."""

    first_call_seen: bool = False
    forked_output: torch.Tensor | None = None

    def prediction_without_references(self, model, x, sigma, positive):
        """What calc_cond_batch gives for the positive without references, from the forked rows: only for
        one unweighted prompt entry whose rows (the whole batch) all came in that call."""
        forked = self.forked_output
        if forked is None or forked.shape[0] != x.shape[0] or len(positive) != 1:
            return None
        entry = positive[0]
        if any(key in entry for key in WEIGHED_ENTRY_KEYS) or entry.get("strength", 1.0) != 1.0:
            return None
        return model.model_sampling.calculate_denoised(sigma, forked.float(), x)


class ForkedRows:
    """The patches that run the prompt rows `rows` a second time from the middle block on."""

    def __init__(self, rows: torch.Tensor, last_input_block, step: GuidanceStep):
        self.rows = rows
        self.last_input_block = last_input_block
        self.step = step

    @classmethod
    def plan(cls, unet, x, timesteps, context, y, control, transformer_options, model_kwargs, three_way, own):
        """Forked rows for this call, or None. Only the first call of a prediction is the one with the
        sampler's rows; later ones (PAG's, SAG's) never fork. `own`: FlashFace's model conds, options and
        wrapper key."""
        step = transformer_options.get(STEP_KEY)
        if step is None or step.first_call_seen:
            return None
        step.first_call_seen = True
        labels = transformer_options.get("cond_or_uncond") or []
        if not (three_way and PROMPT in labels and context is not None and control is None and y is None
                and bool((timesteps == timesteps[0]).all()) and set(model_kwargs) <= own.model_conds
                and _only_flashface(transformer_options, own) and _blocks_as_built(unet)):
            return None
        per_chunk = x.shape[0] // len(labels)
        rows = [k * per_chunk + i for k, label in enumerate(labels) if label == PROMPT for i in range(per_chunk)]
        return cls(torch.tensor(rows, device=x.device), ("input", len(unet.input_blocks) - 1), step)

    def add_patches(self, patches):
        patches.setdefault("emb_patch", []).append(self.broadcast_embedding)
        patches.setdefault("input_block_patch_after_skip", []).append(self.fork)
        patches.setdefault("output_block_patch", []).append(self.fork_skip)
        patches.setdefault("attn2_patch", []).append(self.fork_prompts)

    def broadcast_embedding(self, emb, model_channels, transformer_options):
        return emb[:1]  # every row has the same timestep (checked in plan); [1, C] broadcasts in ResBlocks

    def fork(self, h, transformer_options):
        if transformer_options.get("block") != self.last_input_block:  # the skips keep their rows
            return h
        return self._with_forked_rows(h)

    def fork_skip(self, h, skip, transformer_options):
        return h, self._with_forked_rows(skip)

    def fork_prompts(self, n, context, value, extra_options):
        if n.shape[0] == context.shape[0]:
            return n, context, value
        forked = self._with_forked_rows(context)
        return n, forked, forked if value is context else self._with_forked_rows(value)

    def _with_forked_rows(self, h):
        return torch.cat([h, h.index_select(0, self.rows)])

    def keep(self, out):
        """The call's own rows for ComfyUI; the forked ones go to the guidance."""
        rows = out.shape[0] - self.rows.shape[0]
        self.step.forked_output = out[rows:]
        return out[:rows]


@dataclass(frozen=True)
class FlashFaceOwn:
    """What FlashFace itself puts into a U-Net call."""

    model_conds: frozenset
    options: frozenset
    wrapper_key: str


def _only_flashface(transformer_options, own: FlashFaceOwn):
    """No option, patch, wrapper or callback in the call that FlashFace does not know."""
    if not set(transformer_options) <= PLAIN_OPTIONS | own.options:
        return False
    for group in ("patches", "patches_replace", "callbacks"):
        if any(transformer_options.get(group, {}).values()):
            return False
    return all(key == own.wrapper_key for wrappers in transformer_options.get("wrappers", {}).values()
               for key, functions in wrappers.items() if functions)


def _blocks_as_built(unet):
    """ComfyUI's own transformer blocks and block runner: no pack replaced them (e.g. a reference ControlNet)."""
    if openaimodel.forward_timestep_embed is not FORWARD_TIMESTEP_EMBED:
        return False
    return not any(isinstance(m, BasicTransformerBlock) and "forward" in vars(m) for m in unet.modules())
