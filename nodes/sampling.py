"""FlashFace's guidance and the official sampling loop on ComfyUI's sampler machinery."""

import uuid

import torch
from tqdm.auto import trange

import comfy.model_management
import comfy.samplers

from ..flashface_core import guidance, schedule
from .errors import FlashFaceNodeError
from .reference_call import EARLY, FULL, OFF, ROLES_KEY, has_reference_attention

FLASHFACE_SAMPLER = "flashface_ddim"
FLASHFACE_SCHEDULER = "flashface_trailing"


def sampler_names():
    """FlashFace's DDIM first, then ComfyUI's samplers as registered now (other packs add theirs)."""
    return [FLASHFACE_SAMPLER] + list(comfy.samplers.KSampler.SAMPLERS)


def scheduler_names():
    return [FLASHFACE_SCHEDULER] + list(comfy.samplers.KSampler.SCHEDULERS)


class FlashFaceGuider(comfy.samplers.CFGGuider):
    """Text CFG plus reference guidance from the launch timestep on, with CFG rescale.

    Rows follow ComfyUI's cond convention (cond_or_uncond 0 = positive, 1 = negative): before launch
    [positive, negative], both at the early reference strength; after it [positive + references,
    negative, positive without references]. ComfyUI's guidance hooks in model_options
    (sampler_pre_cfg_function, sampler_cfg_function, sampler_post_cfg_function: APG, RescaleCFG, PAG, …)
    run on the two-way part, positive + references against negative, exactly as CFGGuider runs them;
    the reference term (reference_cfg - text_cfg)·(positive + references - positive) is added after
    them, then FlashFace's CFG rescale against the positive prediction without references.
    """

    def __init__(self, model_patcher, node_name="FlashFaceGuider"):
        if not has_reference_attention(model_patcher):
            raise FlashFaceNodeError(
                f"{node_name}: `model` has no FlashFace reference attention. "
                "Connect the MODEL output of ApplyReferenceAttention."
            )
        super().__init__(model_patcher)
        self.text_cfg = 7.5
        self.reference_cfg = 3.2
        self.launch_timestep = 750
        self.cfg_rescale = 0.5

    def set_guidance(self, text_cfg, reference_cfg, launch_timestep, cfg_rescale):
        self.text_cfg = text_cfg
        self.reference_cfg = reference_cfg
        self.launch_timestep = launch_timestep
        self.cfg_rescale = cfg_rescale

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        positive, negative = self.conds.get("positive"), self.conds.get("negative")
        t = int(self.inner_model.model_sampling.timestep(timestep.reshape(-1)[:1]).item())
        phase = guidance.guidance_phase(t, self.launch_timestep, self.reference_cfg)
        if phase.three_way:
            conds, roles = [positive, negative, without_references(positive)], (FULL, OFF, OFF)
            continue_easycache_rows(model_options.get("transformer_options", {}), positive, conds[2])
        else:
            conds, roles = [positive, negative], (FULL, FULL) if phase.launched else (EARLY, EARLY)
        options = dict(model_options)
        options["transformer_options"] = {**model_options.get("transformer_options", {}), ROLES_KEY: roles}
        out = self.calc_cond_batch(conds, x, timestep, options)
        two_way = out[:2]
        for hook in model_options.get("sampler_pre_cfg_function", []):
            two_way = hook({"conds": conds[:2], "conds_out": two_way, "cond_scale": self.text_cfg, "timestep": timestep,
                            "input": x, "sigma": timestep, "model": self.inner_model, "model_options": options})
        denoised = comfy.samplers.cfg_function(self.inner_model, two_way[0], two_way[1], self.text_cfg, x, timestep,
                                               model_options=options, cond=positive, uncond=negative)
        rescale_against = out[0]
        if phase.three_way:
            denoised = guidance.add_reference_guidance(denoised, out[0], out[2], self.text_cfg, self.reference_cfg)
            rescale_against = out[2]
        if self.cfg_rescale == 0:
            return denoised
        eps = guidance.rescale_guidance(guidance.eps_from_denoised(x, denoised, timestep),
                                        guidance.eps_from_denoised(x, rescale_against, timestep), self.cfg_rescale)
        return guidance.denoised_from_eps(x, eps, timestep)

    def calc_cond_batch(self, conds, x, timestep, options):
        """All rows in one batch, through a pack's sampler_calc_cond_batch_function when one is set."""
        custom = options.get("sampler_calc_cond_batch_function")
        if custom is not None:
            return custom({"conds": conds, "input": x, "sigma": timestep, "model": self.inner_model,
                           "model_options": options})
        return comfy.samplers.calc_cond_batch(self.inner_model, conds, x, timestep, options)


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


@torch.no_grad()
def sample_flashface_ddim(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """The official DDIM loop in VE form: the U-Net sees the integer t = round(t(sigma_i)) (x moved
    to that t's sigma), the update uses the exact grid sigmas (spec section 4, bug 7)."""
    extra_args = {} if extra_args is None else extra_args
    model_sampling = model.inner_model.inner_model.model_sampling
    log_sigmas = model_sampling.log_sigmas.double().cpu()
    s_in = x.new_ones([x.shape[0]])
    for i in trange(len(sigmas) - 1, disable=disable):
        comfy.model_management.throw_exception_if_processing_interrupted()
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        t = schedule.model_timestep(sigma.double().cpu(), log_sigmas)
        sigma_model = model_sampling.sigmas[t.to(model_sampling.sigmas.device)].to(x.device, x.dtype)
        x_model = x * ((1 + sigma_model**2) / (1 + sigma**2)).sqrt()
        denoised = model(x_model, sigma_model * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})
        x = schedule.ddim_step(x, denoised, sigma, sigma_next)
    return x


def flashface_sampler(name):
    if name == FLASHFACE_SAMPLER:
        return comfy.samplers.KSAMPLER(sample_flashface_ddim)
    return comfy.samplers.sampler_object(name)


def trailing_sigmas(model_sampling, steps):
    """The official trailing grid as ComfyUI sigmas. Integer grid points take the model's own sigma
    table entry, so the first sigma is exactly sigma_max and ComfyUI's noise scaling starts at t=999."""
    timesteps = schedule.trailing_timesteps(steps)
    integral = timesteps == timesteps.round()
    table = model_sampling.sigmas.cpu()[timesteps.round().long()]
    grid = torch.where(integral, table, model_sampling.sigma(timesteps.float()).cpu())
    return torch.cat([grid, grid.new_zeros(1)]).float()


def flashface_sigmas(model_patcher, scheduler, steps, denoise=1.0):
    """Sigmas for `steps` steps; with denoise < 1, the tail of a longer schedule (as BasicScheduler)."""
    if denoise <= 0:
        return torch.zeros(0)
    total = steps if denoise >= 1 else int(steps / denoise)
    model_sampling = model_patcher.get_model_object("model_sampling")
    if scheduler == FLASHFACE_SCHEDULER:
        sigmas = trailing_sigmas(model_sampling, total)
    else:
        sigmas = comfy.samplers.calculate_sigmas(model_sampling, scheduler, total).cpu()
    return sigmas[-(steps + 1):]
