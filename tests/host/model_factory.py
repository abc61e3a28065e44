"""Random-weight, full-size test models: an SD1.5 checkpoint and an official-layout flashface.ckpt.

They are built once and cached on disk (about 5.5 GB together) under a folder keyed by
MODELS_VERSION, in $FLASHFACE_TEST_CACHE or the system temp folder. The files carry the names the
shipped workflows expect, so the workflows run unchanged against `--models-dir <that folder>`.
Needs ComfyUI imported (the SD1.5 parts are ComfyUI's own classes, so its loader detects SD15).
"""

import logging
import os
import tempfile
from pathlib import Path

import torch
import torch.nn as nn

log = logging.getLogger(__name__)

MODELS_VERSION = "1"  # bump when the files' contents or layout change
SD15_NAME = "v1-5-pruned-emaonly.safetensors"
FLASHFACE_NAME = "flashface.ckpt"
WEIGHT_STD = 0.02  # small random weights keep activations of the deep nets finite
SD15_VAE_CONFIG = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                   "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}


def cached_models_dir(keys_tsv) -> Path:
    """A ComfyUI-style models folder (checkpoints/, flashface/) holding both random models."""
    root = Path(os.environ.get("FLASHFACE_TEST_CACHE", tempfile.gettempdir()))
    models = root / f"flashface_random_test_models_v{MODELS_VERSION}"
    sd15 = models / "checkpoints" / SD15_NAME
    flashface = models / "flashface" / FLASHFACE_NAME
    if not sd15.is_file():
        _write_atomically(sd15, lambda path: _save_sd15(path))
    if not flashface.is_file():
        _write_atomically(flashface, lambda path: _save_flashface(path, keys_tsv))
    return models


def _write_atomically(path, write):
    """Write to a temporary name first, so an interrupted build never leaves a truncated model."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    log.info("building random test model %s (once; cached)", path)
    write(partial)
    partial.replace(path)


def _init_random_(module, generator):
    """comfy.ops leaves weights uninitialised: N(0, std) weights, norms at weight 1 / bias 0, biases 0."""
    with torch.no_grad():
        for layer in module.modules():
            is_norm = isinstance(layer, (nn.GroupNorm, nn.LayerNorm))
            for name, param in layer.named_parameters(recurse=False):
                if is_norm and name == "weight":
                    param.fill_(1.0)
                elif name == "bias" or is_norm:
                    param.zero_()
                else:
                    param.copy_(torch.randn(param.shape, generator=generator) * WEIGHT_STD)


def _save_sd15(path):
    import comfy.sd1_clip
    import comfy.supported_models
    from comfy.ldm.models.autoencoder import AutoencoderKL
    from safetensors.torch import save_file

    from layouts import SD15_LAYOUT, comfy_unet_config

    generator = torch.Generator().manual_seed(0)
    unet_config = {**comfy_unet_config(SD15_LAYOUT, in_channels=4), "image_size": 32, "use_checkpoint": False,
                   "use_temporal_attention": False}
    model_config = comfy.supported_models.SD15(unet_config)
    model_config.set_inference_dtype(torch.float16, None)
    state_dict = {}

    unet = model_config.get_model({}).diffusion_model
    _init_random_(unet, generator)
    state_dict |= model_config.process_unet_state_dict_for_saving(_half(unet.state_dict()))
    del unet

    clip = comfy.sd1_clip.SD1ClipModel(device="cpu", dtype=torch.float16)
    _init_random_(clip, generator)
    state_dict |= model_config.process_clip_state_dict_for_saving(_half(clip.state_dict()))
    del clip

    vae = AutoencoderKL(ddconfig=SD15_VAE_CONFIG, embed_dim=4)
    _init_random_(vae, generator)
    state_dict |= model_config.process_vae_state_dict_for_saving(_half(vae.state_dict()))
    save_file(state_dict, str(path))


def _half(state_dict):
    return {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in state_dict.items()}


def _save_flashface(path, keys_tsv):
    """Every official key except the 'ori_*' aliases, at its full-size shape, fp16."""
    generator = torch.Generator().manual_seed(1)
    state_dict = {}
    for line in Path(keys_tsv).read_text().splitlines()[1:]:
        official, group, _, shape = line.split("\t")
        if group == "alias":
            continue
        shape = tuple(int(n) for n in shape.split("x"))
        if len(shape) > 1:
            tensor = torch.randn(shape, generator=generator) * WEIGHT_STD
        elif official.endswith(".weight"):  # the only 1-D weights are norms'
            tensor = torch.ones(shape)
        else:
            tensor = torch.zeros(shape)
        state_dict[official] = tensor.to(torch.float16)
    torch.save(state_dict, path)
