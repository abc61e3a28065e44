"""Random-weight, full-size test models: an SD1.5 checkpoint and an official-layout flashface.ckpt.

They are built once and cached on disk (about 5.5 GB together) under a folder keyed by
MODELS_VERSION, in $FLASHFACE_TEST_CACHE or the system temp folder. The files carry the names the
shipped workflows expect, so the workflows run unchanged against `--models-dir <that folder>`.
Needs ComfyUI imported (the SD1.5 parts are ComfyUI's own classes, so its loader detects SD15);
the weights come from support.random_models.
"""

import logging
import os
import tempfile
from pathlib import Path

import torch

from .layouts import SD15_LAYOUT, comfy_unet_config
from .random_models import init_random_, random_official_state_dict, random_sd15_model

log = logging.getLogger(__name__)

MODELS_VERSION = "1"  # bump when the files' contents or layout change
SD15_NAME = "v1-5-pruned-emaonly.safetensors"
FLASHFACE_NAME = "flashface.ckpt"
SD15_VAE_CONFIG = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                   "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}


def cached_models_dir(keys_tsv) -> Path:
    """A ComfyUI-style models folder (checkpoints/, flashface/) holding both random models."""
    root = Path(os.environ.get("FLASHFACE_TEST_CACHE", tempfile.gettempdir()))
    models = root / f"flashface_random_test_models_v{MODELS_VERSION}"
    sd15 = models / "checkpoints" / SD15_NAME
    flashface = models / "flashface" / FLASHFACE_NAME
    if not sd15.is_file():
        write_atomically(sd15, lambda path: _save_sd15(path))
    if not flashface.is_file():
        write_atomically(flashface, lambda path: _save_flashface(path, keys_tsv))
    return models


def write_atomically(path, write):
    """Write to a temporary name first, so an interrupted build never leaves a truncated model."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    log.info("building random test model %s (once; cached)", path)
    write(partial)
    partial.replace(path)


def _save_sd15(path):
    import comfy.sd1_clip
    from comfy.ldm.models.autoencoder import AutoencoderKL
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(0)
    model = random_sd15_model(comfy_unet_config(SD15_LAYOUT, in_channels=4), generator, dtype=torch.float16)
    model_config = model.model_config
    state_dict = model_config.process_unet_state_dict_for_saving(half_precision(model.diffusion_model.state_dict()))
    del model

    clip = comfy.sd1_clip.SD1ClipModel(device="cpu", dtype=torch.float16)
    init_random_(clip, generator)
    state_dict |= model_config.process_clip_state_dict_for_saving(half_precision(clip.state_dict()))
    del clip

    vae = AutoencoderKL(ddconfig=SD15_VAE_CONFIG, embed_dim=4)
    init_random_(vae, generator)
    state_dict |= model_config.process_vae_state_dict_for_saving(half_precision(vae.state_dict()))
    save_file(state_dict, str(path))


def half_precision(state_dict):
    return {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in state_dict.items()}


def _save_flashface(path, keys_tsv):
    """Every official key except the 'ori_*' aliases, at its full-size shape, fp16."""
    torch.save(random_official_state_dict(keys_tsv, torch.float16), path)
