"""Sampler parity: the FlashFace guider + flashface_ddim against the official sampling loop (golden runs),
and FlashFaceSampler from a seed against an independent transcription of the official loop."""

import torch

from flashface_core import schedule
from flashface_core.masks import latent_mask
from support import official_schedule
from support.official_guidance import three_way_guidance, two_way_guidance
from support.pipeline import (SD15_SCALE, golden_run_model, guider_for, relative, run_guidance, run_settings,
                              sample)

RUN_RTOL = 1e-5


def test_golden_runs_match_official(host, base, golden, flashface):
    manifest, tensors = golden
    report = {}
    for run in manifest["runs"]:
        p = run["prefix"]
        model, parts = golden_run_model(host, base, flashface, run, tensors)
        guider = guider_for(host, model, parts.positive, parts.negative, run)
        model_sampling = model.get_model_object("model_sampling")
        sigmas = host.sampling.flashface_sigmas(model, "flashface_trailing", run["steps"])
        steps = {}

        def record(i, denoised, x, total):
            alpha = 1 / (1 + sigmas[i] ** 2).sqrt()  # VE -> VP
            steps[i] = (x * alpha, denoised)

        noise = tensors[p + "noise"]
        out = guider.sample(noise, torch.zeros_like(noise), host.sampling.flashface_sampler("flashface_ddim"),
                            sigmas, callback=record, disable_pbar=True, seed=0)
        assert float(sigmas[0]) == float(model_sampling.sigma_max)
        for k in range(run["steps"]):
            for name, ours in zip(("xt", "x0"), steps[k]):
                golden_tensor = tensors[f"{p}step{k}.{name}"]
                report[f"{p}step{k}.{name}"] = relative(ours, golden_tensor)
        final = tensors[p + "x0_final"]
        report[p + "x0_final"] = relative(out * SD15_SCALE, final)
    print("runs max |delta| / max|golden|:", report)
    assert len(report) == 2 * (4 + 3) + 2
    assert all(delta <= RUN_RTOL for delta in report.values()), report


def official_loop(host, call_options, model, noise, cond, uncond, run, run_mask):
    """The official ContextGaussianDiffusion.sample loop (`ff/ops/context_diffusion.py`) in VP form, calling the
    patched U-Net directly with integer timesteps; independent of ComfyUI's sampler code."""
    options = call_options(model, **{host.guidance.GUIDANCE_KEY: run_settings(run)})
    p = host.call
    mask = latent_mask(run_mask, *noise.shape[-2:]).unsqueeze(1).repeat(noise.shape[0] // run_mask.shape[0], 1, 1, 1)
    alphas_cumprod = official_schedule.scaled_linear_alphas_cumprod()
    log_sigmas = official_schedule.ve_log_sigmas(alphas_cumprod)
    sigmas = official_schedule.vp_sigmas(run["steps"], alphas_cumprod)
    n = noise.shape[0]
    x = noise.double()

    def unet(t, contexts, **extra):
        """The U-Net on x with one row per context, labelled 0 (prompt) / 1 (negative) in that order."""
        rows = len(contexts)
        with torch.no_grad():
            return model.model.diffusion_model(
                x.float().repeat(rows, 1, 1, 1), torch.full((rows * n,), float(t)),
                context=torch.cat([c.expand(n, -1, -1) for c in contexts]),
                transformer_options={**options, "cond_or_uncond": list(range(rows)), **extra},
                **{p.FACE_MASK_COND: mask.repeat(rows, 1, 1, 1)},
            ).double().chunk(rows)

    for i in range(run["steps"]):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        t = int(schedule.model_timestep(official_schedule.vp_to_ve_sigma(sigma), log_sigmas))
        if t > run["step_to_launch_face_guidence"]:
            eps = unet(t, [cond, uncond])  # both rows at the early strength
        else:
            with_references, negative = unet(t, [cond, uncond])  # full strength / none
            (without_references,) = unet(t, [cond], **{host.guidance.WITHOUT_REFERENCES_KEY: True})
            eps = (with_references, without_references, negative)
        if len(eps) == 3:
            out = three_way_guidance(*eps, run["guide_scale"], run["face_guidence"], run["guide_rescale"])
        else:
            out = two_way_guidance(*eps, run["guide_scale"], run["guide_rescale"])
        alpha_t, sigma_t = alphas_cumprod[t].sqrt(), (1 - alphas_cumprod[t]).sqrt()
        x0 = (x - sigma_t * out) / alpha_t
        direction = (x - (1 - sigma**2).sqrt() * x0) / sigma
        x = (1 - sigma_next**2).sqrt() * x0 + sigma_next * direction
    return x.float()


def test_sampler_node_from_seed_matches_official_loop(host, base, golden, flashface, loaded_call_options):
    """A user's FlashFaceSampler run on an empty latent equals the official loop started from
    ComfyUI's noise for that seed (fractional grid: 3 steps, both phases)."""
    import comfy.sample

    manifest, tensors = golden
    run = dict(manifest["runs"][1], step_to_launch_face_guidence=700)
    model, parts = golden_run_model(host, base, flashface, run, tensors)
    seed = 1234
    out = sample(host, model, parts, steps=run["steps"], batch=2, seed=seed, **run_guidance(run))
    noise = comfy.sample.prepare_noise(torch.zeros_like(out), seed)
    expected = official_loop(host, loaded_call_options, model, noise, parts.positive[0][0], parts.negative[0][0], run,
                             parts.face_mask) / SD15_SCALE
    delta = relative(out, expected)
    print("seeded node run vs official loop: relative max |delta|", delta)
    assert out.shape == (2, 4, 16, 16) and torch.isfinite(out).all()
    assert delta <= RUN_RTOL
