"""FlashFace next to the packs users run beside it (their real code at the commits of
other_packs.PACKS, random weights; the golden test U-Net, 128 px): any sampler gets the full FlashFace
guidance, a detailer's crop is FlashFaceSampler's, IPAdapter sees only the labels 0/1 however ComfyUI
splits the rows, ControlNets (core, Advanced-ControlNet's, its Reference ControlNet) and
Inpaint-CropAndStitch work in either order. AnimateDiff-Evolved: test_animatediff.py (full-size U-Net)."""


import pytest
import torch

from support.pipeline import apply, relative

RTOL = 1e-5  # × max|x0| of the expected result
GUIDANCE = dict(text_cfg=6.0, reference_cfg=2.5, launch_timestep=700, cfg_rescale=0.3)
OFFICIAL = dict(reference_cfg=3.2, launch_timestep=750, cfg_rescale=0.5)


@pytest.fixture(scope="module")
def small_models(other_packs, golden_config):
    return other_packs.ensure_small_models(golden_config["comfy_unet_config_main"])


@pytest.fixture(scope="module")
def vae(host, keys_tsv):
    """The VAE of the random full-size SD1.5 checkpoint (support.model_files), alone."""
    import comfy.sd
    from safetensors import safe_open

    from support import model_files

    path = model_files.cached_models_dir(keys_tsv) / "checkpoints" / model_files.SD15_NAME
    prefix = "first_stage_model."
    with safe_open(str(path), "pt") as file:
        state_dict = {k[len(prefix):]: file.get_tensor(k).float() for k in file.keys() if k.startswith(prefix)}
    return comfy.sd.VAE(sd=state_dict)


def with_guidance(host, model, reference_cfg, launch_timestep, cfg_rescale):
    return host.nodes.FlashFaceGuidance.execute(model, reference_cfg=reference_cfg, launch_timestep=launch_timestep,
                                                cfg_rescale=cfg_rescale).result[0]


def flashface_sample(host, model, positive, negative, latent=None, sampler_name="euler", scheduler="normal", steps=3,
                     denoise=1.0, **guidance):
    settings = dict(GUIDANCE, **guidance)
    latent = latent or {"samples": torch.zeros(1, 4, 16, 16)}
    return host.nodes.FlashFaceSampler.execute(model, positive, negative, latent, seed=7, steps=steps,
                                               sampler_name=sampler_name, scheduler=scheduler, denoise=denoise,
                                               **settings).result[0]["samples"]


def ksample(model, positive, negative, cfg=GUIDANCE["text_cfg"], sampler_name="euler", scheduler="normal", steps=3):
    import nodes

    latent = {"samples": torch.zeros(1, 4, 16, 16)}
    return nodes.KSampler().sample(model, 7, steps, cfg, sampler_name, scheduler, positive, negative, latent)[0]["samples"]


# --- any sampler ---------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler_name", ["euler", "dpmpp_2m", "ddim"])
@pytest.mark.parametrize("guidance", ["official", "patched"])
def test_ksampler_on_a_flashface_model_is_flashface_sampler(host, flashface, parts, sampler_name, guidance):
    """KSampler's cfg is the text CFG; the MODEL carries reference guidance, launch step and rescale
    (ApplyReferenceAttention's official defaults, or FlashFaceGuidance's)."""
    model = apply(host, parts.base, flashface, parts)
    settings = dict(GUIDANCE, **OFFICIAL) if guidance == "official" else GUIDANCE
    sampled = model if guidance == "official" else with_guidance(host, model, GUIDANCE["reference_cfg"],
                                                                 GUIDANCE["launch_timestep"], GUIDANCE["cfg_rescale"])
    ours = ksample(sampled, parts.positive, parts.negative, sampler_name=sampler_name)
    expected = flashface_sample(host, model, parts.positive, parts.negative, sampler_name=sampler_name, **settings)
    without_reference_guidance = ksample(with_guidance(host, model, GUIDANCE["text_cfg"], 1000, 0.0), parts.positive,
                                         parts.negative, sampler_name=sampler_name)
    print(sampler_name, guidance, "KSampler vs FlashFaceSampler:", relative(ours, expected))
    assert relative(ours, expected) <= RTOL
    assert relative(without_reference_guidance, expected) > 1e-3  # the guidance is there to be matched


# --- Impact Pack's detailer ----------------------------------------------------------------------


def test_detailer_crop_is_flashface_sampler_on_the_same_crop(host, other_packs, flashface, parts, vae, monkeypatch):
    """DetailerForEach (SEGS from MaskToSEGS) samples the crop through ComfyUI's CFGGuider; on a FlashFace
    MODEL whose face position is the noise mask the crop equals FlashFaceSampler's guider on the same
    crop latent, noise, sigmas and noise mask."""
    import comfy.sample

    model = apply(host, parts.base, flashface, parts, face_mask=None, face_mask_from="noise mask")
    image = torch.rand(1, 128, 128, 3, generator=torch.Generator().manual_seed(3))
    segs = other_packs.run_node("MaskToSEGS", mask=parts.face_mask, combined=False, crop_factor=1.5, bbox_fill=False,
                                drop_size=10, contour_fill=False)[0]
    calls = []
    sample_custom = comfy.sample.sample_custom

    def record(model, noise, cfg, sampler, sigmas, positive, negative, latent_image, noise_mask=None, **kwargs):
        out = sample_custom(model, noise, cfg, sampler, sigmas, positive, negative, latent_image, noise_mask=noise_mask,
                            **kwargs)
        calls.append(dict(model=model, noise=noise, cfg=cfg, sampler=sampler, sigmas=sigmas, positive=positive,
                          negative=negative, latent=latent_image, noise_mask=noise_mask, seed=kwargs.get("seed"), out=out))
        return out

    monkeypatch.setattr(comfy.sample, "sample_custom", record)
    detailed = other_packs.run_node("DetailerForEach", image=image, segs=segs, model=model, clip=None, vae=vae,
                                    guide_size=128, guide_size_for=True, max_size=256, seed=5, steps=3,
                                    cfg=GUIDANCE["text_cfg"], sampler_name="euler", scheduler="normal",
                                    positive=parts.positive, negative=parts.negative, denoise=0.8, noise_mask=True, force_inpaint=True,
                                    wildcard="", cycle=1,
                                    feather=0, noise_mask_feather=0)[0]  # blurs need the real torchvision
    [call] = calls
    assert call["noise_mask"] is not None and 0 < float(call["noise_mask"].mean()) < 1
    guider = host.sampling.flashface_guider(call["model"], call["positive"], call["negative"], call["cfg"],
                                            host.sampling.GuidanceSettings(**OFFICIAL), "test")
    expected = guider.sample(call["noise"], call["latent"], call["sampler"], call["sigmas"], denoise_mask=call["noise_mask"],
                             disable_pbar=True, seed=call["seed"])
    print("crop", tuple(call["latent"].shape), "detailer vs FlashFaceSampler's guider:", relative(call["out"], expected))
    assert torch.isfinite(detailed).all()
    assert relative(call["out"], expected) <= RTOL


# --- IPAdapter -----------------------------------------------------------------------------------


@pytest.fixture()
def ipadapter(other_packs, small_models):
    ipadapter_model = other_packs.run_node("IPAdapterModelLoader", ipadapter_file=other_packs.IPADAPTER)[0]
    clip_vision = other_packs.run_node("CLIPVisionLoader", clip_name=other_packs.CLIP_VISION)[0]
    image = torch.rand(1, 224, 224, 3, generator=torch.Generator().manual_seed(4))

    def patch(model, weight=1.0):
        return other_packs.run_node("IPAdapterAdvanced", model=model, ipadapter=ipadapter_model, image=image,
                                    weight=weight, weight_type="linear", combine_embeds="concat", start_at=0.0,
                                    end_at=1.0, embeds_scaling="V only", clip_vision=clip_vision)[0]

    return patch


def record_batches(model):
    """A clone of `model` that appends the batch size of every U-Net call to the returned list."""
    import comfy.patcher_extension

    batches = []

    def record(executor, x, *args, **kwargs):
        batches.append(x.shape[0])
        return executor(x, *args, **kwargs)

    model = model.clone()
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test_batches", record)
    return model, batches


@pytest.mark.parametrize("rows", [1, 2, 3])
def test_ipadapter_rows_split_over_calls_equal_one_call(host, flashface, parts, ipadapter, monkeypatch, rows):
    """ComfyUI splits the rows of a step over U-Net calls when it thinks memory is short (forced here:
    the model reports a huge need for more than `rows` rows); IPAdapter picks its embeds by
    cond_or_uncond, so each call must carry only the labels 0 and 1."""
    model = ipadapter(apply(host, parts.base, flashface, parts))
    one_call = flashface_sample(host, model, parts.positive, parts.negative)
    model, batches = record_batches(model)
    monkeypatch.setattr(model.model, "memory_required",
                        lambda input_shape, cond_shapes={}: 0 if input_shape[0] <= rows else float("inf"))
    split = flashface_sample(host, model, parts.positive, parts.negative)
    print(rows, "rows per call: batches", batches, "vs one call:", relative(split, one_call))
    assert max(batches) <= rows
    assert relative(split, one_call) <= RTOL


@pytest.mark.parametrize("order", ["ipadapter first", "flashface first"])
def test_ipadapter_weight_zero_is_flashface_alone(host, flashface, parts, ipadapter, order):
    def both(weight):
        if order == "ipadapter first":
            return apply(host, ipadapter(parts.base, weight), flashface, parts)
        return ipadapter(apply(host, parts.base, flashface, parts), weight)

    alone = flashface_sample(host, apply(host, parts.base, flashface, parts), parts.positive, parts.negative)
    zero, full = (flashface_sample(host, both(weight), parts.positive, parts.negative) for weight in (0.0, 1.0))
    print(order, "weight 0 vs FlashFace alone:", relative(zero, alone), "weight 1:", relative(full, alone))
    assert relative(zero, alone) <= RTOL
    assert torch.isfinite(full).all() and relative(full, alone) > 1e-3


# --- ControlNets ---------------------------------------------------------------------------------


@pytest.fixture()
def hint():
    return torch.rand(1, 128, 128, 3, generator=torch.Generator().manual_seed(5))


def core_controlnet(other_packs, positive, negative, hint, strength):
    import nodes

    control_net = nodes.ControlNetLoader().load_controlnet(other_packs.CONTROLNET)[0]
    return nodes.ControlNetApplyAdvanced().apply_controlnet(positive, negative, control_net, hint, strength, 0.0, 1.0)


@pytest.mark.parametrize("order", ["controlnet first", "flashface first"])
def test_core_controlnet_strength_zero_is_none(host, other_packs, small_models, flashface, parts, hint, order):
    """'controlnet first': ApplyReferenceAttention gets the negative the ControlNet was applied to."""
    alone = flashface_sample(host, apply(host, parts.base, flashface, parts), parts.positive, parts.negative)
    outs = {}
    for strength in (0.0, 1.0):
        positive, negative = core_controlnet(other_packs, parts.positive, parts.negative, hint, strength)
        model = apply(host, parts.base, flashface, parts, negative=negative if order == "controlnet first" else None)
        outs[strength] = flashface_sample(host, model, positive, negative)
    print(order, "strength 0 vs none:", relative(outs[0.0], alone), "strength 1:", relative(outs[1.0], alone))
    assert relative(outs[0.0], alone) <= RTOL
    assert torch.isfinite(outs[1.0]).all() and relative(outs[1.0], alone) > 1e-3


def acn_apply(other_packs, model, positive, negative, control_net, image, strength):
    return other_packs.run_node("ACN_AdvancedControlNetApply", positive=positive, negative=negative,
                                control_net=control_net, image=image, strength=strength, start_percent=0.0,
                                end_percent=1.0, model_optional=model)


@pytest.mark.parametrize("order", ["controlnet first", "flashface first"])
def test_advanced_controlnet_with_keyframes_strength_zero_is_none(host, other_packs, small_models, flashface, parts,
                                                                  hint, order):
    keyframes = other_packs.run_node("ACN_TimestepKeyframeInterpolation", start_percent=0.0, end_percent=1.0,
                                     strength_start=1.0, strength_end=0.3, interpolation="linear", intervals=4)[0]
    control_net = other_packs.run_node("ACN_ControlNetLoaderAdvanced", cnet=other_packs.CONTROLNET,
                                       _tk_opt=keyframes)[0]
    alone = flashface_sample(host, apply(host, parts.base, flashface, parts), parts.positive, parts.negative)
    outs = {}
    for strength in (0.0, 1.0):
        if order == "controlnet first":
            positive, negative, model = acn_apply(other_packs, parts.base, parts.positive, parts.negative, control_net, hint, strength)
            model = apply(host, model, flashface, parts, negative=negative)
        else:
            positive, negative, model = acn_apply(other_packs, apply(host, parts.base, flashface, parts), parts.positive,
                                                  parts.negative, control_net, hint, strength)
        outs[strength] = flashface_sample(host, model, positive, negative)
    print(order, "strength 0 vs none:", relative(outs[0.0], alone), "strength 1:", relative(outs[1.0], alone))
    assert relative(outs[0.0], alone) <= RTOL
    assert torch.isfinite(outs[1.0]).all() and relative(outs[1.0], alone) > 1e-3


@pytest.mark.parametrize("order", ["controlnet first", "flashface first"])
def test_reference_controlnet_and_flashface_both_act(host, other_packs, flashface, parts, vae, order):
    """Advanced-ControlNet's Reference ControlNet replaces every transformer block's forward; FlashFace
    runs under it, finite, and both the reference image and FlashFace's references change the result."""
    image = torch.rand(1, 128, 128, 3, generator=torch.Generator().manual_seed(6))
    control_net = other_packs.run_node("ACN_ReferenceControlNet", reference_type="reference_attn", style_fidelity=0.5,
                                       ref_weight=1.0)[0]
    reference = other_packs.run_node("ACN_ReferencePreprocessor", image=image, vae=vae,
                                     latent_size={"samples": torch.zeros(1, 4, 16, 16)})[0]

    def sample(identity, strength):
        if order == "controlnet first":
            positive, negative, model = acn_apply(other_packs, parts.base, parts.positive, parts.negative, control_net, reference,
                                                  strength)
            model = apply(host, model, flashface, parts, identity=identity, negative=negative)
        else:
            model = apply(host, parts.base, flashface, parts, identity=identity)
            positive, negative, model = acn_apply(other_packs, model, parts.positive, parts.negative, control_net, reference,
                                                  strength)
        return flashface_sample(host, model, positive, negative)

    with_both = sample(0, 1.0)
    without_reference_image = sample(0, 0.0)
    other_person = sample(1, 1.0)  # the second person of `parts`
    print(order, "Reference ControlNet effect:", relative(with_both, without_reference_image),
          "FlashFace references effect:", relative(with_both, other_person))
    assert torch.isfinite(with_both).all()
    assert relative(with_both, without_reference_image) > 1e-3
    assert relative(with_both, other_person) > 1e-3


# --- Inpaint-CropAndStitch -----------------------------------------------------------------------


@pytest.mark.parametrize("face_mask_from", ["face_mask input", "noise mask"])
def test_crop_and_stitch_around_flashface_sampler(host, other_packs, flashface, parts, vae, face_mask_from):
    """The crop's mask is the face position (connected as face_mask, or followed as the noise mask);
    the stitched image keeps every pixel away from the mask."""
    import nodes

    image = torch.rand(1, 128, 128, 3, generator=torch.Generator().manual_seed(8))
    stitcher, cropped_image, cropped_mask = other_packs.run_node(
        "InpaintCropImproved", image=image, mask=parts.face_mask, mask_blend_pixels=0, output_target_width=128,
        output_target_height=128, output_padding="0", device_mode="cpu (compatible)")
    latent = nodes.SetLatentNoiseMask().set_mask(nodes.VAEEncode().encode(vae, cropped_image)[0], cropped_mask)[0]
    if face_mask_from == "noise mask":
        model = apply(host, parts.base, flashface, parts, face_mask=None, face_mask_from=face_mask_from)
    else:
        model = apply(host, parts.base, flashface, parts, face_mask=cropped_mask)
    sampled = flashface_sample(host, model, parts.positive, parts.negative, latent=latent, denoise=0.8)
    stitched = other_packs.run_node("InpaintStitchImproved", stitcher=stitcher,
                                    inpainted_image=vae.decode(sampled))[0]
    # 2 px from the mask on: the stitcher blends its mask back resized (bilinear: 1 px of spread)
    outside = torch.nn.functional.max_pool2d(parts.face_mask[None], 5, stride=1, padding=2)[0, 0] == 0
    assert stitched.shape == image.shape and torch.isfinite(stitched).all()
    assert torch.equal(stitched[0][outside], image[0][outside])
    assert (stitched[0][parts.face_mask[0] > 0] - image[0][parts.face_mask[0] > 0]).abs().max() > 1e-2
