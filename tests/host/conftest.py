"""Host tests run the pack inside a real ComfyUI checkout (COMFYUI_PATH); they skip without one.

They need ComfyUI's own requirements in this environment (pip install -r ComfyUI/requirements.txt,
holding torch as the README's Install does); torchvision may be absent (a stub stands in)."""

import json
import os
from pathlib import Path

import pytest
import torch

from support.comfyui_host import import_pack, start_comfyui
from support.pipeline import golden_parts
from support.random_models import random_sd15_patcher

COMFYUI_PATH = os.environ.get("COMFYUI_PATH")


@pytest.fixture(scope="session")
def host():
    """The pack's modules, imported in ComfyUI (support.comfyui_host.import_pack)."""
    if not COMFYUI_PATH:
        pytest.skip("COMFYUI_PATH is not set: host tests need a ComfyUI checkout with ComfyUI's requirements "
                    "installed here; run COMFYUI_PATH=/path/to/ComfyUI python -m pytest tests/host "
                    "(CONTRIBUTING.md, 'Tests')")
    if not (Path(COMFYUI_PATH) / "comfy").is_dir():
        pytest.skip(f"COMFYUI_PATH={COMFYUI_PATH} is not a ComfyUI checkout (no comfy/ folder)")
    torch.set_num_threads(1)
    start_comfyui(COMFYUI_PATH)
    return import_pack()


@pytest.fixture(scope="session")
def other_packs(host):
    """The third-party packs of other_packs.PACKS loaded next to this pack, from $FLASHFACE_OTHER_PACKS
    (their public sources at the pinned commits); skips with the reason without them."""
    from support import other_packs

    folder = os.environ.get(other_packs.ENV)
    reason = other_packs.missing_reason(folder)
    if reason:
        pytest.skip(reason)
    other_packs.load_packs(Path(folder))
    return other_packs


@pytest.fixture(scope="session")
def golden_config(golden_dir):
    return json.loads((golden_dir / "config.json").read_text())


@pytest.fixture(scope="session")
def make_sd15_patcher(host):
    """unet_config -> a ComfyUI SD1.5 MODEL with that U-Net layout and random weights, on the CPU."""
    return random_sd15_patcher


@pytest.fixture()
def base(make_sd15_patcher, golden_config):
    """A random SD1.5 MODEL with the golden FlashFace's U-Net layout: the checkpoint FlashFace is applied to."""
    return make_sd15_patcher(golden_config["comfy_unet_config_main"])


@pytest.fixture(scope="session")
def golden(golden_dir):
    """(manifest, tensors) of the official golden cases and runs."""
    from safetensors.torch import load_file

    return json.loads((golden_dir / "manifest.json").read_text()), load_file(golden_dir / "cases.safetensors")


@pytest.fixture(scope="session")
def flashface(host, golden_dir, golden_config):
    """The golden random-weight FlashFace, as LoadFlashFace returns it (fp32)."""
    weights = host.checkpoint.load_flashface(golden_dir / "weights.safetensors", dtype=torch.float32,
                                             num_heads=golden_config["official_kwargs"]["num_heads"])
    return host.flashface_model.FlashFaceModel("golden", weights)


@pytest.fixture()
def parts(host, base, golden):
    """Two people's references, the prompts of golden run 1 and a face box (support.pipeline.golden_parts)."""
    return golden_parts(host, base, golden)


@pytest.fixture(scope="session")
def loaded_call_options(host):
    return _loaded_call_options


def _loaded_call_options(model, **extra):
    """Load `model` (and its reference modules) as sampling does and return the transformer_options a
    sampler's U-Net call carries (wrappers included), updated with `extra`."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.sampler_helpers

    comfy.model_management.load_models_gpu([model] + model.get_nested_additional_models())
    options = comfy.model_patcher.create_model_options_clone(model.model_options)
    options.setdefault("transformer_options", {})
    comfy.sampler_helpers.prepare_model_patcher(model, {}, options)
    return {**options["transformer_options"], **extra}
