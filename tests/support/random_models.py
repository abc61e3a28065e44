"""Models with random weights for the tests and benchmarks: one initialisation rule, ComfyUI's own
SD1.5 model at any U-Net config, and an official-layout FlashFace state dict (every key of the official
key list at its full-size shape). SD1.5 needs ComfyUI imported (support.comfyui_host)."""

from pathlib import Path

import torch
import torch.nn as nn

WEIGHT_STD = 0.02  # small random weights keep activations of the deep nets finite


def init_random_(module, generator, std=WEIGHT_STD):
    """comfy.ops leaves weights uninitialised: N(0, std) weights (std None: 1/sqrt(fan-in), which keeps
    activations O(1) at any depth, so kernels stay on their normal paths), norms at weight 1 / bias 0,
    biases 0."""
    with torch.no_grad():
        for layer in module.modules():
            is_norm = isinstance(layer, (nn.GroupNorm, nn.LayerNorm))
            for name, param in layer.named_parameters(recurse=False):
                if is_norm and name == "weight":
                    param.fill_(1.0)
                elif name == "bias" or is_norm:
                    param.zero_()
                else:
                    scale = std if std is not None else param[0].numel() ** -0.5
                    param.copy_(torch.randn(param.shape, generator=generator) * scale)


def random_sd15_model(unet_config, generator, std=WEIGHT_STD, dtype=torch.float32):
    """ComfyUI's SD1.5 model (its BaseModel, `model_config` attached) with this U-Net config (UNetModel
    keyword arguments; 4 input channels) and random weights."""
    import comfy.supported_models

    config = {"image_size": 32, "use_checkpoint": False, "use_temporal_attention": False, **unet_config,
              "in_channels": 4}
    model_config = comfy.supported_models.SD15(config)
    # SD15 puts its own head count over the config's; keep the config's (small test layouts use others)
    model_config.unet_config.update(num_heads=config["num_heads"], num_head_channels=config["num_head_channels"])
    model_config.set_inference_dtype(dtype, None)
    model = model_config.get_model({})
    init_random_(model.diffusion_model, generator, std)
    return model


def random_sd15_patcher(unet_config, std=WEIGHT_STD, seed=0):
    """A ComfyUI SD1.5 MODEL on the CPU with random fp32 weights (see random_sd15_model)."""
    import comfy.model_patcher

    model = random_sd15_model(unet_config, torch.Generator().manual_seed(seed), std)
    device = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)


def random_official_state_dict(keys_tsv, dtype=torch.float16, seed=1, aliases=False):
    """Every official FlashFace key at its full-size shape: N(0, WEIGHT_STD) weights, norms 1, biases 0.
    aliases: also the 'ori_*' keys, sharing their tensors as in the released file."""
    generator = torch.Generator().manual_seed(seed)
    rows = [line.split("\t") for line in Path(keys_tsv).read_text().splitlines()[1:]]
    state_dict = {}
    for official, group, _, shape in rows:
        if group == "alias":
            continue
        shape = tuple(int(n) for n in shape.split("x"))
        if len(shape) > 1:
            tensor = torch.randn(shape, generator=generator) * WEIGHT_STD
        elif official.endswith(".weight"):  # the only 1-D weights are norms'
            tensor = torch.ones(shape)
        else:
            tensor = torch.zeros(shape)
        state_dict[official] = tensor.to(dtype)
    if aliases:
        for official, group, _, _ in rows:
            if group == "alias":
                state_dict[official] = state_dict[official.removeprefix("ori_")]
    return state_dict
