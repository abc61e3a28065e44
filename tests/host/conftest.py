"""Host tests run the pack inside a real ComfyUI checkout (COMFYUI_PATH); they skip without one.

They need ComfyUI's own requirements in this environment (pip install -r ComfyUI/requirements.txt,
holding torch as the README's Install does); torchvision may be absent (a stub stands in)."""

import importlib.util
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
PACK_NAME = "comfyui_flashface"
COMFYUI_PATH = os.environ.get("COMFYUI_PATH")


def _bootstrap_comfyui(path):
    """Import ComfyUI the way main.py does (CPU, no argv parsing of pytest's arguments)."""
    sys.path.insert(0, path)
    if importlib.util.find_spec("torchvision") is None:
        sys.path.append(str(Path(__file__).parent / "stubs"))
    argv = sys.argv
    sys.argv = [os.path.join(path, "main.py"), "--cpu", "--disable-all-custom-nodes"]
    try:
        import comfy.options

        comfy.options.enable_args_parsing()
        import utils.extra_config  # noqa: F401  (binds `utils` to ComfyUI's package, as main.py does)
        import comfy.cli_args  # noqa: F401
        import folder_paths  # noqa: F401
    finally:
        sys.argv = argv


def _load_pack():
    spec = importlib.util.spec_from_file_location(PACK_NAME, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def host():
    if not COMFYUI_PATH:
        pytest.skip("COMFYUI_PATH is not set: host tests need a ComfyUI checkout with ComfyUI's requirements "
                    "installed here; run COMFYUI_PATH=/path/to/ComfyUI python -m pytest tests/host (README, 'Tests')")
    if not (Path(COMFYUI_PATH) / "comfy").is_dir():
        pytest.skip(f"COMFYUI_PATH={COMFYUI_PATH} is not a ComfyUI checkout (no comfy/ folder)")
    torch.set_num_threads(1)
    _bootstrap_comfyui(COMFYUI_PATH)
    _load_pack()
    nodes = importlib.import_module(f"{PACK_NAME}.nodes")
    return SimpleNamespace(
        pack=sys.modules[PACK_NAME],
        nodes=nodes,
        flashface_model=importlib.import_module(f"{PACK_NAME}.nodes.flashface_model"),
        call=importlib.import_module(f"{PACK_NAME}.nodes.reference_call"),
        errors=importlib.import_module(f"{PACK_NAME}.nodes.errors"),
        guidance=importlib.import_module(f"{PACK_NAME}.nodes.guidance"),
        sampling=importlib.import_module(f"{PACK_NAME}.nodes.sampling"),
        loader=importlib.import_module(f"{PACK_NAME}.nodes.loader"),
        references=importlib.import_module(f"{PACK_NAME}.nodes.references"),
        checkpoint=importlib.import_module(f"{PACK_NAME}.flashface_core.checkpoint"),
    )


@pytest.fixture(scope="session")
def other_packs(host):
    """The third-party packs of other_packs.PACKS loaded next to this pack, from $FLASHFACE_OTHER_PACKS
    (their public sources at the pinned commits); skips with the reason without them."""
    import other_packs

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
    return _make_sd15_patcher


def _make_sd15_patcher(unet_config):
    """A ComfyUI SD1.5 MODEL with the given U-Net layout and random (finite) weights, on the CPU."""
    import comfy.model_patcher
    import comfy.supported_models

    config = {"image_size": 32, "use_checkpoint": False, "use_temporal_attention": False, **unet_config}
    config.pop("in_channels", None)
    model_config = comfy.supported_models.SD15({**config, "in_channels": 4})
    model_config.unet_config.update(num_heads=config["num_heads"], num_head_channels=config["num_head_channels"])
    model_config.set_inference_dtype(torch.float32, None)
    base = model_config.get_model({})
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in base.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    device = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(base, load_device=device, offload_device=device)


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
    return host.loader.FlashFaceModel("golden", weights)


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
