"""FlashFace's guider and the official sampling loop on ComfyUI's sampler machinery."""

import torch
from tqdm.auto import trange

import comfy.model_management
import comfy.samplers

from ...flashface_core import schedule
from ...flashface_core.guidance import GuidanceSettings
from .errors import FlashFaceNodeError
from .guidance import set_guidance
from .node_ids import APPLY_REFERENCE_ATTENTION
from .reference_call import has_reference_attention

DDIM_SAMPLER = "flashface_ddim"
TRAILING_SCHEDULER = "flashface_trailing"


def sampler_names():
    """FlashFace's DDIM first, then ComfyUI's samplers as registered now (other packs add theirs)."""
    return [DDIM_SAMPLER] + list(comfy.samplers.KSampler.SAMPLERS)


def scheduler_names():
    return [TRAILING_SCHEDULER] + list(comfy.samplers.KSampler.SCHEDULERS)


def require_flashface_model(model_patcher, node_name):
    if not has_reference_attention(model_patcher):
        raise FlashFaceNodeError(f"{node_name}: `model` has no FlashFace reference attention. "
                                 f"Connect the MODEL output of {APPLY_REFERENCE_ATTENTION}.")


def flashface_guider(model_patcher, positive, negative, text_cfg, settings: GuidanceSettings, node_name):
    """ComfyUI's CFGGuider (text CFG `text_cfg`) on a clone of the FlashFace MODEL with `settings`: the
    same guidance any sampler gets from the MODEL (guidance.py), with these settings."""
    require_flashface_model(model_patcher, node_name)
    model_patcher = model_patcher.clone()
    set_guidance(model_patcher, settings)
    guider = comfy.samplers.CFGGuider(model_patcher)
    guider.set_conds(positive, negative)
    guider.set_cfg(text_cfg)
    return guider


@torch.no_grad()
def sample_flashface_ddim(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """The official DDIM loop in VE form: the U-Net sees the integer t = round(t(sigma_i)) (x moved
    to that t's sigma), the update uses the exact grid sigmas, as the official
    `ContextGaussianDiffusion` does on its fractional trailing grid."""
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
    if name == DDIM_SAMPLER:
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
    if scheduler == TRAILING_SCHEDULER:
        sigmas = trailing_sigmas(model_sampling, total)
    else:
        sigmas = comfy.samplers.calculate_sigmas(model_sampling, scheduler, total).cpu()
    return sigmas[-(steps + 1):]
