"""The SD1.x-style U-Net layout of FlashFace's weights (inferred from tensor shapes, plus the head count,
which shapes cannot tell) and the key -> shape table of a ComfyUI UNetModel state dict with that layout."""

from dataclasses import dataclass

DEFAULT_NUM_HEADS = 8  # SD1.5; tensor shapes cannot tell the head count
LATENT_CHANNELS = 4


@dataclass(frozen=True)
class UNetLayout:
    """The SD1.x-style U-Net shape, inferred from tensor shapes (plus num_heads, which shapes cannot tell)."""

    model_channels: int
    channel_mult: tuple[int, ...]
    num_res_blocks: int
    attention_levels: tuple[int, ...]
    context_dim: int
    num_heads: int = DEFAULT_NUM_HEADS

    def state_dict_shapes(self, in_channels: int) -> dict[str, tuple[int, ...]]:
        """Key -> shape of a ComfyUI UNetModel state dict with this layout."""
        c, emb, ctx = self.model_channels, 4 * self.model_channels, self.context_dim
        widths = [mult * c for mult in self.channel_mult]
        shapes = _linear("time_embed.0", emb, c) | _linear("time_embed.2", emb, emb)
        shapes |= _conv("input_blocks.0.0", c, in_channels, 3)
        skip_widths, ch, index = [c], c, 1
        for level, width in enumerate(widths):
            for _ in range(self.num_res_blocks):
                shapes |= _res_block(f"input_blocks.{index}.0", ch, width, emb)
                ch = width
                if level in self.attention_levels:
                    shapes |= _transformer(f"input_blocks.{index}.1", ch, ctx)
                skip_widths.append(ch)
                index += 1
            if level < len(widths) - 1:
                shapes |= _conv(f"input_blocks.{index}.0.op", ch, ch, 3)
                skip_widths.append(ch)
                index += 1
        shapes |= _res_block("middle_block.0", ch, ch, emb) | _transformer("middle_block.1", ch, ctx)
        shapes |= _res_block("middle_block.2", ch, ch, emb)
        index = 0
        for level in reversed(range(len(widths))):
            for i in range(self.num_res_blocks + 1):
                prefix = f"output_blocks.{index}"
                shapes |= _res_block(f"{prefix}.0", ch + skip_widths.pop(), widths[level], emb)
                ch, layer = widths[level], 1
                if level in self.attention_levels:
                    shapes |= _transformer(f"{prefix}.1", ch, ctx)
                    layer = 2
                if level > 0 and i == self.num_res_blocks:
                    shapes |= _conv(f"{prefix}.{layer}.conv", ch, ch, 3)
                index += 1
        return shapes | _norm("out.0", ch) | _conv("out.2", LATENT_CHANNELS, ch, 3)


def _norm(prefix, ch):
    return {f"{prefix}.weight": (ch,), f"{prefix}.bias": (ch,)}


def _linear(prefix, out_features, in_features, bias=True):
    return {f"{prefix}.weight": (out_features, in_features)} | (
        {f"{prefix}.bias": (out_features,)} if bias else {}
    )


def _conv(prefix, out_ch, in_ch, kernel):
    return {f"{prefix}.weight": (out_ch, in_ch, kernel, kernel), f"{prefix}.bias": (out_ch,)}


def _res_block(prefix, in_ch, out_ch, emb):
    shapes = _norm(f"{prefix}.in_layers.0", in_ch) | _conv(f"{prefix}.in_layers.2", out_ch, in_ch, 3)
    shapes |= _linear(f"{prefix}.emb_layers.1", out_ch, emb)
    shapes |= _norm(f"{prefix}.out_layers.0", out_ch) | _conv(f"{prefix}.out_layers.3", out_ch, out_ch, 3)
    return shapes | (_conv(f"{prefix}.skip_connection", out_ch, in_ch, 1) if in_ch != out_ch else {})


def _transformer(prefix, ch, context_dim):
    shapes = _norm(f"{prefix}.norm", ch) | _conv(f"{prefix}.proj_in", ch, ch, 1)
    block = f"{prefix}.transformer_blocks.0"
    for attn, kv_dim in (("attn1", ch), ("attn2", context_dim)):
        shapes |= _linear(f"{block}.{attn}.to_q", ch, ch, bias=False)
        shapes |= _linear(f"{block}.{attn}.to_k", ch, kv_dim, bias=False)
        shapes |= _linear(f"{block}.{attn}.to_v", ch, kv_dim, bias=False)
        shapes |= _linear(f"{block}.{attn}.to_out.0", ch, ch)
    shapes |= _linear(f"{block}.ff.net.0.proj", 8 * ch, ch) | _linear(f"{block}.ff.net.2", ch, 4 * ch)
    for norm in ("norm1", "norm2", "norm3"):
        shapes |= _norm(f"{block}.{norm}", ch)
    return shapes | _conv(f"{prefix}.proj_out", ch, ch, 1)

