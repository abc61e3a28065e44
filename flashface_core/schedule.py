"""The official FlashFace "trailing" time grid, timestep rounding and DDIM step.

The official loop (ldm/ops/diffusion.py + solvers.py) works in VP form. These
helpers express the same numbers in ComfyUI's VE (k-diffusion) convention, where
sigma_ve = sigma_vp / sqrt(1 - sigma_vp^2) and x_ve = x_vp / sqrt(1 - sigma_vp^2);
the sigma table itself is the model's own (tests/support/official_schedule.py rebuilds the official one).
"""

import torch

NUM_TRAIN_TIMESTEPS = 1000


def trailing_timesteps(steps, num_train=NUM_TRAIN_TIMESTEPS):
    """Official 'trailing' grid t_k = 999 - k*1000/steps (floats; fractional when steps does not divide 1000)."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    k = torch.arange(steps, dtype=torch.float64)
    return (num_train - 1) - k * (num_train / steps)


def sigma_to_t(sigma, log_sigmas):
    """The fractional timestep whose VE sigma, log sigma interpolated linearly between integer t, is `sigma`."""
    log_sigma = torch.as_tensor(sigma, dtype=log_sigmas.dtype).log()
    # log_sigmas increases with t; find the bracketing integer timesteps.
    high = torch.searchsorted(log_sigmas, log_sigma.reshape(-1)).clamp(1, len(log_sigmas) - 1)
    low = high - 1
    frac = (log_sigma.reshape(-1) - log_sigmas[low]) / (log_sigmas[high] - log_sigmas[low])
    return (low + frac.clamp(0, 1)).reshape(log_sigma.shape)


def model_timestep(sigma, log_sigmas):
    """The integer timestep the official loop gives the U-Net for grid sigma: round(t(sigma))."""
    return sigma_to_t(sigma, log_sigmas).round().long()


def ddim_step(x, denoised, sigma, sigma_next):
    """Deterministic DDIM (eta 0) in VE form: keep the implied noise, move it to sigma_next."""
    return denoised + (sigma_next / sigma) * (x - denoised)
