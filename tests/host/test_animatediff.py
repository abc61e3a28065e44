"""FlashFace under AnimateDiff-Evolved (its code at other_packs.PACKS' commit): the motion module's
start/end percent, frames independent when the motion module adds nothing, context windows (static,
uniform) with both effects present, and the reference pass once per step for all frames and windows.

ADE hard-codes SD1.5's widths, so these use the random full-size SD1.5 and FlashFace (support.model_files,
fp16 weights computed in fp32: about 8 GB of RAM) and an mm_sd_v15_v2 layout,
at 64 px, a few frames and 3 steps."""

import pytest
import torch

from support.pipeline import relative

RTOL = 1e-5  # × max|x0| of the expected result
FRAMES, SIZE, STEPS = 4, 8, 3  # latent frames of 8×8 (64 px)
SAMPLING = dict(seed=7, steps=STEPS, text_cfg=7.5, reference_cfg=3.2, launch_timestep=750, cfg_rescale=0.5,
                sampler_name="euler", scheduler="normal")


@pytest.fixture(scope="module")
def full_size(host, other_packs, keys_tsv):
    """(base MODEL, FlashFace, references, positive, negative, face mask) at full size."""
    import comfy.model_management
    import comfy.sd

    from support import model_files

    models = model_files.cached_models_dir(keys_tsv)
    base = comfy.sd.load_checkpoint_guess_config(str(models / "checkpoints" / model_files.SD15_NAME),
                                                 output_vae=False, output_clip=False,
                                                 model_options={"dtype": torch.float16})[0]
    weights = host.checkpoint.load_flashface(models / "flashface" / model_files.FLASHFACE_NAME, dtype=torch.float16)
    flashface = host.flashface_model.FlashFaceModel(model_files.FLASHFACE_NAME, weights)
    generator = torch.Generator().manual_seed(21)
    refs = host.reference_set.ReferenceSet(torch.randn(2, 4, SIZE, SIZE, generator=generator), [1, 1])
    positive = [[torch.randn(1, 77, 768, generator=generator), {}]]
    negative = [[torch.randn(1, 77, 768, generator=generator), {}]]
    mask = torch.zeros(1, SIZE * 8, SIZE * 8)
    mask[:, 16:48, 20:44] = 1
    yield base, flashface, refs, positive, negative, mask
    comfy.model_management.unload_all_models()


@pytest.fixture(scope="module")
def motion_model_name(other_packs):
    """The random mm_sd_v15_v2, checked to load every tensor of the file (ADE loads with strict=False)."""
    from safetensors import safe_open

    path = other_packs.ensure_motion_model()
    motion_model = other_packs.run_node("ADE_LoadAnimateDiffModel", model_name=path.name)[0]
    with safe_open(str(path), "pt") as file:
        assert set(file.keys()) <= set(motion_model.model.state_dict()), "the motion model did not load every tensor"
    return path.name


def apply_to(host, full_size, references=None, model=None):
    base, flashface, refs, _, negative, mask = full_size
    return host.nodes.ApplyReferenceAttention.execute(model or base, flashface, references or refs, negative,
                                                      reference_strength=1.2, strength_before_launch=0.85,
                                                      face_mask=mask).result[0]


def animated(other_packs, model, motion_model_name, start_percent=0.0, end_percent=1.0, context=None, zero_output=False,
             keyframes=None):
    motion_model = other_packs.run_node("ADE_LoadAnimateDiffModel", model_name=motion_model_name)[0]
    if zero_output:  # the temporal transformers add nothing to the U-Net's features
        with torch.no_grad():
            for name, module in motion_model.model.named_modules():
                if name.endswith("temporal_transformer.proj_out"):
                    module.weight.zero_()
                    module.bias.zero_()
    m_models = other_packs.run_node("ADE_ApplyAnimateDiffModel", motion_model=motion_model, start_percent=start_percent,
                                    end_percent=end_percent, ad_keyframes=keyframes)[0]
    return other_packs.run_node("ADE_UseEvolvedSampling", model=model, beta_schedule="use existing", m_models=m_models,
                                context_options=context)[0]


def sample(host, model, full_size, frames=FRAMES):
    _, _, _, positive, negative, _ = full_size
    latent = {"samples": torch.zeros(frames, 4, SIZE, SIZE)}
    return host.nodes.FlashFaceSampler.execute(model, positive, negative, latent, **SAMPLING).result[0]["samples"]


def count_reference_passes(full_size, model):
    """A list that grows by one each time the reference U-Net runs (the caller removes the handle)."""
    flashface = full_size[1]
    runs = []
    handle = flashface.modules_for(model).model.reference_unet.register_forward_pre_hook(lambda *args: runs.append(1))
    return runs, handle


def fresh_references(host, seed):
    """References no earlier run used, so the reference store cannot answer from a previous test."""
    generator = torch.Generator().manual_seed(seed)
    return host.reference_set.ReferenceSet(torch.randn(2, 4, SIZE, SIZE, generator=generator), [1, 1])


def test_motion_module_from_one_to_one_is_no_motion_module(host, other_packs, full_size, motion_model_name):
    """start_percent = end_percent = 1.0: the motion module never acts."""
    plain = sample(host, apply_to(host, full_size), full_size)
    inactive = sample(host, animated(other_packs, apply_to(host, full_size), motion_model_name, 1.0, 1.0), full_size)
    active = sample(host, animated(other_packs, apply_to(host, full_size), motion_model_name), full_size)
    print("start=end=1 vs none:", relative(inactive, plain), "active vs none:", relative(active, plain))
    assert relative(inactive, plain) <= RTOL
    assert torch.isfinite(active).all() and relative(active, plain) > 1e-3


def test_keyframes_schedule_the_motion_effect(host, other_packs, full_size, motion_model_name):
    """AnimateDiff's keyframes act step by step (its sampling function runs under FlashFace): effect 0 from
    the start is no motion module; switched to effect 1 half way, the motion module changes the frames."""
    plain = sample(host, apply_to(host, full_size), full_size)
    off = other_packs.run_node("ADE_AnimateDiffKeyframe", start_percent=0.0, effect_multival=0.0)[0]
    on_half_way = other_packs.run_node("ADE_AnimateDiffKeyframe", start_percent=0.5, effect_multival=1.0,
                                       prev_ad_keyframes=off)[0]
    silent = sample(host, animated(other_packs, apply_to(host, full_size), motion_model_name, keyframes=off), full_size)
    switched = sample(host, animated(other_packs, apply_to(host, full_size), motion_model_name, keyframes=on_half_way),
                      full_size)
    print("effect 0 vs no motion module:", relative(silent, plain), "switched on half way:", relative(switched, plain))
    assert relative(silent, plain) <= RTOL
    assert torch.isfinite(switched).all() and relative(switched, plain) > 1e-3


@pytest.mark.parametrize("order", ["flashface first", "animatediff first"])
def test_zeroed_motion_output_is_frames_sampled_independently(host, other_packs, full_size, motion_model_name, order):
    """With the temporal transformers' output projections zeroed, the frames are what FlashFace samples
    for them without a motion module, where no frame sees another; each frame alone (its slice of the
    same noise) agrees up to the rounding that differs between batch sizes. The reference pass runs
    once per step for all frames."""
    import comfy.sample

    references = fresh_references(host, 31 if order == "flashface first" else 32)
    if order == "flashface first":
        model = animated(other_packs, apply_to(host, full_size, references), motion_model_name, zero_output=True)
    else:
        model = apply_to(host, full_size, references,
                      model=animated(other_packs, full_size[0], motion_model_name, zero_output=True))
    runs, handle = count_reference_passes(full_size, model)
    try:
        together = sample(host, model, full_size)
    finally:
        handle.remove()
    single = apply_to(host, full_size, references)
    independent = sample(host, single, full_size)
    settings = host.sampling.GuidanceSettings(SAMPLING["reference_cfg"], SAMPLING["launch_timestep"],
                                              SAMPLING["cfg_rescale"])
    guider = host.sampling.flashface_guider(single, full_size[3], full_size[4], SAMPLING["text_cfg"], settings, "test")
    latent = torch.zeros(FRAMES, 4, SIZE, SIZE)
    noise = comfy.sample.prepare_noise(latent, SAMPLING["seed"])
    sigmas = host.sampling.flashface_sigmas(single, SAMPLING["scheduler"], STEPS)
    sampler = host.sampling.flashface_sampler(SAMPLING["sampler_name"])
    alone = torch.cat([guider.sample(noise[i:i + 1], latent[i:i + 1], sampler, sigmas, disable_pbar=True,
                                     seed=SAMPLING["seed"]) for i in range(FRAMES)])
    print(order, "zeroed motion output vs no motion module:", relative(together, independent),
          "vs each frame alone:", relative(together, alone), "reference passes:", len(runs))
    assert relative(together, independent) <= RTOL
    assert relative(together, alone) <= 1e-4  # measured 1.4e-5 / 1.7e-5: batch-size rounding
    assert len(runs) == STEPS


@pytest.mark.parametrize("context", ["static", "uniform"])
def test_context_windows_run_with_both_effects(host, other_packs, full_size, motion_model_name, context):
    """6 frames in windows of 4 overlapping by 2: finite; the motion module and the references both
    change the frames; the reference pass runs once per step for all windows."""
    frames = 6
    if context == "static":
        options = other_packs.run_node("ADE_StandardStaticContextOptions", context_length=4, context_overlap=2)[0]
    else:
        options = other_packs.run_node("ADE_StandardUniformContextOptions", context_length=4, context_stride=1,
                                       context_overlap=2)[0]
    references = fresh_references(host, 41 if context == "static" else 42)
    model = animated(other_packs, apply_to(host, full_size, references), motion_model_name, context=options)
    runs, handle = count_reference_passes(full_size, model)
    try:
        windows = sample(host, model, full_size, frames)
    finally:
        handle.remove()
    no_motion = sample(host, apply_to(host, full_size, references), full_size, frames)
    other_person = sample(host, animated(other_packs, apply_to(host, full_size, fresh_references(host, 43)),
                                         motion_model_name, context=options), full_size, frames)
    print(context, "motion effect:", relative(windows, no_motion), "references effect:", relative(windows, other_person),
          "reference passes:", len(runs))
    assert torch.isfinite(windows).all()
    assert relative(windows, no_motion) > 1e-3
    assert relative(windows, other_person) > 1e-3
    assert len(runs) == STEPS
