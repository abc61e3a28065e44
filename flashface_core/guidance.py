"""FlashFace's two- and three-way classifier-free guidance with CFG rescale (official
`ff/ops/context_diffusion.py`).

The official three-way guidance on eps, u + g(c - u) + g_ref(c_ref - c), rescaled against c, is
split here as [u + g(c_ref - u)] + (g_ref - g)(c_ref - c): the bracket is ordinary CFG of the
positive-with-references row against the negative, which ComfyUI computes with its own hooks
(RescaleCFG, PAG, ...), and `add_reference_guidance` adds the second term. Being linear, both
forms are the same in eps and in x0 (denoised) space. The rescale's reference is the
text-conditioned prediction without the reference term: c in three-way steps, c_ref before.
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


def add_reference_guidance(cfg_result, with_references, without_references, text_cfg, reference_cfg):
    """CFG of the with-references prediction plus (g_ref - g)(c_ref - c): the official three-way guidance
    before rescale. Works on eps or on denoised predictions alike (the map between them is affine)."""
    return cfg_result + (reference_cfg - text_cfg) * (with_references - without_references)


@dataclass(frozen=True)
class GuidanceSettings:
    """FlashFace's guidance beyond the text CFG (official high-fidelity defaults)."""

    reference_cfg: float = 3.2  # g_ref; 0 turns the third prediction off
    launch_timestep: float = 750  # reference guidance and the full strength from t <= this on
    cfg_rescale: float = 0.5

    def phase(self, timestep):
        return guidance_phase(timestep, self.launch_timestep, self.reference_cfg)


@dataclass(frozen=True)
class GuidancePhase:
    """What one step does under the official launch rule."""

    launched: bool  # t <= launch: the cond row uses the full reference strength
    three_way: bool  # launched and reference guidance is on: [cond+refs, cond, uncond]


def guidance_phase(timestep, launch_timestep, reference_cfg):
    """Before launch (t > launch): two-way at the early strength. After it: three-way,
    or two-way at the full strength when reference_cfg is 0 (as the official code). `timestep`
    is the model's own, compared as it is: a fractional 750.4 is not yet launched at 750."""
    launched = float(timestep) <= launch_timestep
    return GuidancePhase(launched=launched, three_way=launched and reference_cfg > 0)


def finish_guidance(x, sigma, cfg_result, with_references, without_references, text_cfg, settings):
    """What follows ComfyUI's CFG in a FlashFace step, on denoised predictions: in three-way steps
    (without_references given) the reference term, then the rescale against the prediction
    without the reference term."""
    rescale_against = with_references
    if without_references is not None:
        cfg_result = add_reference_guidance(cfg_result, with_references, without_references, text_cfg,
                                            settings.reference_cfg)
        rescale_against = without_references
    if settings.cfg_rescale == 0:
        return cfg_result
    eps = rescale_guidance(eps_from_denoised(x, cfg_result, sigma), eps_from_denoised(x, rescale_against, sigma),
                           settings.cfg_rescale)
    return denoised_from_eps(x, eps, sigma)


def eps_from_denoised(x, denoised, sigma):
    """eps implied by an x0 prediction at VE sigma (sigma broadcast per sample)."""
    return (x - denoised) / _per_sample(sigma, x)


def denoised_from_eps(x, eps, sigma):
    return x - _per_sample(sigma, x) * eps


def _per_sample(sigma, x):
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    return sigma.reshape(-1, *([1] * (x.ndim - 1))) if sigma.ndim else sigma
