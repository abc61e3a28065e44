"""The official guidance formulas on eps (official `context_diffusion.py`), literally, to check the pack's
split form."""

from flashface_core.guidance import rescale_guidance


def two_way_guidance(eps_cond, eps_uncond, text_cfg, rescale):
    """Plain CFG u + g(c - u), rescaled against the cond prediction."""
    return rescale_guidance(eps_uncond + text_cfg * (eps_cond - eps_uncond), eps_cond, rescale)


def three_way_guidance(eps_reference, eps_cond, eps_uncond, text_cfg, reference_cfg, rescale):
    """u + g(c - u) + g_ref(c_ref - c), rescaled against the no-reference cond prediction."""
    guided = eps_uncond + text_cfg * (eps_cond - eps_uncond) + reference_cfg * (eps_reference - eps_cond)
    return rescale_guidance(guided, eps_cond, rescale)
