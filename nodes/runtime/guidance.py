"""FlashFace's guidance carried by the MODEL, so that every sampler gets it.

ComfyUI's own `sampling_function` (or one a pack puts in its place, such as AnimateDiff-Evolved's)
runs the usual two rows, positive and negative, labelled 0 and 1, and its CFG hooks. FlashFace adds,
as a post-CFG hook kept last in the list (`reference_guidance`):
* in three-way steps (t <= launch, reference_cfg > 0) the positive prediction without references,
  forked off inside the step's U-Net call where only FlashFace is involved (forked_rows.py), else
  computed by ComfyUI's `calc_cond_batch` like PAG's extra row (so context windows, ControlNets,
  memory splits and every other pack see an ordinary positive row), and the reference term;
* the CFG rescale.
Which reference strength a row gets follows from its label and the step (reference_call.py); the row
without references is told apart by `WITHOUT_REFERENCES_KEY` in its call's transformer_options.
"""

import uuid

import comfy.patcher_extension
import comfy.samplers

from ...flashface_core.guidance import GuidanceSettings, finish_guidance
from .forked_rows import STEP_KEY, GuidanceStep

GUIDANCE_KEY = "flashface_guidance"  # transformer_options: the model's GuidanceSettings
WITHOUT_REFERENCES_KEY = "flashface_without_references"  # transformer_options of the row without references
WRAPPER_KEY = "flashface"


def guidance_settings(transformer_options) -> GuidanceSettings | None:
    return transformer_options.get(GUIDANCE_KEY)


def set_guidance(model_patcher, settings: GuidanceSettings):
    """Gives `model_patcher` (a clone of the caller's) FlashFace's guidance with `settings`."""
    model_patcher.model_options.setdefault("transformer_options", {})[GUIDANCE_KEY] = settings
    if reference_guidance not in model_patcher.model_options.get("sampler_post_cfg_function", []):
        model_patcher.set_model_sampler_post_cfg_function(reference_guidance)
    model_patcher.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.PREDICT_NOISE, WRAPPER_KEY)
    model_patcher.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.PREDICT_NOISE, WRAPPER_KEY,
                                       reference_guidance_last)


def reference_guidance_last(executor, x, timestep, model_options, seed):
    """PREDICT_NOISE wrapper: FlashFace's post-CFG hook runs after those of nodes applied later
    (PAG, SAG, ...), so they act on the two-way part as they would without FlashFace; the prediction
    gets a GuidanceStep of its own (forked_rows.py)."""
    hooks = model_options.get("sampler_post_cfg_function", [])
    model_options = {**model_options, "transformer_options": {**model_options.get("transformer_options", {}),
                                                              STEP_KEY: GuidanceStep()}}
    if reference_guidance in hooks[:-1]:
        model_options["sampler_post_cfg_function"] = [h for h in hooks if h is not reference_guidance] + [
            reference_guidance]
    return executor(x, timestep, model_options, seed)


def reference_guidance(args):
    """sampler_post_cfg_function: the reference term in three-way steps and the CFG rescale."""
    model_options = args["model_options"]
    transformer_options = model_options.get("transformer_options", {})
    settings = guidance_settings(transformer_options)
    if settings is None:
        return args["denoised"]
    model, x, sigma = args["model"], args["input"], args["sigma"]
    phase = settings.phase(model.model_sampling.timestep(sigma.reshape(-1)[:1]).item())
    without = None
    if phase.three_way:
        positive, step = args["cond"], transformer_options.get(STEP_KEY)
        without = step.prediction_without_references(model, x, sigma, positive) if step else None
        if without is None:  # in a call of its own, as PAG's row
            rows = without_references(positive)
            continue_easycache_rows(transformer_options, positive, rows)
            options = {**model_options, "transformer_options": {**transformer_options, WITHOUT_REFERENCES_KEY: True}}
            without = comfy.samplers.calc_cond_batch(model, [rows], x, sigma, options)[0]
    return finish_guidance(x, sigma, args["denoised"], args["cond_denoised"], without, args["cond_scale"], settings)


def without_references(positive):
    """The positive conds for the row without references, under uuids of their own (the same for every
    step): caches keyed by cond uuid, such as EasyCache, must not mix it up with 'positive + references'."""
    return [dict(cond, uuid=uuid.uuid5(cond["uuid"], "flashface: without references")) for cond in positive]


def continue_easycache_rows(transformer_options, positive, no_reference_rows):
    """EasyCache (core) skips a step by adding each row's last output change, looked up by cond uuid. The
    row without references first appears at the launch step; if EasyCache skips that step, the row starts
    from the positive's change, as it did when both rows shared the positive's uuid."""
    changes = getattr(transformer_options.get("easycache"), "uuid_cache_diffs", None)
    if not isinstance(changes, dict):
        return
    for cond, row in zip(positive, no_reference_rows):
        if cond["uuid"] in changes and row["uuid"] not in changes:
            changes[row["uuid"]] = changes[cond["uuid"]]
