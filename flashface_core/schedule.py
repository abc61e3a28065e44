"""The official FlashFace noise schedule, "trailing" time grid and DDIM step.

The official loop (ldm/ops/diffusion.py + solvers.py) works in VP form. These
helpers express the same numbers in ComfyUI's VE (k-diffusion) convention, where
sigma_ve = sigma_vp / sqrt(1 - sigma_vp^2) and x_ve = x_vp / sqrt(1 - sigma_vp^2).
"""

import torch

NUM_TRAIN_TIMESTEPS = 1000


def scaled_linear_alphas_cumprod(beta_start=0.00085, beta_end=0.012, num=NUM_TRAIN_TIMESTEPS):
    """alpha-bar of SD1.5's scaled-linear schedule, in float64 like the official code."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def ve_log_sigmas(alphas_cumprod):
    """log(sigma_ve) per integer timestep: the table both codes interpolate in."""
    return (((1.0 - alphas_cumprod) / alphas_cumprod) ** 0.5).log()


def trailing_timesteps(steps, num_train=NUM_TRAIN_TIMESTEPS):
    """Official 'trailing' grid t_k = 999 - k*1000/steps (floats; fractional when steps does not divide 1000)."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    k = torch.arange(steps, dtype=torch.float64)
    return (num_train - 1) - k * (num_train / steps)


def t_to_sigma(t, log_sigmas):
    """VE sigma at (fractional) timestep t: linear interpolation of log sigma between integer t."""
    t = torch.as_tensor(t, dtype=log_sigmas.dtype).clamp(0, len(log_sigmas) - 1)
    low = t.floor().long()
    high = t.ceil().long()
    frac = t - low
    return ((1 - frac) * log_sigmas[low] + frac * log_sigmas[high]).exp()


def sigma_to_t(sigma, log_sigmas):
    """Inverse of t_to_sigma: fractional timestep whose interpolated VE sigma is `sigma`."""
    log_sigma = torch.as_tensor(sigma, dtype=log_sigmas.dtype).log()
    # log_sigmas increases with t; find the bracketing integer timesteps.
    high = torch.searchsorted(log_sigmas, log_sigma.reshape(-1)).clamp(1, len(log_sigmas) - 1)
    low = high - 1
    frac = (log_sigma.reshape(-1) - log_sigmas[low]) / (log_sigmas[high] - log_sigmas[low])
    return (low + frac.clamp(0, 1)).reshape(log_sigma.shape)


def model_timestep(sigma, log_sigmas):
    """The integer timestep the official loop gives the U-Net for grid sigma: round(t(sigma))."""
    return sigma_to_t(sigma, log_sigmas).round().long()


def vp_to_ve_sigma(sigma_vp):
    return sigma_vp / (1 - sigma_vp**2) ** 0.5


def ve_to_vp_sigma(sigma_ve):
    return sigma_ve / (1 + sigma_ve**2) ** 0.5


def official_vp_sigmas(steps, alphas_cumprod=None):
    """The official solver's VP sigma grid for `steps` trailing steps, ending in 0."""
    if alphas_cumprod is None:
        alphas_cumprod = scaled_linear_alphas_cumprod()
    sigma_ve = t_to_sigma(trailing_timesteps(steps), ve_log_sigmas(alphas_cumprod))
    return torch.cat([ve_to_vp_sigma(sigma_ve), sigma_ve.new_zeros(1)])


def ddim_step(x, denoised, sigma, sigma_next):
    """Deterministic DDIM (eta 0) in VE form: keep the implied noise, move it to sigma_next."""
    return denoised + (sigma_next / sigma) * (x - denoised)
