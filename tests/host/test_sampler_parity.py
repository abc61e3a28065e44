"""Sampler parity: the FlashFace guider + flashface_ddim against the official sampling loop (golden runs),
and FlashFaceSampler from a seed against an independent transcription of the official loop."""

import official_schedule
import torch
from official_guidance import three_way_guidance, two_way_guidance

from flashface_core import schedule
from flashface_core.guidance import GuidanceSettings
from flashface_core.masks import latent_mask

SD15_SCALE = 0.18215
RUN_RTOL = 1e-5


def flashface_model(host, make_sd15_patcher, flashface, golden_config, run, tensors):
    p = run["prefix"]
    base = make_sd15_patcher(golden_config["comfy_unet_config_main"])
    refs = host.references.ReferenceSet(tensors[p + "ref"] / SD15_SCALE, [1] * run["refs"])
    negative = [[tensors[p + "uncond_context"][:1], {}]]
    model = host.nodes.ApplyReferenceAttention.execute(
        base, flashface, refs, negative, reference_strength=run["lamda_feat"],
        strength_before_launch=run["lamda_feat_before_ref_guidence"], face_mask=tensors[p + "masks"],
    ).result[0]
    positive = [[tensors[p + "cond_context"][:1], {}]]
    return model, positive, negative


def run_settings(run):
    return GuidanceSettings(run["face_guidence"], run["step_to_launch_face_guidence"], run["guide_rescale"])


def guider_for(host, model, positive, negative, run):
    return host.sampling.flashface_guider(model, positive, negative, run["guide_scale"], run_settings(run), "test")


def test_golden_runs_match_official(host, make_sd15_patcher, golden, flashface, golden_config):
    manifest, tensors = golden
    report = {}
    for run in manifest["runs"]:
        p = run["prefix"]
        model, positive, negative = flashface_model(host, make_sd15_patcher, flashface, golden_config, run, tensors)
        guider = guider_for(host, model, positive, negative, run)
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
                report[f"{p}step{k}.{name}"] = ((ours - golden_tensor).abs().max() / golden_tensor.abs().max()).item()
        final = tensors[p + "x0_final"]
        report[p + "x0_final"] = ((out * SD15_SCALE - final).abs().max() / final.abs().max()).item()
    print("runs max |delta| / max|golden|:", report)
    assert len(report) == 2 * (4 + 3) + 2
    assert all(delta <= RUN_RTOL for delta in report.values()), report


def official_loop(host, call_options, model, noise, cond, uncond, run, run_mask):
    """The official ContextGaussianDiffusion.sample loop (spec section 4) in VP form, calling the
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


def test_sampler_node_from_seed_matches_official_loop(host, make_sd15_patcher, golden, flashface, golden_config,
                                                       loaded_call_options):
    """A user's FlashFaceSampler run on an empty latent equals the official loop started from
    ComfyUI's noise for that seed (fractional grid: 3 steps, both phases)."""
    import comfy.sample

    manifest, tensors = golden
    run = dict(manifest["runs"][1], step_to_launch_face_guidence=700)
    model, positive, negative = flashface_model(host, make_sd15_patcher, flashface, golden_config, run, tensors)
    latent = {"samples": torch.zeros(2, 4, 16, 16)}
    seed = 1234
    out = host.nodes.FlashFaceSampler.execute(
        model, positive, negative, latent, seed=seed, steps=run["steps"], text_cfg=run["guide_scale"],
        reference_cfg=run["face_guidence"], launch_timestep=run["step_to_launch_face_guidence"],
        cfg_rescale=run["guide_rescale"], sampler_name="flashface_ddim", scheduler="flashface_trailing",
    ).result[0]["samples"]
    noise = comfy.sample.prepare_noise(latent["samples"], seed)
    expected = official_loop(host, loaded_call_options, model, noise, positive[0][0], negative[0][0], run,
                             tensors[run["prefix"] + "masks"]) / SD15_SCALE
    delta = ((out - expected).abs().max() / expected.abs().max()).item()
    print("seeded node run vs official loop: relative max |delta|", delta)
    assert out.shape == (2, 4, 16, 16) and torch.isfinite(out).all()
    assert delta <= RUN_RTOL
