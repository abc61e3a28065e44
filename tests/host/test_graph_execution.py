"""Whole graphs through ComfyUI's own validate_prompt + PromptExecutor, in-process, with random-weight
full-size SD1.5 and FlashFace models (built once, see model_factory), at 64 px and 2 steps.

The shipped workflows run as `python -m flashface_runner` converts them; variants swap in core
samplers; the face swap leaves pixels outside its mask alone; a cancel stops sampling and leaves
the checkpoint's own model unpatched. The static schemas the CI workflow tests use are checked
against the real ones here.
"""

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flashface_runner import comfyui, ui_format

import model_factory
import other_packs

REPO = Path(__file__).resolve().parents[2]
WORKFLOW_DIR = REPO / "workflows"
WORKFLOWS = sorted(path.stem for path in WORKFLOW_DIR.glob("*.json"))
SIZE, STEPS = 64, 2
FRAMES, CONTEXT, OVERLAP = 6, 4, 2  # animation workflows: two overlapping context windows


def _load_ci_test_module():
    spec = importlib.util.spec_from_file_location("ci_test_workflows", REPO / "tests" / "test_workflows.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def runner(host, keys_tsv, tmp_path_factory):
    """A Runner over ComfyUI's executor with the random models, fp16 weights (computed in fp32 on
    CPU by ComfyUI's manual cast: half the memory, ~8 GB instead of ~15 GB), outputs in a temp folder."""
    import comfy.cli_args
    import comfy.model_management
    import folder_paths

    models = model_factory.cached_models_dir(keys_tsv)
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
    widths = [node["inputs"]["width"] for node in prompt.values() if node["class_type"] == "ImageScale"]
    shrink = SIZE / widths[0] if widths else 1.0
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "FaceMask" and inputs.get("mode", "box") != "box":  # pixel sizes shrink with the image
            inputs.update(grow=round(inputs["grow"] * shrink), feather=round(inputs["feather"] * shrink))
        if node["class_type"] in ("EmptyLatentImage", "FaceMask", "ImageScale"):
            inputs.update(width=SIZE, height=SIZE)
        if "steps" in inputs:
            inputs["steps"] = STEPS
        if node["class_type"] == "CheckpointLoaderSimple":  # the random SD1.5 stands in for the user's checkpoint too
            inputs["ckpt_name"] = model_factory.SD15_NAME
        if node["class_type"] == "ADE_LoadAnimateDiffModel":
            inputs["model_name"] = other_packs.MOTION_MODEL
        if node["class_type"] == "EmptyLatentImage" and inputs["batch_size"] > 1:
            inputs["batch_size"] = FRAMES
        if node["class_type"] == "ADE_StandardUniformContextOptions":
            inputs.update(context_length=CONTEXT, context_overlap=OVERLAP)
    assert comfyui.missing_models(prompt) == []
    return prompt


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
    assert result.images and all(Image.open(path).size == (SIZE, SIZE) for path in result.images)
    return result


def test_static_schemas_match_comfyui(host):
    """The CI test's ast reading of our schemas and its core-node table agree with ComfyUI."""
    ci = _load_ci_test_module()
    comfyui.load_nodes()
    import nodes

    def comparable(spec):
        socket, options = spec[0], dict(spec[1]) if len(spec) > 1 else {}
        options.pop("tooltip", None)
        return ("COMBO" if isinstance(socket, list) else str(socket)), options

    ours = [(kind, schema["input_types"]) for kind, schema in ci.OUR_SCHEMAS.items()]
    for kind, expected in ours + list(ci.CORE_INPUT_TYPES.items()):
        real = nodes.NODE_CLASS_MAPPINGS[kind].INPUT_TYPES()
        for section in ("required", "optional"):
            assert list(expected.get(section, {})) == list(real.get(section, {})), (kind, section)
            for name, spec in expected.get(section, {}).items():
                socket, options = comparable(real[section][name])
                assert comparable(spec)[0] == socket, (kind, name)
                known = {k: v for k, v in comparable(spec)[1].items() if v is not ci.UNKNOWN}
                assert known.items() <= options.items(), (kind, name, known, options)
        assert ui_format.widget_names(expected) == ui_format.widget_names(real), kind
        outputs = ci.output_types_of(kind)
        assert [str(t) for t in nodes.NODE_CLASS_MAPPINGS[kind].RETURN_TYPES] == outputs, kind


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


# Face swaps last: test_face_swap_keeps_pixels_outside_the_mask then reads their results from the cache.
FACE_SWAPS = {"FlashFace face swap": "FaceMask", "FlashFace face swap two people": "MaskComposite"}  # -> the inpaint mask


@pytest.mark.parametrize("name", sorted(WORKFLOWS, key=lambda n: n in FACE_SWAPS))
def test_shipped_workflow_runs(runner, request, name):
    if _load_ci_test_module().packs_needed(json.loads((WORKFLOW_DIR / f"{name}.json").read_text())):
        request.getfixturevalue("other_packs")  # skips with the reason when they are not there
        other_packs.ensure_motion_model()
    assert_ran(runner, workflow_prompt(name))


def test_static_pack_schemas_match_the_packs(other_packs):
    """The CI test's table of other packs' nodes agrees with the packs at their pinned commits."""
    import nodes

    ci = _load_ci_test_module()
    for kind, (expected, outputs) in ci.PACK_SCHEMAS.items():
        real = nodes.NODE_CLASS_MAPPINGS[kind].INPUT_TYPES()
        for section in ("required", "optional"):
            assert list(expected.get(section, {})) == list(real.get(section, {})), (kind, section)
            for name, spec in expected.get(section, {}).items():
                socket, options = real[section][name][0], (real[section][name] + ({},))[1]
                assert spec[0] == ("COMBO" if isinstance(socket, list) else socket), (kind, name)
                assert (spec + ({},))[1].items() <= options.items(), (kind, name)
        assert ui_format.widget_names(expected) == ui_format.widget_names(real), kind
        assert list(nodes.NODE_CLASS_MAPPINGS[kind].RETURN_TYPES) == outputs, kind


@pytest.mark.parametrize("name", sorted(FACE_SWAPS))
def test_face_swap_keeps_pixels_outside_the_mask(runner, name):
    prompt = workflow_prompt(name)
    result = assert_ran(runner, prompt)  # cached right after the parametrized run
    target = runner.node_output(node_id(prompt, "ImageScale"))[0]
    mask = runner.node_output(node_id(prompt, FACE_SWAPS[name]))[0]
    pasted = runner.node_output(node_id(prompt, "ImageCompositeMasked"))[0]
    outside = mask == 0
    assert 0 < int(outside.sum()) < mask.numel()
    assert float((pasted - target).abs()[outside].max()) <= 1 / 255
    for face in (i for i, node in prompt.items() if node["class_type"] == "FaceMask"):  # every face was repainted
        inside = runner.node_output(face)[0] == 1
        assert float((pasted - target).abs()[inside].max()) > 1 / 255, face
    saved = torch.from_numpy(np.asarray(Image.open(result.images[0]), dtype=np.float32) / 255)
    target_8bit = (target.clamp(0, 1) * 255).round() / 255
    assert float((saved - target_8bit).abs()[outside].max()) <= 1 / 255


def test_face_swap_two_finds_one_face_per_mask(runner):
    prompt = workflow_prompt("FlashFace face swap two people")
    assert_ran(runner, prompt)
    left, right = (runner.node_output(i)[0] for i, node in prompt.items() if node["class_type"] == "FaceMask")
    columns = torch.arange(left.shape[-1], dtype=torch.float32)
    centre = [float((mask.sum(0) * columns).sum() / mask.sum()) for mask in (left, right)]
    assert centre[0] < left.shape[-1] / 2 < centre[1]


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

    path = model_factory.cached_models_dir(keys_tsv) / "checkpoints" / model_factory.SD15_NAME
    with safe_open(str(path), framework="pt") as file:
        yield file.get_tensor
