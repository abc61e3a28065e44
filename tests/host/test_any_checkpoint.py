"""FlashFace on another SD1.5 checkpoint (ApplyReferenceAttention's base_model), through the public nodes
and FlashFaceSampler from a seed, on the small golden FlashFace and random SD1.5-shaped MODELs:
W = W_flashface + strength * (W_user - W_base) on every shared main-U-Net weight, nothing else changed."""

import dataclasses

import pytest
import torch

from support.pipeline import apply, golden_run_parts, relative, run_guidance, run_strengths, sample

RUN_RTOL = 1e-5
DELTA_STD = 0.02
UNET = "diffusion_model."


@pytest.fixture()
def delta(flashface):
    """A random change of every main-U-Net weight FlashFace shares with SD1.5 (conv_in's 4 channels too)."""
    generator = torch.Generator().manual_seed(16)
    return {key: torch.randn(w.shape, generator=generator) * DELTA_STD for key, w in flashface.weights.unet.items()}


@pytest.fixture()
def user(make_sd15_patcher, golden_config, delta):
    """The user's checkpoint: the base + delta (its own module)."""
    model = make_sd15_patcher(golden_config["comfy_unet_config_main"])
    unet = model.model.diffusion_model.state_dict(keep_vars=True)
    with torch.no_grad():
        for key, change in delta.items():
            unet[key] += change
    return model


@pytest.fixture()
def run(host, golden):
    """run(model, flashface, **apply_inputs) -> FlashFaceSampler's latent for a fixed seed (3 steps, both phases)."""
    manifest, tensors = golden
    settings = dict(manifest["runs"][1], step_to_launch_face_guidence=700)
    parts = golden_run_parts(host, None, settings, tensors)

    def run_model(model, flashface, **inputs):
        patched = apply(host, model, flashface, parts, **run_strengths(settings), **inputs)
        return sample(host, patched, parts, steps=settings["steps"], seed=1234, **run_guidance(settings))

    return run_model


def shifted(host, flashface, change):
    """A FlashFace file whose main-U-Net weights are W_flashface + change. Its reference modules are
    FlashFace's own: the reference U-Net shares time_embed/middle_block with the main U-Net in the file,
    and the rule leaves the reference U-Net as it is."""
    unet = {key: w + change.get(key, 0) for key, w in flashface.weights.unet.items()}
    model = host.flashface_model.FlashFaceModel("shifted", dataclasses.replace(flashface.weights, unet=unet))
    model.modules_for = flashface.modules_for
    return model


def test_user_equal_to_base_at_strength_1_is_the_normal_run(run, base, flashface):
    normal = run(base, flashface)
    # That run left its FlashFace clone of `base` loaded: the shared module holds W_flashface now (object
    # patches) and the originals are in the (shared) object-patch backup, where they must be read from.
    assert base.object_patches_backup
    same = run(base, flashface, base_model=base, checkpoint_strength=1.0)  # the very same MODEL as both inputs
    print("user == base, strength 1 vs normal run:", relative(same, normal))
    assert relative(same, normal) <= RUN_RTOL


def test_strength_0_is_the_normal_run_and_1_or_half_add_the_checkpoints_change(host, run, base, user, delta,
                                                                               flashface):
    normal = run(base, flashface)
    report = {"strength 0": relative(run(user, flashface, base_model=base, checkpoint_strength=0.0), normal)}
    for strength in (1.0, 0.5):
        expected = run(base, shifted(host, flashface, {k: strength * d for k, d in delta.items()}))
        ours = run(user, flashface, base_model=base, checkpoint_strength=strength)
        report[f"strength {strength}"] = relative(ours, expected)
        assert relative(expected, normal) > 1e-2  # the change is visible, so the comparison means something
    print("max |delta| / max|x0|:", report)
    assert all(value <= RUN_RTOL for value in report.values()), report


def test_lora_on_the_user_model_applies_on_top_and_inputs_stay_unchanged(host, run, base, user, delta, flashface):
    import comfy.model_management

    generator = torch.Generator().manual_seed(4)
    lora = {key: torch.randn(flashface.weights.unet[key].shape, generator=generator) * DELTA_STD
            for key in ("input_blocks.0.0.weight", "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
                        "out.2.bias")}
    with_lora = user.clone()
    with_lora.add_patches({UNET + key: ("diff", (change,)) for key, change in lora.items()})
    stored = {name: {k: v.clone() for k, v in model.model.diffusion_model.state_dict().items()}
              for name, model in (("user", user), ("base", base))}
    patches = {k: list(v) for k, v in with_lora.patches.items()}

    ours = run(with_lora, flashface, base_model=base, checkpoint_strength=0.5)
    change = {key: 0.5 * d + lora.get(key, 0) for key, d in delta.items()}  # the LoRA is not scaled by the strength
    expected = run(base, shifted(host, flashface, change))
    print("LoRA on the user model, strength 0.5:", relative(ours, expected))
    assert relative(ours, expected) <= RUN_RTOL

    assert with_lora.patches == patches and not base.patches and not user.patches
    for name, model in (("user", user), ("base", base)):
        comfy.model_management.load_models_gpu([model])  # what the next node using it does
        for key, tensor in model.model.diffusion_model.state_dict().items():
            assert torch.equal(tensor, stored[name][key]), (name, key)


def test_lowvram_load_computes_the_same_weights(host, base, user, flashface, loaded_call_options):
    """Weights patched at every forward (ComfyUI's lowvram LowVramPatch) equal the fully loaded ones."""
    import comfy.model_management

    negative = [[torch.zeros(1, 77, 32), {}]]
    refs = host.reference_set.ReferenceSet(torch.randn(2, 4, 14, 14, generator=torch.Generator().manual_seed(5)), [1, 1])
    patched = host.nodes.ApplyReferenceAttention.execute(
        user, flashface, refs, negative, 1.2, 0.85, base_model=base, checkpoint_strength=0.5).result[0]
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    conv_in = user.model.diffusion_model.input_blocks[0][0]
    stored_conv_in = conv_in.weight.detach().clone()

    def eps(options):
        with torch.no_grad():
            return patched.model.diffusion_model(x, torch.tensor([500.0]), context=negative[0][0],
                                                 transformer_options=options)

    options = loaded_call_options(patched, cond_or_uncond=[0])  # loads it fully: weights patched once
    full = eps(options)
    comfy.model_management.unload_all_models()
    patched.patch_model(lowvram_model_memory=1)  # every layer stays as stored and is patched at forward time
    try:
        assert patched.model.model_lowvram and patched.model.lowvram_patch_counter > 0
        assert torch.equal(conv_in.weight, stored_conv_in) and conv_in.weight_function
        lowvram = eps(options)
    finally:
        patched.unpatch_model()
    print("lowvram vs full load:", relative(lowvram, full))
    assert relative(lowvram, full) <= RUN_RTOL


def sd15_like(make_sd15_patcher, golden_config, **changes):
    return make_sd15_patcher({**golden_config["comfy_unet_config_main"], **changes})


def inpainting(make_sd15_patcher, golden_config):
    """An SD1.5-shaped U-Net whose conv_in reads 9 channels, like an inpainting checkpoint's."""
    model = sd15_like(make_sd15_patcher, golden_config)
    conv_in = model.model.diffusion_model.input_blocks[0][0]
    conv_in.weight = torch.nn.Parameter(torch.zeros(conv_in.out_channels, 9, 3, 3), requires_grad=False)
    return model


@pytest.mark.parametrize("kind, found", [
    ("sd2", "text context 1024 wide, SD1.5's is 32: an SD2.x model?"),
    ("sdxl", "text context 2048 wide, SD1.5's is 32: an SDXL model?"),
    ("inpainting", "is [32, 9, 3, 3] where SD1.5 has [32, 4, 3, 3] (a 9-channel inpainting model?)"),
])
@pytest.mark.parametrize("wrong_input", ["model", "base_model"])
def test_models_that_are_not_sd15_are_refused_before_anything_is_patched(host, run, make_sd15_patcher,
                                                                         golden_config, base, flashface, kind, found,
                                                                         wrong_input):
    if kind == "inpainting":
        wrong = inpainting(make_sd15_patcher, golden_config)
    else:
        wrong = sd15_like(make_sd15_patcher, golden_config, context_dim={"sd2": 1024, "sdxl": 2048}[kind])
    model, base_model = (wrong, base) if wrong_input == "model" else (base, wrong)
    with pytest.raises(host.errors.FlashFaceNodeError) as error:
        run(model, flashface, base_model=base_model)
    message = str(error.value)
    print(message)
    assert message.startswith(f"ApplyReferenceAttention: `{wrong_input}` is not an SD1.5 U-Net") and found in message
    assert ("v1-5-pruned-emaonly" in message) == (wrong_input == "base_model")
    assert not model.patches and not base_model.patches and not host.call.has_reference_attention(model)


def test_base_model_with_a_lora_is_refused(host, run, base, user, flashface):
    with_lora = base.clone()
    with_lora.add_patches({UNET + "out.2.bias": ("diff", (torch.ones(4),))})
    with pytest.raises(host.errors.FlashFaceNodeError,
                       match=r"`base_model` has weight patches \(a LoRA or a merge\?\) on 1 U-Net weights, e.g. out.2.bias"):
        run(user, flashface, base_model=with_lora)
    assert not user.patches
