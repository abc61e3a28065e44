"""Third-party node packs next to FlashFace, from their public sources at pinned commits: loading them
in-process from $FLASHFACE_OTHER_PACKS, random weights in the layouts their loaders expect (written once
under $FLASHFACE_TEST_CACHE), and calling their nodes as ComfyUI's executor does."""

import asyncio
import math
import os
import sys
import tempfile
import types
from pathlib import Path

import torch

from . import model_files
from .random_models import WEIGHT_STD, init_random_

ENV = "FLASHFACE_OTHER_PACKS"
PACKS = {  # folder under $FLASHFACE_OTHER_PACKS -> (repository, commit tested)
    "ComfyUI-Advanced-ControlNet": ("Kosinkadink/ComfyUI-Advanced-ControlNet", "2bde95a"),
    "ComfyUI_IPAdapter_plus": ("cubiq/ComfyUI_IPAdapter_plus", "9d076a3"),
    "ComfyUI-AnimateDiff-Evolved": ("Kosinkadink/ComfyUI-AnimateDiff-Evolved", "d8d163c"),
    "ComfyUI-Impact-Pack": ("ltdrdata/ComfyUI-Impact-Pack", "727295b"),
    "ComfyUI-Impact-Pack/impact_subpack": ("ltdrdata/ComfyUI-Impact-Subpack", "bd4dedc"),
    "ComfyUI-Inpaint-CropAndStitch": ("lquesada/ComfyUI-Inpaint-CropAndStitch", "3a57816"),
}
MODELS_VERSION = "1"  # bump when a file's contents or layout change
CONTROLNET = "flashface_test_controlnet.safetensors"
IPADAPTER = "ip-adapter_sd15_flashface_test.safetensors"
CLIP_VISION = "clip_vision_vit_l_random.safetensors"
MOTION_MODEL = "mm_sd_v15_v2.safetensors"


def missing_reason(folder):
    """Why the packs cannot be loaded from `folder` (None: they can)."""
    pinned = ", ".join(f"{repo}@{commit} in {name}/" for name, (repo, commit) in PACKS.items())
    if not folder:
        return f"{ENV} is not set: point it at a folder holding {pinned} (CONTRIBUTING.md, Tests)"
    missing = [name for name in PACKS if not (Path(folder) / name).is_dir()]
    if missing:
        return f"{ENV}={folder} lacks {', '.join(missing)}; it must hold {pinned}"
    return None


def load_packs(folder):
    """Load ComfyUI's extra nodes and each pack the way ComfyUI loads custom_nodes/ (once per process)."""
    import folder_paths
    import nodes

    if "SamplerCustomAdvanced" not in nodes.NODE_CLASS_MAPPINGS:
        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    _stand_in_server()
    _stand_in_detectors()  # after ComfyUI's own nodes: they load (or not) as without the packs
    folder_paths.add_model_folder_path("custom_nodes", str(folder))
    failed = []
    for name in PACKS:
        if "/" in name:  # loaded by its parent pack
            continue
        if str(Path(folder, name)) in nodes.LOADED_MODULE_DIRS.values():
            continue
        if not asyncio.run(nodes.load_custom_node(str(Path(folder, name)), set(nodes.NODE_CLASS_MAPPINGS),
                                                  module_parent="custom_nodes")):
            failed.append(name)
    if failed:
        raise RuntimeError(f"could not import {', '.join(failed)} (see the log above)")


def _stand_in_server():
    """Impact Pack registers web routes and sends UI messages at import; no web server runs here."""
    import server
    from aiohttp import web

    if getattr(server.PromptServer, "instance", None) is None:
        server.PromptServer.instance = types.SimpleNamespace(
            routes=web.RouteTableDef(), client_id=None, last_node_id=None, last_prompt_id=None,
            sockets_metadata={}, send_sync=lambda *args, **kwargs: None,
            add_on_prompt_handler=lambda handler: None, queue_updated=lambda: None)


STANDS_IN = {  # what Impact Pack imports for detectors and upscalers no test runs (SEGS come from MaskToSEGS)
    "ultralytics": ("YOLO",),  # Impact-Subpack's detectors
    "segment_anything": ("SamPredictor", "sam_model_registry"),  # imports need the real torchvision
    "spandrel": ("ModelLoader", "ImageModelDescriptor"),  # ComfyUI's upscale models; the same
}


def _stand_in_detectors():
    """Stand-ins for the modules of STANDS_IN that cannot import here."""
    for module, names in STANDS_IN.items():
        if module in sys.modules:
            continue
        try:
            __import__(module)
        except ImportError:
            sys.modules[module] = types.SimpleNamespace(__name__=module, **{name: _not_here(module) for name in names})


def _not_here(module):
    def call(*args, **kwargs):
        raise RuntimeError(f"{module} is a test stand-in here (other_packs.STANDS_IN)")

    return call


def run_node(kind, **inputs):
    """Call a registered node's function as the executor does, with the schema's default for every
    required input not given (a combo: its first option)."""
    import nodes

    cls = nodes.NODE_CLASS_MAPPINGS[kind]
    for name, spec in cls.INPUT_TYPES()["required"].items():
        if name in inputs:
            continue
        options = spec[1] if len(spec) > 1 else {}
        if isinstance(spec[0], list):
            inputs[name] = options.get("default", spec[0][0])
        elif "default" in options:
            inputs[name] = options["default"]
    with torch.no_grad():  # the executor runs nodes under inference mode; no_grad leaves tests free to edit results
        result = getattr(cls(), cls.FUNCTION)(**inputs)
    if isinstance(result, dict):  # {"ui": ..., "result": ...}
        result = result["result"]
    return result


# --- random weights in the layouts of the packs' loaders -------------------------------------------


def models_dir():
    root = Path(os.environ.get("FLASHFACE_TEST_CACHE", tempfile.gettempdir()))
    return root / f"other_packs_random_models_v{MODELS_VERSION}"


def register_model_folders(folder):
    import folder_paths

    for kind in ("controlnet", "ipadapter", "clip_vision", "animatediff_models"):
        folder_paths.add_model_folder_path(kind, str(folder / kind), is_default=True)


def ensure_small_models(unet_config):
    """A ControlNet for the golden test U-Net's layout, an ip-adapter_sd15 layout sized for it, and a
    full-size ViT-L CLIP vision model (what IPAdapter_plus detects)."""
    folder = models_dir()
    for kind, name, write in (("controlnet", CONTROLNET, lambda p: _save_controlnet(p, unet_config)),
                              ("ipadapter", IPADAPTER, lambda p: _save_ipadapter(p, unet_config)),
                              ("clip_vision", CLIP_VISION, _save_clip_vision)):
        if not (folder / kind / name).is_file():
            model_files.write_atomically(folder / kind / name, write)
    register_model_folders(folder)
    return folder


def ensure_motion_model():
    """mm_sd_v15_v2's layout (AnimateDiff v2 for SD1.5: 588 tensors, 32 positions), fp16."""
    folder = models_dir()
    if not (folder / "animatediff_models" / MOTION_MODEL).is_file():
        model_files.write_atomically(folder / "animatediff_models" / MOTION_MODEL, _save_motion_model)
    register_model_folders(folder)
    return folder / "animatediff_models" / MOTION_MODEL


def _save(path, state_dict):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))


def _save_controlnet(path, unet_config):
    import comfy.cldm.cldm

    # ComfyUI's loader detects the layout from the keys and gives attention 64-channel heads: attention
    # only where the width is a multiple of 64 (the outputs, one per U-Net block, keep the U-Net's widths).
    widths = [unet_config["model_channels"] * mult for mult in unet_config["channel_mult"]]
    blocks = unet_config["num_res_blocks"]
    depth = [d if widths[i // blocks[0]] % 64 == 0 else 0 for i, d in enumerate(unet_config["transformer_depth"])]
    config = {k: v for k, v in unet_config.items() if k not in ("out_channels", "in_channels", "num_heads")}
    control = comfy.cldm.cldm.ControlNet(image_size=32, in_channels=4, hint_channels=3, dtype=torch.float32,
                                         **{**config, "transformer_depth": depth, "num_head_channels": 64})
    init_random_(control, torch.Generator().manual_seed(11))
    with torch.no_grad():  # zero convs scaled down: a visible, finite effect on the U-Net
        for name, param in control.named_parameters():
            if name.startswith(("zero_convs.", "middle_block_out.")):
                param.mul_(0.5)
    _save(path, {f"control_model.{k}": v for k, v in control.state_dict().items()})


def ip_block_widths(unet_config):
    """Widths of the attention blocks in IPAdapter_plus's SD1.5 order: input 1,2,4,5,7,8; output 3..11; middle."""
    base, mult = unet_config["model_channels"], unet_config["channel_mult"]
    inputs = [base * mult[level] for level in (0, 0, 1, 1, 2, 2)]
    outputs = [base * mult[level] for level in (2, 2, 2, 1, 1, 1, 0, 0, 0)]
    return inputs + outputs + [base * mult[-1]]


def _save_ipadapter(path, unet_config, tokens=4, clip_embeddings=768):
    generator = torch.Generator().manual_seed(12)
    context = unet_config["context_dim"]

    def linear(out_features, in_features):
        return torch.randn(out_features, in_features, generator=generator) / math.sqrt(in_features)

    state_dict = {"image_proj.proj.weight": linear(tokens * context, clip_embeddings),
                  "image_proj.proj.bias": torch.zeros(tokens * context),
                  "image_proj.norm.weight": torch.ones(context), "image_proj.norm.bias": torch.zeros(context)}
    for number, width in enumerate(ip_block_widths(unet_config)):
        for kind in ("k", "v"):
            state_dict[f"ip_adapter.{number * 2 + 1}.to_{kind}_ip.weight"] = linear(width, context)
    _save(path, {k: v.to(torch.float16) for k, v in state_dict.items()})


def _save_clip_vision(path):
    import comfy.clip_vision

    config = Path(comfy.clip_vision.__file__).parent / "clip_vision_config_vitl.json"
    clip = comfy.clip_vision.ClipVisionModel(str(config))
    init_random_(clip.model, torch.Generator().manual_seed(13))
    _save(path, model_files.half_precision(clip.model.state_dict()))


def _save_motion_model(path, positions=32):
    """AnimateDiff v2 temporal transformers: 2 per down block, 3 per up block, 1 in the middle."""
    generator = torch.Generator().manual_seed(14)
    widths = [("down_blocks", 4, 2, (320, 640, 1280, 1280)), ("up_blocks", 4, 3, (1280, 1280, 640, 320))]
    modules = [(f"{blocks}.{b}.motion_modules.{m}", width[b]) for blocks, count, per, width in widths
               for b in range(count) for m in range(per)] + [("mid_block.motion_modules.0", 1280)]
    state_dict = {}
    for prefix, width in modules:
        p = f"{prefix}.temporal_transformer."
        tensors = {"norm.weight": torch.ones(width), "norm.bias": torch.zeros(width),
                   "proj_in.weight": (width, width), "proj_in.bias": torch.zeros(width),
                   "proj_out.weight": (width, width), "proj_out.bias": torch.zeros(width)}
        block = "transformer_blocks.0."
        for a in range(2):
            attention = f"{block}attention_blocks.{a}."
            tensors |= {f"{attention}to_{kind}.weight": (width, width) for kind in ("q", "k", "v")}
            tensors |= {f"{attention}to_out.0.weight": (width, width), f"{attention}to_out.0.bias": torch.zeros(width),
                        f"{attention}pos_encoder.pe": _sinusoidal(positions, width),
                        f"{block}norms.{a}.weight": torch.ones(width), f"{block}norms.{a}.bias": torch.zeros(width)}
        tensors |= {f"{block}ff.net.0.proj.weight": (width * 8, width), f"{block}ff.net.0.proj.bias": torch.zeros(width * 8),
                    f"{block}ff.net.2.weight": (width, width * 4), f"{block}ff.net.2.bias": torch.zeros(width),
                    f"{block}ff_norm.weight": torch.ones(width), f"{block}ff_norm.bias": torch.zeros(width)}
        for key, value in tensors.items():
            if isinstance(value, tuple):
                value = torch.randn(value, generator=generator) * WEIGHT_STD
            state_dict[p + key] = value.to(torch.float16)
    _save(path, state_dict)


def _sinusoidal(positions, width):
    position = torch.arange(positions).unsqueeze(1)
    frequency = torch.exp(torch.arange(0, width, 2) * (-math.log(10000.0) / width))
    pe = torch.zeros(1, positions, width)
    pe[0, :, 0::2] = torch.sin(position * frequency)
    pe[0, :, 1::2] = torch.cos(position * frequency)
    return pe


# Other packs' node types a shipped workflow may use; its Read me names the pack as required.
PACK_NODE_TYPES = {"AnimateDiff-Evolved": {"ADE_LoadAnimateDiffModel", "ADE_ApplyAnimateDiffModelSimple",
                                           "ADE_StandardUniformContextOptions", "ADE_UseEvolvedSampling"}}


def packs_needed(workflow):
    """The packs (PACK_NODE_TYPES) whose nodes `workflow` (UI format) uses."""
    kinds = {node["type"] for node in workflow["nodes"]}
    return sorted(pack for pack, pack_kinds in PACK_NODE_TYPES.items() if kinds & pack_kinds)
