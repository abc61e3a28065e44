"""FlashFace's guidance and the official sampling loop on ComfyUI's sampler machinery."""

import torch
from tqdm.auto import trange

import comfy.model_management
import comfy.samplers

from ..flashface_core import guidance, schedule
from .errors import FlashFaceNodeError
from .patching import EARLY, FULL, OFF, ROLES_KEY, has_reference_attention

FLASHFACE_SAMPLER = "flashface_ddim"
FLASHFACE_SCHEDULER = "flashface_trailing"
SAMPLER_NAMES = [FLASHFACE_SAMPLER] + list(comfy.samplers.KSampler.SAMPLERS)
SCHEDULER_NAMES = [FLASHFACE_SCHEDULER] + list(comfy.samplers.KSampler.SCHEDULERS)


class FlashFaceGuider(comfy.samplers.CFGGuider):
    """Text CFG plus reference guidance from the launch timestep on, with CFG rescale:
    before launch [positive, negative] (both rows at the early reference strength);
    after it [positive + references, positive, negative]."""

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
            conds, roles = [positive, positive, negative], (FULL, OFF, OFF)
        else:
            conds, roles = [positive, negative], (FULL, FULL) if phase.launched else (EARLY, EARLY)
        options = dict(model_options)
        options["transformer_options"] = {**model_options.get("transformer_options", {}), ROLES_KEY: roles}
        predictions = comfy.samplers.calc_cond_batch(self.inner_model, conds, x, timestep, options)
        eps = [guidance.eps_from_denoised(x, denoised, timestep) for denoised in predictions]
        if phase.three_way:
            guided = guidance.three_way_guidance(*eps, self.text_cfg, self.reference_cfg, self.cfg_rescale)
        else:
            guided = guidance.two_way_guidance(*eps, self.text_cfg, self.cfg_rescale)
        return guidance.denoised_from_eps(x, guided, timestep)


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
