"""U-Net layouts for the tests and benchmarks: SD1.5's, and the keyword arguments of ComfyUI's
UNetModel for a layout (the nodes take the host model's own config instead)."""

from flashface_core.unet_layout import LATENT_CHANNELS, UNetLayout

SD15_LAYOUT = UNetLayout(320, (1, 2, 4, 4), 2, (0, 1, 2), 768, 8)


def comfy_unet_config(layout, in_channels: int) -> dict:
    """Keyword arguments for ComfyUI's UNetModel with this layout."""
    levels = len(layout.channel_mult)
    depth = [int(level in layout.attention_levels) for level in range(levels)]
    return {
        "in_channels": in_channels,
        "out_channels": LATENT_CHANNELS,
        "model_channels": layout.model_channels,
        "channel_mult": list(layout.channel_mult),
        "num_res_blocks": [layout.num_res_blocks] * levels,
        "transformer_depth": [d for d in depth for _ in range(layout.num_res_blocks)],
        # ComfyUI pops this list from the end while building output_blocks 0, 1, ...
        "transformer_depth_output": [d for d in depth for _ in range(layout.num_res_blocks + 1)],
        "transformer_depth_middle": 1,
        "num_heads": layout.num_heads,
        "num_head_channels": -1,
        "context_dim": layout.context_dim,
        "use_linear_in_transformer": False,
        "use_spatial_transformer": True,
        "legacy": False,
        "adm_in_channels": None,
    }
