"""FlashFace next to what a real user's graph adds: ComfyUI's memory manager (partial loading, manual
cast, compute dtypes), any sampler (KSampler, SamplerCustom with CFGGuider) with FlashFace's guidance,
guidance hooks (RescaleCFG, APG, PAG, post-cfg), the cond convention other packs read, split calls,
core patch nodes (ToMe, HyperTile, EasyCache, LazyCache), area prompts, noise masks and combined
negatives."""

import pytest
import torch

from support.pipeline import apply, relative, sample

RTOL = 1e-5


# --- memory manager ----------------------------------------------------------------------------


def test_partial_load_and_manual_cast_equal_the_normal_run(host, flashface, parts, monkeypatch):
    """fp16-stored FlashFace weights computing in fp32 (cast on the fly), once fully loaded and once
    loaded partially with a 1 MB budget, equal a run whose weights were upcast once beforehand."""
    import comfy.model_management

    half = host.flashface_model.FlashFaceModel("half", flashface.weights.to(torch.float16))
    upcast = host.flashface_model.FlashFaceModel("upcast", half.weights.to(torch.float32))
    base = parts.base
    expected = sample(host, apply(host, base, upcast, parts), parts)
    manual_cast = sample(host, apply(host, base, half, parts), parts)
    # Applied again while the first half-precision clone is still loaded (its parameters in the modules).
    assert torch.equal(sample(host, apply(host, base, half, parts), parts), manual_cast)

    lowvram_layers = []
    model_load = comfy.model_management.LoadedModel.model_load

    def load_partially(self, lowvram_model_memory=0, force_patch_weights=False):
        out = model_load(self, lowvram_model_memory=1024 * 1024, force_patch_weights=force_patch_weights)
        if isinstance(self.model.model, host.flashface_model.ReferenceModules):
            lowvram_layers.extend(m for m in self.model.model.modules() if hasattr(m, "prev_comfy_cast_weights"))
        return out

    comfy.model_management.unload_all_models()
    monkeypatch.setattr(comfy.model_management.LoadedModel, "model_load", load_partially)
    partial = sample(host, apply(host, base, half, parts), parts)
    monkeypatch.undo()
    comfy.model_management.unload_all_models()
    print("manual cast vs upcast:", relative(manual_cast, expected), "partial load vs upcast:", relative(partial, expected))
    assert len(lowvram_layers) > 10  # ComfyUI itself left the reference layers offloaded and cast them
    assert relative(manual_cast, expected) <= RTOL
    assert relative(partial, expected) <= RTOL


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32"])
def test_model_compute_dtype_before_or_after_apply(host, flashface, parts, dtype):
    from comfy_extras.nodes_model_advanced import ModelComputeDtype

    base = parts.base
    before = apply(host, ModelComputeDtype().patch(base, dtype)[0], flashface, parts)
    after = ModelComputeDtype().patch(apply(host, base, flashface, parts), dtype)[0]
    reference = sample(host, apply(host, base, flashface, parts), parts)
    for model in (before, after):
        out = sample(host, model, parts)
        assert torch.isfinite(out).all() and out.abs().max() > 0
        # Same model, lower precision: close to the fp32 run, not equal to it.
        assert relative(out, reference) < (1e-5 if dtype == "fp32" else 0.1), dtype


# --- guidance hooks ----------------------------------------------------------------------------


def _guided(host, guider, parts):
    import comfy.samplers

    model = guider.model_patcher
    guider.set_conds(parts.positive, parts.negative)
    sigmas = host.sampling.flashface_sigmas(model, "normal", 3)
    noise = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    return guider.sample(noise, torch.zeros_like(noise), comfy.samplers.sampler_object("euler"), sigmas,
                         disable_pbar=True, seed=0)


def _with_hook(model, hook):
    from comfy_extras.nodes_apg import APG
    from comfy_extras.nodes_model_advanced import RescaleCFG

    if hook == "rescale_cfg":
        return RescaleCFG().patch(model, 0.7)[0]
    if hook == "apg":
        return APG.execute(model, eta=0.5, norm_threshold=5.0, momentum=-0.5).result[0]
    if hook == "post_cfg":
        model = model.clone()
        model.set_model_sampler_post_cfg_function(lambda args: args["denoised"] * 0.9 + 0.05 * args["cond_denoised"])
        return model
    return model


@pytest.mark.parametrize("hook", [None, "rescale_cfg", "apg", "post_cfg"])
def test_without_reference_guidance_the_guider_is_comfyuis_cfg_guider(host, flashface, parts, hook):
    """reference_cfg 0 and cfg_rescale 0: FlashFace's guidance adds nothing to ComfyUI's CFG, hook or not
    (the same model with FlashFace's post-CFG hook taken out gives the same result)."""
    import comfy.samplers
    from flashface_core.guidance import GuidanceSettings

    model = _with_hook(apply(host, parts.base, flashface, parts, reference_strength=0.85), hook)
    settings = GuidanceSettings(reference_cfg=0.0, launch_timestep=750, cfg_rescale=0.0)
    flashface_guider = host.sampling.flashface_guider(model, parts.positive, parts.negative, 6.0, settings, "test")
    stripped = flashface_guider.model_patcher.clone()
    stripped.model_options["sampler_post_cfg_function"].remove(host.guidance.reference_guidance)
    cfg_guider = comfy.samplers.CFGGuider(stripped)
    cfg_guider.set_cfg(6.0)
    ours, theirs = _guided(host, flashface_guider, parts), _guided(host, cfg_guider, parts)
    assert torch.equal(ours, theirs), relative(ours, theirs)


@pytest.mark.parametrize("hook", ["rescale_cfg", "apg", "post_cfg"])
def test_hooks_act_on_the_three_way_step(host, flashface, parts, hook):
    plain = sample(host, apply(host, parts.base, flashface, parts), parts)
    hooked = sample(host, _with_hook(apply(host, parts.base, flashface, parts), hook), parts)
    assert torch.isfinite(hooked).all()
    assert relative(hooked, plain) > 1e-3, hook


def _foreign_patch(model):
    """A pack's patch that changes nothing: FlashFace no longer knows what touches the call."""
    model = model.clone()
    model.set_model_attn2_output_patch(lambda n, extra_options: n)
    return model


@pytest.mark.parametrize("forked", [True, False])
def test_rows_follow_comfyuis_cond_convention(host, flashface, parts, monkeypatch, forked):
    """Other packs see only labels 0 (prompt rows) and 1 (negative). In three-way steps the prompt row
    without references is forked off inside the call when only FlashFace touches it; otherwise it comes
    in a call of its own, labelled 0 and told apart by FlashFace's own key."""
    wrapper_class = host.call.ReferenceAttentionWrapper
    row_strengths = wrapper_class.row_strengths
    seen = []

    def record(self, identity, transformer_options, timesteps, batch):
        strengths = row_strengths(self, identity, transformer_options, timesteps, batch)
        labels = transformer_options["cond_or_uncond"]  # ComfyUI may batch them in any order
        without = bool(transformer_options.get(host.guidance.WITHOUT_REFERENCES_KEY))
        seen.append((without, {label: round(float(s), 3) for label, s in zip(labels, strengths)}))
        return strengths

    monkeypatch.setattr(wrapper_class, "row_strengths", record)
    model = apply(host, parts.base, flashface, parts)
    sample(host, model if forked else _foreign_patch(model), parts)
    # trailing grid of 3 steps: t = 999 (before launch), 666 and 333 (three-way)
    three_way = [(False, {0: 1.2, 1: 0.0})] + ([] if forked else [(True, {0: 0.0})])
    assert seen == [(False, {0: 0.85, 1: 0.85})] + three_way + three_way


def test_forked_row_without_references_equals_its_own_call(host, flashface, parts):
    """The prompt row without references forked off after the shared encoder gives the latent its own
    call gives (a pack's patch that changes nothing turns the fork off)."""
    model = apply(host, parts.base, flashface, parts)
    forked, own_call = sample(host, model, parts), sample(host, _foreign_patch(model), parts)
    print("forked vs own call", relative(forked, own_call))
    assert relative(forked, own_call) <= RTOL


# --- any sampler --------------------------------------------------------------------------------


def _ksampler(host, model, parts, sampler_name, scheduler, steps=4, cfg=7.5, latent=None):
    """What KSampler (and a detailer) runs: comfy.sample.sample on the MODEL with cfg = text CFG."""
    import comfy.sample

    latent = latent or {"samples": torch.zeros(1, 4, 16, 16)}
    noise = comfy.sample.prepare_noise(latent["samples"], 7)
    return comfy.sample.sample(model, noise, steps, cfg, sampler_name, scheduler, parts.positive, parts.negative,
                               latent["samples"], noise_mask=latent.get("noise_mask"), disable_pbar=True, seed=7)


def _guidance(host, model, reference_cfg=3.2, launch_timestep=750, cfg_rescale=0.5):
    return host.nodes.FlashFaceGuidance.execute(model, reference_cfg, launch_timestep, cfg_rescale).result[0]


@pytest.mark.parametrize("sampler_name, scheduler", [("euler", "normal"), ("dpmpp_2m", "karras"), ("ddim", "simple")])
def test_ksampler_on_the_model_is_the_flashface_sampler(host, flashface, parts, sampler_name, scheduler):
    """KSampler(cfg = text CFG) on a FlashFace MODEL gets the whole guidance: the same latent as
    FlashFaceSampler with that core sampler and scheduler, and not the plain two-way result."""
    model = apply(host, parts.base, flashface, parts)
    ours = sample(host, model, parts, steps=4, reference_cfg=2.5, launch_timestep=600, cfg_rescale=0.3,
                  sampler_name=sampler_name, scheduler=scheduler)
    ksampler = _ksampler(host, _guidance(host, model, 2.5, 600, 0.3), parts, sampler_name, scheduler)
    two_way = _ksampler(host, _guidance(host, model, 0.0, 600, 0.0), parts, sampler_name, scheduler)
    print(sampler_name, "KSampler vs FlashFaceSampler", relative(ksampler, ours), "vs two-way", relative(two_way, ours))
    assert relative(ksampler, ours) <= RTOL
    assert relative(two_way, ours) > 1e-3


def test_samplercustom_with_cfgguider_gets_the_default_guidance(host, flashface, parts):
    """An ApplyReferenceAttention MODEL carries the official settings (3.2 / 750 / 0.5) for ComfyUI's
    own CFGGuider: SamplerCustom equals FlashFaceSampler with its defaults."""
    import comfy.samplers

    model = apply(host, parts.base, flashface, parts)
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(parts.positive, parts.negative)
    guider.set_cfg(7.5)
    noise = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(5))
    sigmas = host.sampling.flashface_sigmas(model, "normal", 4)
    theirs = guider.sample(noise, torch.zeros_like(noise), comfy.samplers.sampler_object("euler"), sigmas,
                           disable_pbar=True, seed=0)
    ours = host.sampling.flashface_guider(model, parts.positive, parts.negative, 7.5, host.guidance.GuidanceSettings(), "test")
    ours = ours.sample(noise, torch.zeros_like(noise), comfy.samplers.sampler_object("euler"), sigmas,
                       disable_pbar=True, seed=0)
    assert torch.equal(theirs, ours)


def test_split_calls_see_only_labels_0_and_1_and_equal_one_call(host, flashface, parts, monkeypatch):
    """With too little memory ComfyUI runs every row in a call of its own; the latent is the same as with
    all rows in one call, and no call ever carries a label other than 0 or 1."""
    import comfy.patcher_extension

    model = apply(host, parts.base, flashface, parts).clone()
    calls = []

    def record(executor, x, timesteps, context, y, control, transformer_options, **kwargs):
        calls.append(list(transformer_options["cond_or_uncond"]))
        return executor(x, timesteps, context, y, control, transformer_options, **kwargs)

    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test_recorder", record)
    together = _ksampler(host, model, parts, "euler", "normal")
    rows_together = max(len(c) for c in calls)
    calls.clear()
    monkeypatch.setattr(model.model, "memory_required", lambda *args, **kwargs: 1e30)
    split = _ksampler(host, model, parts, "euler", "normal")
    assert rows_together == 2 and max(len(c) for c in calls) == 1
    assert {label for c in calls for label in c} == {0, 1}
    assert relative(split, together) <= RTOL


def test_reference_guidance_comes_after_pag_in_either_order(host, flashface, parts):
    """PAG applied after ApplyReferenceAttention still acts on the two-way part before FlashFace's
    reference term and rescale, as when applied before."""
    from comfy_extras.nodes_pag import PerturbedAttentionGuidance

    def pag(model):
        return PerturbedAttentionGuidance.execute(model, scale=2.0).result[0]

    before = _ksampler(host, apply(host, pag(parts.base), flashface, parts), parts, "euler", "normal")
    after = _ksampler(host, pag(apply(host, parts.base, flashface, parts)), parts, "euler", "normal")
    plain = _ksampler(host, apply(host, parts.base, flashface, parts), parts, "euler", "normal")
    assert torch.equal(before, after)
    assert relative(after, plain) > 1e-3


def test_launch_compares_the_real_timestep(host, flashface, parts):
    """t = 750.4 is not yet at the launch timestep 750: early strength on both rows; 750 is."""
    model = apply(host, parts.base, flashface, parts)
    wrapper = host.call.reference_attention_wrapper(model)
    options = {**model.model_options["transformer_options"], "cond_or_uncond": [0, 1]}
    identity = wrapper.identities[0]
    early = wrapper.row_strengths(identity, options, torch.tensor([750.4, 750.4]), 2)
    launched = wrapper.row_strengths(identity, options, torch.tensor([750.0, 750.0]), 2)
    assert early.tolist() == pytest.approx([0.85, 0.85]) and launched.tolist() == pytest.approx([1.2, 0.0])


def test_face_mask_follows_the_noise_mask(host, flashface, parts):
    """face_mask_from 'noise mask': the face-position channel is the latent's noise mask (what a detailer
    crops), the same as connecting that mask as face_mask; without a noise mask the error says so."""
    mask = torch.zeros(1, 128, 128)
    mask[:, 32:96, 16:80] = 1  # on the 8-pixel latent grid
    latent = {"samples": torch.zeros(1, 4, 16, 16), "noise_mask": mask}
    from_noise = apply(host, parts.base, flashface, parts, face_mask=None, face_mask_from="noise mask")
    from_input = apply(host, parts.base, flashface, parts, face_mask=mask)
    elsewhere = apply(host, parts.base, flashface, parts, face_mask=1 - mask)
    ours = _ksampler(host, from_noise, parts, "euler", "normal", latent=latent)
    assert torch.equal(ours, _ksampler(host, from_input, parts, "euler", "normal", latent=latent))
    assert relative(ours, _ksampler(host, elsewhere, parts, "euler", "normal", latent=latent)) > 1e-3
    with pytest.raises(host.errors.FlashFaceNodeError, match="no noise mask"):
        _ksampler(host, from_noise, parts, "euler", "normal")


# --- core patch nodes --------------------------------------------------------------------------


def _patch_node(name, model):
    from comfy_extras.nodes_easycache import EasyCacheNode, LazyCacheNode
    from comfy_extras.nodes_hypertile import HyperTile
    from comfy_extras.nodes_tomesd import TomePatchModel

    if name == "tome":
        return TomePatchModel.execute(model, ratio=0.5).result[0]
    if name == "hypertile":  # 64 px tiles = 8 latent tokens: the 16x16 blocks are tiled
        return HyperTile.execute(model, tile_size=64, swap_size=2, max_depth=0, scale_depth=False)[0]
    node = EasyCacheNode if name == "easycache" else LazyCacheNode
    return node.execute(model, reuse_threshold=3.0, start_percent=0.0, end_percent=1.0, verbose=False).result[0]


@pytest.mark.parametrize("name", ["tome", "hypertile", "easycache", "lazycache"])
def test_core_patch_nodes_run_in_either_order(host, flashface, parts, name):
    plain = sample(host, apply(host, parts.base, flashface, parts), parts, steps=4)
    before = sample(host, apply(host, _patch_node(name, parts.base), flashface, parts), parts, steps=4)
    after = sample(host, _patch_node(name, apply(host, parts.base, flashface, parts)), parts, steps=4)
    for out in (before, after):
        assert torch.isfinite(out).all() and out.abs().max() > 0
        assert relative(out, plain) < 0.5, name  # an approximation of the same image, not noise


# --- conds -------------------------------------------------------------------------------------


def test_area_prompt_crops_the_face_mask_like_the_latent(host, flashface, parts):
    """With ConditioningSetArea the U-Net sees the area's part of the latent; its face-mask rows are
    the same part of the full mask, not the whole mask squeezed into the area."""
    import comfy.patcher_extension
    import nodes

    from flashface_core.masks import latent_mask

    right_half = nodes.ConditioningSetArea().append(parts.positive, 64, 128, 64, 0, 1.0)[0]
    model = apply(host, parts.base, flashface, parts).clone()
    calls = []

    def record(executor, x, *args, **kwargs):
        calls.append((x.shape[-1], kwargs[host.call.FACE_MASK_COND]))
        return executor(x, *args, **kwargs)

    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test_recorder", record)
    out = sample(host, model, parts, positive=parts.positive + right_half)
    full = latent_mask(parts.face_mask, 16, 16)[0]
    cropped = [mask for width, mask in calls if width == 8]
    assert torch.isfinite(out).all() and cropped
    for mask in cropped:
        assert torch.equal(mask[0, 0].cpu(), full[:, 8:])
    assert any(torch.equal(mask[0, 0].cpu(), full) for width, mask in calls if width == 16)


def test_every_negative_entry_conditions_the_reference_pass(host, flashface, parts):
    """A combined negative (two entries) mixes each entry's reference pass by strength, as ComfyUI
    mixes conds; two equal entries are the single one."""
    negative = parts.negative
    other = [[torch.randn_like(negative[0][0]), {"strength": 3.0}]]
    single = apply(host, parts.base, flashface, parts)
    doubled = apply(host, parts.base, flashface, parts, negative=negative + negative)
    combined = apply(host, parts.base, flashface, parts, negative=negative + other)
    states = {}
    for name, model in (("single", single), ("doubled", doubled), ("combined", combined),
                        ("other", apply(host, parts.base, flashface, parts, negative=other))):
        wrapper = host.call.reference_attention_wrapper(model)
        with torch.no_grad():
            states[name] = wrapper.reference_states(torch.tensor([500.0]), torch.zeros(1, 4, 16, 16),
                                                    wrapper.identities[0])
    for key, single_state in states["single"].items():
        assert torch.allclose(states["doubled"][key], single_state, atol=1e-6)
        expected = 0.25 * single_state + 0.75 * states["other"][key]
        assert torch.allclose(states["combined"][key], expected, atol=1e-5)


def test_loras_on_the_model_change_the_main_unet_not_the_reference_pass(host, flashface, parts):
    """Weight patches on the user's MODEL (LoRAs) apply to the main U-Net, also on the weights the
    reference U-Net shares with it in the FlashFace file (time embedding, middle block); the reference
    pass keeps FlashFace's own weights."""
    base = parts.base
    lora = base.clone()
    shared_keys = [k for k in flashface.weights.unet if k.startswith(("time_embed.", "middle_block."))]
    generator = torch.Generator().manual_seed(9)
    lora.add_patches({f"diffusion_model.{k}": (torch.randn(flashface.weights.unet[k].shape, generator=generator) * 0.05,)
                      for k in shared_keys})
    plain, with_lora = apply(host, base, flashface, parts), apply(host, lora, flashface, parts)
    states = []
    for model in (plain, with_lora):
        wrapper = host.call.reference_attention_wrapper(model)
        with torch.no_grad():
            states.append(wrapper.reference_states(torch.tensor([500.0]), torch.zeros(1, 4, 16, 16),
                                                      wrapper.identities[0]))
    assert all(torch.equal(states[0][key], states[1][key]) for key in states[0])
    assert relative(sample(host, with_lora, parts), sample(host, plain, parts)) > 1e-3


@pytest.mark.parametrize("name", ["easycache", "lazycache"])
@pytest.mark.parametrize("order", ["before", "after"])
def test_caching_nodes_skip_steps_and_keep_flashface_rows_apart(host, flashface, parts, monkeypatch, name, order):
    """Both skip U-Net runs on a FlashFace model; every row EasyCache sees has its own cond uuid, so its
    per-cond state never takes 'positive + references' for 'positive' (they shared one uuid before)."""
    import comfy.patcher_extension

    model = (apply(host, _patch_node(name, parts.base), flashface, parts) if order == "before"
             else _patch_node(name, apply(host, parts.base, flashface, parts)))
    predictions, three_way, unet_runs, row_uuids = [], [], [], []
    without_references = host.guidance.without_references

    def count_prediction(executor, *args, **kwargs):
        predictions.append(1)
        return executor(*args, **kwargs)

    def count_three_way(positive):
        three_way.append(1)
        return without_references(positive)

    def record_uuids(executor, x, timesteps, context, y, control, transformer_options, **kwargs):
        row_uuids.append(transformer_options["uuids"])
        return executor(x, timesteps, context, y, control, transformer_options, **kwargs)

    monkeypatch.setattr(host.guidance, "without_references", count_three_way)
    model = model.clone()
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.PREDICT_NOISE, "test_recorder", count_prediction)
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test_recorder", record_uuids)
    conv_in = model.model.diffusion_model.input_blocks[0][0]
    handle = conv_in.register_forward_pre_hook(lambda module, args: unet_runs.append(1))
    try:
        out = sample(host, model, parts, steps=8)
    finally:
        handle.remove()
    print(name, order, "predictions", len(predictions), "U-Net runs", len(unet_runs))
    assert torch.isfinite(out).all()
    if name == "easycache":  # skips U-Net runs inside predictions (one run, two in three-way steps)
        assert len(predictions) == 8 and three_way and len(unet_runs) < len(predictions) + len(three_way)
    else:  # skips whole predictions
        assert len(unet_runs) == len(predictions) < 8
    assert all(len(set(uuids)) == len(uuids) for uuids in row_uuids)
