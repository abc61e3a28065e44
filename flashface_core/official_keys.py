"""The official checkpoint's key names -> this pack's converted layout: 'unet.*',
'ref_unet.*' and 'ref_attn.<block>.<projection>' in ComfyUI UNetModel names."""

OFFICIAL_GROUPS = ("time_embedding", "encoder", "middle", "decoder", "head", "ref_encoder", "ref_decoder")
OFFICIAL_DROPPED = ("ori_encoder", "ori_middle", "ori_decoder", "ref_middle")  # aliases; unused copy

_BLOCK_LISTS = {"encoder": "input_blocks", "decoder": "output_blocks", "middle": "middle_block"}
_TOP_LEVEL = {"time_embedding": "time_embed", "head": "out"}
# Module renames inside one block entry: ResBlock, SpatialTransformer, upsampler Sequential(Upsample, Conv2d).
_LAYER_RENAMES = {
    "layer1.0.": "in_layers.0.",
    "layer1.2.": "in_layers.2.",
    "embedding.1.": "emb_layers.1.",
    "layer2.0.": "out_layers.0.",
    "layer2.3.": "out_layers.3.",
    "shortcut.": "skip_connection.",
    "norm1.": "norm.",
    "conv1.": "proj_in.",
    "conv2.": "proj_out.",
    "1.": "conv.",
}
_PROJECTIONS = {"q": "to_q", "k": "to_k", "v": "to_v", "o": "to_out.0"}
_TRANSFORMER_RENAMES = {
    f"{official}.{p}.": f"{comfy}.{q}."
    for official, comfy in (("self_attn", "attn1"), ("cross_attn", "attn2"))
    for p, q in _PROJECTIONS.items()
} | {
    "ffn.0.proj.": "ff.net.0.proj.",
    "ffn.2.": "ff.net.2.",
    "norm1.": "norm1.",
    "norm2.": "norm2.",
    "norm3.": "norm3.",
}
REF_ATTN_MARK = ".transformer_blocks.0.attn1."


def _rename_prefix(path, renames):
    for old, new in renames.items():
        if path.startswith(old):
            return new + path[len(old) :]
    return None


def _layer_key(layer):
    if layer.startswith("blocks."):
        index, _, rest = layer.removeprefix("blocks.").partition(".")
        rest = _rename_prefix(rest, _TRANSFORMER_RENAMES)
        return rest and f"transformer_blocks.{index}.{rest}"
    return _rename_prefix(layer, _LAYER_RENAMES)


def converted_key(official: str) -> str | None:
    """The converted-layout key of an official key; '' for keys FlashFace never uses, None if unknown."""
    section, _, rest = official.partition(".")
    if section in OFFICIAL_DROPPED:
        return ""
    if ".self_attn_first." in official:  # the block's extra copy of its self-attention
        target = converted_key(official.replace(".self_attn_first.", ".", 1)) or ""
        block, found, projection = target.partition(REF_ATTN_MARK)
        return (
            f"ref_attn.{block.removeprefix('unet.')}.{projection}" if found and block.startswith("unet.") else None
        )
    if section in _TOP_LEVEL:
        return f"unet.{_TOP_LEVEL[section]}.{rest}"
    part = "ref_unet" if section.startswith("ref_") else "unet"
    blocks = _BLOCK_LISTS.get(section.removeprefix("ref_"))
    if blocks is None:
        return None
    if blocks != "middle_block":
        index, _, rest = rest.partition(".")
        if not index.isdigit():
            return None
        blocks = f"{blocks}.{index}"
        if rest in ("weight", "bias"):  # a bare conv: the input conv (entry 0) or a downsampler
            return f"{part}.{blocks}.0.{rest}" if index == "0" else f"{part}.{blocks}.0.op.{rest}"
    entry, _, layer = rest.partition(".")
    layer = _layer_key(layer)
    return layer and f"{part}.{blocks}.{entry}.{layer}"
