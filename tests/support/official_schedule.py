"""The official solver's noise schedule rebuilt from SD1.5's training betas, in float64 like the
official code: what the tests compare against. The nodes take the model's own sigma table instead."""

import torch

from flashface_core.schedule import NUM_TRAIN_TIMESTEPS, trailing_timesteps


def scaled_linear_alphas_cumprod(beta_start=0.00085, beta_end=0.012, num=NUM_TRAIN_TIMESTEPS):
    """alpha-bar of SD1.5's scaled-linear schedule, in float64 like the official code."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def ve_log_sigmas(alphas_cumprod):
    """log(sigma_ve) per integer timestep: the table both codes interpolate in."""
    return (((1.0 - alphas_cumprod) / alphas_cumprod) ** 0.5).log()


def t_to_sigma(t, log_sigmas):
    """VE sigma at (fractional) timestep t: linear interpolation of log sigma between integer t."""
    t = torch.as_tensor(t, dtype=log_sigmas.dtype).clamp(0, len(log_sigmas) - 1)
    low = t.floor().long()
    high = t.ceil().long()
    frac = t - low
    return ((1 - frac) * log_sigmas[low] + frac * log_sigmas[high]).exp()


def vp_to_ve_sigma(sigma_vp):
    return sigma_vp / (1 - sigma_vp**2) ** 0.5


def ve_to_vp_sigma(sigma_ve):
    return sigma_ve / (1 + sigma_ve**2) ** 0.5


def vp_sigmas(steps, alphas_cumprod=None):
    """The official solver's VP sigma grid for `steps` trailing steps, ending in 0."""
    if alphas_cumprod is None:
        alphas_cumprod = scaled_linear_alphas_cumprod()
    sigma_ve = t_to_sigma(trailing_timesteps(steps), ve_log_sigmas(alphas_cumprod))
    return torch.cat([ve_to_vp_sigma(sigma_ve), sigma_ve.new_zeros(1)])
