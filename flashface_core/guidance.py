"""FlashFace's two- and three-way classifier-free guidance with CFG rescale (spec section 4).

All functions work on eps predictions (noise), as the official code does; the
rescale's reference is always the text-conditioned prediction *without* the
reference term.
"""

from dataclasses import dataclass

import torch


def rescale_guidance(guided, reference, rescale):
    """arXiv 2305.08891 rescale on eps: pull guided's per-sample std towards reference's."""
    if rescale == 0:
        return guided
    dims = tuple(range(1, guided.ndim))
    ratio = reference.std(dim=dims, keepdim=True) / (guided.std(dim=dims, keepdim=True) + 1e-12)
    return guided * (rescale * ratio + (1.0 - rescale))


def two_way_guidance(eps_cond, eps_uncond, text_cfg, rescale):
    """Plain CFG u + g(c - u), rescaled against the cond prediction."""
    guided = eps_uncond + text_cfg * (eps_cond - eps_uncond)
    return rescale_guidance(guided, eps_cond, rescale)


def three_way_guidance(eps_reference, eps_cond, eps_uncond, text_cfg, reference_cfg, rescale):
    """u + g(c - u) + g_ref(c_ref - c), rescaled against the no-reference cond prediction."""
    guided = eps_uncond + text_cfg * (eps_cond - eps_uncond) + reference_cfg * (eps_reference - eps_cond)
    return rescale_guidance(guided, eps_cond, rescale)


@dataclass(frozen=True)
class GuidancePhase:
    """What one step does under the official launch rule."""

    launched: bool  # t <= launch: the cond row uses the full reference strength
    three_way: bool  # launched and reference guidance is on: [cond+refs, cond, uncond]


def guidance_phase(timestep, launch_timestep, reference_cfg):
    """Before launch (t > launch): two-way at the early strength. After it: three-way,
    or two-way at the full strength when reference_cfg is 0 (as the official code)."""
    launched = timestep <= launch_timestep
    return GuidancePhase(launched=launched, three_way=launched and reference_cfg > 0)


def eps_from_denoised(x, denoised, sigma):
    """eps implied by an x0 prediction at VE sigma (sigma broadcast per sample)."""
    return (x - denoised) / _per_sample(sigma, x)


def denoised_from_eps(x, eps, sigma):
    return x - _per_sample(sigma, x) * eps


def _per_sample(sigma, x):
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    return sigma.reshape(-1, *([1] * (x.ndim - 1))) if sigma.ndim else sigma
