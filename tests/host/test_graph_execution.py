"""Whole graphs through ComfyUI's own validate_prompt + PromptExecutor, in-process, with random-weight
full-size SD1.5 and FlashFace models (built once, see model_files), at 64 px and 2 steps.

The shipped workflows run as `python -m flashface_runner` converts them; variants swap in core
samplers; the crop-and-stitch workflows sample only the crops and leave pixels outside their masks
alone; a cancel stops sampling and leaves the checkpoint's own model unpatched.
"""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from flashface_runner import comfyui, ui_format
from support import model_files, other_packs
from support.paths import WORKFLOW_DIR, WORKFLOWS

SIZE, STEPS = 64, 2
FRAMES, CONTEXT, OVERLAP = 6, 4, 2  # animation workflows: two overlapping context windows


@pytest.fixture(scope="module")
def runner(host, keys_tsv, tmp_path_factory):
    """A Runner over ComfyUI's executor with the random models, fp16 weights (computed in fp32 on
    CPU by ComfyUI's manual cast: half the memory, ~8 GB instead of ~15 GB), outputs in a temp folder."""
    import comfy.cli_args
    import comfy.model_management
    import folder_paths

    models = model_files.cached_models_dir(keys_tsv)
    args = comfy.cli_args.args
    saved = args.fp16_unet, folder_paths.get_output_directory()
    args.fp16_unet = True
    folder_paths.set_output_directory(str(tmp_path_factory.mktemp("outputs")))
    comfyui.add_models_dir(models)
    comfyui.load_nodes()
    yield comfyui.Runner()
    args.fp16_unet, output_dir = saved
    folder_paths.set_output_directory(output_dir)
    comfy.model_management.unload_all_models()


def workflow_prompt(name):
    """The workflow as the runner converts it, shrunk to SIZE px and STEPS steps."""
    prompt = ui_format.ui_to_api(json.loads((WORKFLOW_DIR / f"{name}.json").read_text()), comfyui.input_types_of)
    comfyui.resolve_input_images(prompt, WORKFLOW_DIR)
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "FaceCrop":  # the photo keeps its size, the crop is sampled at SIZE
            crop_shrink = SIZE / inputs["size"]
            inputs.update(size=SIZE, grow=round(inputs["grow"] * crop_shrink),
                          feather=round(inputs["feather"] * crop_shrink))
        if node["class_type"] in ("EmptyLatentImage", "FaceMask"):
            inputs.update(width=SIZE, height=SIZE)
        if "steps" in inputs:
            inputs["steps"] = STEPS
        if node["class_type"] == "CheckpointLoaderSimple":  # the random SD1.5 stands in for the user's checkpoint too
            inputs["ckpt_name"] = model_files.SD15_NAME
        if node["class_type"] == "ADE_LoadAnimateDiffModel":
            inputs["model_name"] = other_packs.MOTION_MODEL
        if node["class_type"] == "EmptyLatentImage" and inputs["batch_size"] > 1:
            inputs["batch_size"] = FRAMES
        if node["class_type"] == "ADE_StandardUniformContextOptions":
            inputs.update(context_length=CONTEXT, context_overlap=OVERLAP)
    assert comfyui.missing_models(prompt) == []
    return prompt


def by_type(prompt, kind):
    return [node["inputs"] for node in prompt.values() if node["class_type"] == kind]


def node_id(prompt, kind):
    [found] = [i for i, node in prompt.items() if node["class_type"] == kind]
    return found


def assert_ran(runner, prompt, workflow=None):
    result = runner.run(prompt, workflow)
    assert result.success, result.error
    for i, node in prompt.items():
        if node["class_type"] == "VAEDecode":
            image = runner.node_output(i)
            assert image.shape[1:] == (SIZE, SIZE, 3) and torch.isfinite(image).all()
    saved = {tuple(runner.node_output(node["inputs"]["images"][0]).shape[2:0:-1])  # (width, height) of what is saved
             for node in prompt.values() if node["class_type"] in ("SaveImage", "SaveAnimatedWEBP")}
    assert result.images and all(Image.open(path).size in saved for path in result.images)
    return result


def test_saved_png_opens_as_its_workflow(runner):
    """Like the UI's, the runner's PNGs carry the prompt and the workflow (ComfyUI loads either)."""
    workflow = json.loads((WORKFLOW_DIR / "FlashFace character made real.json").read_text())
    prompt = workflow_prompt("FlashFace character made real")
    prompt[node_id(prompt, "FlashFaceSampler")]["inputs"]["seed"] = 20260  # not served from the cache
    [path] = assert_ran(runner, prompt, workflow).images
    info = Image.open(path).info
    assert json.loads(info["workflow"]) == workflow and json.loads(info["prompt"]) == prompt
    assert not any(os.path.isabs(node["inputs"].get("image", "")) for node in prompt.values())


def test_missing_model_names_file_and_folder(runner):
    prompt = workflow_prompt("FlashFace portrait")
    loader = node_id(prompt, "LoadFlashFace")
    prompt[loader]["inputs"]["flashface_name"] = "not_there.ckpt"
    [problem] = comfyui.missing_models(prompt)
    assert "'not_there.ckpt'" in problem and "'flashface' folder" in problem
    assert f"--set {loader}.flashface_name=FILE" in problem


# Crop-and-stitch workflows last: test_crop_and_stitch_keep_pixels_outside_the_masks then reads their
# results from the cache.
CROP_AND_STITCH = ("FlashFace face swap", "FlashFace face swap two people", "FlashFace face refine")


@pytest.mark.parametrize("name", sorted(WORKFLOWS, key=lambda n: n in CROP_AND_STITCH))
def test_shipped_workflow_runs(runner, request, name):
    if other_packs.packs_needed(json.loads((WORKFLOW_DIR / f"{name}.json").read_text())):
        request.getfixturevalue("other_packs")  # skips with the reason when they are not there
        other_packs.ensure_motion_model()
    assert_ran(runner, workflow_prompt(name))


def changed_support(record, index=0):
    """Where FaceStitch may change image `index`: the crop's mask scaled back into its square."""
    from flashface_core.faces.face_crop import resample

    p = record.placements[index]
    where = torch.zeros(record.height, record.width, dtype=torch.bool)
    where[p.top:p.top + p.side, p.left:p.left + p.side] = resample(record.masks[index][None], p.side, p.side)[0] > 0
    return where


@pytest.mark.parametrize("name", CROP_AND_STITCH)
def test_crop_and_stitch_keep_pixels_outside_the_masks(runner, name):
    """Only the crops go through the VAE and the U-Net; the photo comes back at its size, every face repainted
    and every pixel outside the masks bit-identical (in the saved 8-bit PNG too)."""
    prompt = workflow_prompt(name)
    result = assert_ran(runner, prompt)  # cached right after the parametrized run
    crops = [i for i, node in prompt.items() if node["class_type"] == "FaceCrop"]
    [first] = [i for i in crops if prompt[prompt[i]["inputs"]["image"][0]]["class_type"] != "FaceStitch"]
    original = runner.node_output(prompt[first]["inputs"]["image"][0])
    [save] = by_type(prompt, "SaveImage")
    final = runner.node_output(save["images"][0])
    assert final.shape == original.shape
    for inputs in by_type(prompt, "VAEEncode"):
        assert runner.node_output(inputs["pixels"][0]).shape[1:3] == (SIZE, SIZE)
    for inputs in by_type(prompt, "FlashFaceSampler"):
        assert runner.node_output(inputs["latent_image"][0])["samples"].shape[-2:] == (SIZE // 8, SIZE // 8)
    supports = [changed_support(runner.node_output(i, 2)) for i in crops]
    changed = torch.stack(supports).any(0)
    assert torch.equal(final[0][~changed], original[0][~changed])
    for support in supports:  # every face was repainted
        assert float((final - original).abs()[0][support].max()) > 1 / 255
    saved = torch.from_numpy(np.asarray(Image.open(result.images[0])).astype(np.int16))
    original_8bit = (original[0].clamp(0, 1) * 255).round().to(torch.int16)
    assert int((saved - original_8bit).abs()[~changed].max()) <= 1  # SaveImage truncates 255 * x to 8 bits


def test_face_swap_two_crops_one_face_each(runner):
    prompt = workflow_prompt("FlashFace face swap two people")
    assert_ran(runner, prompt)
    places = [runner.node_output(i, 2).placements[0] for i, node in prompt.items() if node["class_type"] == "FaceCrop"]
    centres = sorted(p.left + p.side / 2 for p in places)
    record = runner.node_output(next(i for i, n in prompt.items() if n["class_type"] == "FaceCrop"), 2)
    assert centres[0] < record.width / 2 < centres[1]


def test_any_checkpoint_with_plain_sd15_as_both_models_is_the_portrait(runner):
    """Here both loaders read the random SD1.5: a zero difference, so the portrait's latent exactly."""
    latents = []
    for name in ("FlashFace portrait", "FlashFace any SD1.5 checkpoint"):
        prompt = workflow_prompt(name)
        assert_ran(runner, prompt)
        latents.append(runner.node_output(node_id(prompt, "FlashFaceSampler"))["samples"])
    assert torch.equal(*latents)


def test_plain_ksampler_runs_the_flashface_model(runner):
    prompt = workflow_prompt("FlashFace portrait")
    sampler = node_id(prompt, "FlashFaceSampler")
    inputs = prompt[sampler]["inputs"]
    prompt[sampler] = {"class_type": "KSampler", "inputs": {
        **{k: inputs[k] for k in ("model", "positive", "negative", "latent_image", "seed")},
        "steps": STEPS, "cfg": 7.5, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}}
    assert_ran(runner, prompt)


def test_flashface_guider_with_core_sampler_and_scheduler(runner):
    prompt = workflow_prompt("FlashFace advanced sampling")
    model = prompt[node_id(prompt, "FlashFaceGuider")]["inputs"]["model"]
    prompt[node_id(prompt, "FlashFaceDDIMSampler")] = {
        "class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}}
    prompt[node_id(prompt, "FlashFaceTrailingScheduler")] = {
        "class_type": "BasicScheduler",
        "inputs": {"model": model, "scheduler": "normal", "steps": STEPS, "denoise": 1.0}}
    assert_ran(runner, prompt)


def test_cancel_stops_sampling_and_leaves_the_checkpoint_model_unpatched(runner, models_file_tensors):
    import comfy.model_management

    prompt = workflow_prompt("FlashFace portrait")
    sampler = node_id(prompt, "FlashFaceSampler")
    prompt[sampler]["inputs"].update(steps=3, seed=1234)  # not cached
    seen = []

    def cancel_at_step_one(value, total):
        seen.append((value, total))
        if value == 1:
            comfy.model_management.interrupt_current_processing()

    runner.on_progress = cancel_at_step_one
    try:
        result = runner.run(prompt)
    finally:
        runner.on_progress = None
    assert not result.success and result.error == f"interrupted at node #{sampler} FlashFaceSampler"
    assert seen == [(1, 3)]
    assert not comfy.model_management.processing_interrupted()

    base = runner.node_output(node_id(prompt, "CheckpointLoaderSimple"))  # the checkpoint's own MODEL
    comfy.model_management.load_models_gpu([base])  # what the next node using it does
    unet = base.model.diffusion_model
    for key, tensor in unet.state_dict().items():
        expected = models_file_tensors(f"model.diffusion_model.{key}")
        assert tensor.shape == expected.shape and torch.equal(tensor, expected.to(tensor.dtype)), key
    fresh = comfy_unet_on_meta(base)
    eps = {name: m.eps for name, m in unet.named_modules() if isinstance(m, torch.nn.GroupNorm)}
    assert eps == {name: m.eps for name, m in fresh.named_modules() if isinstance(m, torch.nn.GroupNorm)}
    # and ComfyUI's own containers again, not FlashFace's object patches (decoder in_layers)
    fresh_types = {name: type(m) for name, m in fresh.named_modules()}
    changed = {name: type(m).__name__ for name, m in unet.named_modules() if type(m).__name__ != fresh_types[name].__name__}
    assert not changed, changed


def comfy_unet_on_meta(model_patcher):
    """A fresh U-Net of the same config (on the meta device, no memory): ComfyUI's own GroupNorm eps."""
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    config = model_patcher.model.model_config.unet_config
    return UNetModel(**config, device="meta", operations=comfy.ops.disable_weight_init)


@pytest.fixture
def models_file_tensors(keys_tsv):
    from safetensors import safe_open

    path = model_files.cached_models_dir(keys_tsv) / "checkpoints" / model_files.SD15_NAME
    with safe_open(str(path), framework="pt") as file:
        yield file.get_tensor
