"""FlashFace weights in ComfyUI's names: the container (main U-Net, mask conv, reference U-Net, reference
attention), loading an official checkpoint or our converted file into it, and validating what was read.

Key mapping and groups: official_keys.py. Tensors are memory-mapped where the format allows
(checkpoint_files.py), so reading a multi-GB file costs no RAM until the tensors are used.
"""

import json
import logging
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from .checkpoint_files import FIX_HINT, FlashFaceCheckpointError, read_file
from .mapped_pages import release_mapped_pages
from .official_keys import OFFICIAL_DROPPED, OFFICIAL_GROUPS, REF_ATTN_MARK, converted_key
from .unet_layout import DEFAULT_NUM_HEADS, LATENT_CHANNELS, UNetLayout

logger = logging.getLogger(__name__)

FORMAT = "flashface-comfyui"
FORMAT_VERSION = "1"
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
REF_ATTN_PROJECTIONS = ("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight", "to_out.0.bias")
_CONVERTED_GROUPS = ("unet", "mask_conv", "ref_unet", "ref_attn")


@dataclass
class FlashFaceWeights:
    """FlashFace weights in ComfyUI UNetModel key names (no 'model.diffusion_model.' prefix).

    unet: main U-Net; its 'input_blocks.0.0.weight' is the ordinary 4-channel part of the conv_in.
    mask_conv_weight: [C, 1, 3, 3], the conv_in's 5th input channel (face-position mask).
    ref_unet: the reference U-Net's own input_blocks/output_blocks.
    ref_attn: attn1 module of the block ('middle_block.1', 'output_blocks.3.1', ...) -> its
    reference-attention projections ('to_q.weight', ..., 'to_out.0.bias').
    """

    layout: UNetLayout
    unet: dict[str, torch.Tensor]
    mask_conv_weight: torch.Tensor
    ref_unet: dict[str, torch.Tensor]
    ref_attn: dict[str, dict[str, torch.Tensor]]

    def reference_unet_state_dict(self) -> dict[str, torch.Tensor]:
        """State dict of a 4-channel UNetModel: ref_unet plus the main U-Net's shared tensors (not copies)."""
        shared = {k: v for k, v in self.unet.items() if k.startswith(("time_embed.", "middle_block.", "out."))}
        return self.ref_unet | shared

    def to(self, dtype, release_mapped_source=False) -> "FlashFaceWeights":
        """A copy in `dtype`. release_mapped_source: the tensors live in a file mapping that nothing
        else uses; give each one's pages back once it is converted (see mapped_pages.py)."""
        def cast(tensor):
            converted = tensor.to(dtype)
            if release_mapped_source and converted is not tensor:
                release_mapped_pages(tensor)
            return converted

        return self.map_tensors(cast)

    def frozen_parameters(self) -> "FlashFaceWeights":
        """The same tensors (no copy) as frozen nn.Parameters, one object per tensor: every module built
        from them shares these objects, so moving one between devices moves the only copy."""
        return self.map_tensors(lambda tensor: nn.Parameter(tensor, requires_grad=False))

    def map_tensors(self, fn) -> "FlashFaceWeights":
        """The same weights with `fn` applied to every tensor."""
        def each(tensors):
            return {k: fn(v) for k, v in tensors.items()}

        return FlashFaceWeights(
            self.layout,
            each(self.unet),
            fn(self.mask_conv_weight),
            each(self.ref_unet),
            {block: each(projections) for block, projections in self.ref_attn.items()},
        )

    def num_parameters(self) -> int:
        return sum(t.numel() for t in self.converted_state_dict().values())

    def converted_state_dict(self) -> dict[str, torch.Tensor]:
        """Flat dict in the converted file's layout: 'unet.*', 'mask_conv.weight', 'ref_unet.*', 'ref_attn.*'."""
        flat = {f"unet.{k}": v for k, v in self.unet.items()}
        flat["mask_conv.weight"] = self.mask_conv_weight
        flat |= {f"ref_unet.{k}": v for k, v in self.ref_unet.items()}
        for block, projections in self.ref_attn.items():
            flat |= {f"ref_attn.{block}.{proj}": v for proj, v in projections.items()}
        return flat


# --- official layout -> weights -------------------------------------------------------------


def split_official(state_dict, num_heads=DEFAULT_NUM_HEADS, release_checked=False) -> FlashFaceWeights:
    """Official FlashFace state dict -> FlashFaceWeights; drops the ori_* aliases and the unused ref_middle.
    release_checked: see _build."""
    _check_groups(state_dict, "official", OFFICIAL_GROUPS, OFFICIAL_DROPPED)
    flat, official_names, unknown = {}, {}, []
    for key, tensor in state_dict.items():
        target = converted_key(key)
        if target is None:
            unknown.append(key)
        elif target:
            flat[target], official_names[target] = tensor, key
    conv_in = flat.get("unet.input_blocks.0.0.weight")
    if conv_in is not None:
        if conv_in.ndim != 4 or conv_in.shape[1] != LATENT_CHANNELS + 1:
            raise FlashFaceCheckpointError(
                f"encoder.0.weight (input conv of the main U-Net) has shape {list(conv_in.shape)}, expected "
                f"[C, {LATENT_CHANNELS + 1}, 3, 3]: FlashFace adds an input channel for the face-position mask. "
                + FIX_HINT
            )
        flat["unet.input_blocks.0.0.weight"], flat["mask_conv.weight"] = (
            conv_in[:, :LATENT_CHANNELS],
            conv_in[:, LATENT_CHANNELS:],
        )
        official_names["mask_conv.weight"] = "encoder.0.weight"
    return _build(flat, num_heads, official_names, unknown, release_checked)


# --- converted layout ------------------------------------------------------------------------


def _from_converted(flat, metadata, num_heads, release_checked=False):
    _check_groups(flat, "converted", _CONVERTED_GROUPS)
    version = metadata.get("format_version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise FlashFaceCheckpointError(
            f"converted with format version {version}; this pack reads version {FORMAT_VERSION}. "
            "Convert the official flashface.ckpt again with this pack's `python -m flashface_core.convert`."
        )
    if num_heads is None:
        try:
            num_heads = json.loads(metadata.get("layout", "{}")).get("num_heads", DEFAULT_NUM_HEADS)
        except (ValueError, AttributeError) as err:
            raise FlashFaceCheckpointError(f"unreadable 'layout' metadata ({err}). {FIX_HINT}") from err
    return _build(flat, num_heads, release_checked=release_checked)


def _is_converted(state_dict, metadata):
    return metadata.get("format") == FORMAT or any(k.partition(".")[0] in _CONVERTED_GROUPS for k in state_dict)


def load_flashface(path, dtype=None, num_heads=None) -> FlashFaceWeights:
    """Load an official or converted FlashFace file. dtype None keeps the file's dtype; num_heads
    overrides the value stored in a converted file (default 8, SD1.5)."""
    path = Path(path)
    state_dict, metadata, mapped = read_file(path, dtype)
    release = mapped and dtype is not None  # the file's pages are read twice: validation, then conversion
    try:
        if _is_converted(state_dict, metadata):
            weights, kind = _from_converted(state_dict, metadata, num_heads, release), "converted"
        else:
            weights = split_official(state_dict, DEFAULT_NUM_HEADS if num_heads is None else num_heads, release)
            kind = "official"
    except FlashFaceCheckpointError as err:
        raise FlashFaceCheckpointError(f"{path}: {err}") from None
    logger.info("FlashFace weights: %s (%s layout, %s)", path.name, kind, weights.layout)
    del state_dict  # the mapping is unmapped once `weights` is the last user of its tensors
    return weights if dtype is None else weights.to(dtype, release_mapped_source=mapped)


# --- validation ------------------------------------------------------------------------------


def _listing(keys, limit=5):
    keys = list(keys)
    return ", ".join(keys[:limit]) + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def _check_groups(state_dict, kind, required, optional=()):
    """Reject files of another kind early, naming the key groups instead of hundreds of keys."""
    if any(k.startswith("model.diffusion_model.") for k in state_dict):
        raise FlashFaceCheckpointError(
            "this looks like an SD1.5 checkpoint ('model.diffusion_model.*' keys), not FlashFace weights. "
            "Load SD1.5 with the regular checkpoint loader, and put flashface.ckpt (the official FlashFace "
            "weights) or its conversion where the FlashFace loader looks for it."
        )
    groups = defaultdict(list)
    for key in state_dict:
        groups[key.partition(".")[0]].append(key)
    if not any(g in groups for g in required):
        raise FlashFaceCheckpointError(
            f"not a FlashFace checkpoint: it holds {len(state_dict)} tensors in key groups "
            f"{_listing(f'{g}.*' for g in groups)}, none of FlashFace's ({', '.join(f'{g}.*' for g in required)}). "
            + FIX_HINT
        )
    missing = [f"{g}.*" for g in required if g not in groups]
    unexpected = [f"{g}.* ({_listing(keys, 3)})" for g, keys in groups.items() if g not in required + optional]
    problems = [f"missing key groups: {', '.join(missing)}"] if missing else []
    problems += [f"unexpected key groups: {'; '.join(unexpected)}"] if unexpected else []
    if problems:
        raise FlashFaceCheckpointError(
            f"not FlashFace weights in the {kind} layout: {'; '.join(problems)}. {FIX_HINT}"
        )


def _infer_layout(unet, num_heads) -> UNetLayout:
    """The layout from shapes: widths and block counts per level, attention where a level's blocks have it."""

    def dim(key, axis):
        if key not in unet or unet[key].ndim <= axis:
            raise FlashFaceCheckpointError(
                f"cannot work out the U-Net layout: 'unet.{key}' is missing or has too few dimensions. {FIX_HINT}"
            )
        return unet[key].shape[axis]

    channels = dim("input_blocks.0.0.weight", 0)
    count = 1 + max(int(m[1]) for k in unet if (m := re.match(r"input_blocks\.(\d+)\.", k)))
    levels = [[]]  # per level: (width, has attention) of each ResBlock
    for index in range(1, count):
        if f"input_blocks.{index}.0.op.weight" in unet:  # downsampler: next level
            levels.append([])
            continue
        width = dim(f"input_blocks.{index}.0.in_layers.2.weight", 0)
        levels[-1].append((width, f"input_blocks.{index}.1.norm.weight" in unet))
    per_level = [set(blocks) for blocks in levels]
    if len({len(b) for b in levels}) != 1 or any(len(s) != 1 or next(iter(s))[0] % channels for s in per_level):
        raise FlashFaceCheckpointError(
            f"cannot work out the U-Net layout: ResBlocks (width, attention) per level {levels}; expected "
            f"equally many ResBlocks of one width (a multiple of {channels}) per level, split by downsamplers. "
            + FIX_HINT
        )
    if num_heads <= 0:
        raise FlashFaceCheckpointError(f"num_heads must be positive, got {num_heads}")
    return UNetLayout(
        model_channels=channels,
        channel_mult=tuple(blocks[0][0] // channels for blocks in levels),
        num_res_blocks=len(levels[0]),
        attention_levels=tuple(level for level, blocks in enumerate(levels) if blocks[0][1]),
        context_dim=dim("middle_block.1.transformer_blocks.0.attn2.to_k.weight", 1),
        num_heads=num_heads,
    )


def _converted_shapes(layout):
    """Key -> shape of a complete converted state dict with this layout."""
    main = layout.state_dict_shapes(LATENT_CHANNELS)
    shapes = {f"unet.{k}": s for k, s in main.items()}
    shapes["mask_conv.weight"] = (layout.model_channels, 1, 3, 3)
    shapes |= {f"ref_unet.{k}": s for k, s in main.items() if k.startswith(("input_blocks.", "output_blocks."))}
    for key in main:
        block, found, projection = key.partition(REF_ATTN_MARK)
        if found and projection == "to_q.weight" and not block.startswith("input_blocks."):
            for projection in REF_ATTN_PROJECTIONS:
                shapes[f"ref_attn.{block}.{projection}"] = main[f"{block}{REF_ATTN_MARK}{projection}"]
    return shapes


def _build(flat, num_heads, official_names=None, unknown=(), release_checked=False) -> FlashFaceWeights:
    """Validate a converted-layout dict against the layout its shapes imply, then split it.
    release_checked: the tensors live in a file mapping nothing else uses; give each one's pages back
    once its values are checked (the conversion that follows reads them again, tensor by tensor)."""
    official_names = official_names or {}
    layout = _infer_layout({k[5:]: v for k, v in flat.items() if k.startswith("unet.")}, num_heads)
    expected = _converted_shapes(layout)

    def name(key):
        return f"{key} (official {official_names[key]})" if key in official_names else key

    missing = [k for k in expected if k not in flat]
    unexpected = [name(k) for k in flat if k not in expected] + list(unknown)
    wrong_shape = [
        f"{name(k)}: {list(flat[k].shape)}, expected {list(expected[k])}"
        for k in expected
        if k in flat and tuple(flat[k].shape) != expected[k]
    ]
    wrong_dtype = [f"{name(k)}: {t.dtype}" for k, t in flat.items() if t.dtype not in FLOAT_DTYPES]
    indivisible = [str(w) for w in _attention_widths(layout) if w % num_heads]
    problems = [
        f"{len(items)} {what}: {_listing(items)}"
        for what, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", wrong_shape),
            ("tensors not float32/float16/bfloat16", wrong_dtype),
            (f"attention widths not divisible by num_heads={num_heads}", indivisible),
        )
        if items
    ]
    if problems:
        raise FlashFaceCheckpointError(
            f"not valid FlashFace weights (layout from the shapes: {layout}): {'; '.join(problems)}. {FIX_HINT}"
        )
    # inf/NaN weights would only show up later, as black or noise images.
    def finite(tensor):
        if tensor.is_meta:  # shapes only
            return True
        checked = _all_finite(tensor)
        if release_checked:
            release_mapped_pages(tensor)
        return checked

    not_finite = [name(k) for k, t in flat.items() if not finite(t)]
    if not_finite:
        raise FlashFaceCheckpointError(
            f"tensors with inf or NaN values: {_listing(not_finite)}. The weights are damaged: download or "
            "convert the file again."
        )
    unet, ref_unet, ref_attn = {}, {}, {}
    for key in expected:  # canonical order, whatever order the file had
        part, _, rest = key.partition(".")
        if part == "unet":
            unet[rest] = flat[key]
        elif part == "ref_unet":
            ref_unet[rest] = flat[key]
        elif part == "ref_attn":
            block, _, projection = rest.partition(".to_")
            ref_attn.setdefault(block, {})[f"to_{projection}"] = flat[key]
    return FlashFaceWeights(layout, unet, flat["mask_conv.weight"], ref_unet, ref_attn)


def _attention_widths(layout):
    levels = {*layout.attention_levels, len(layout.channel_mult) - 1}  # the middle block has attention too
    return sorted({layout.model_channels * layout.channel_mult[level] for level in levels})


def _all_finite(tensor):
    # A finite sum proves every value finite (inf and NaN propagate) at ~1/50 of isfinite's cost;
    # only a sum that overflows (or a damaged tensor) takes the exact check.
    return bool(torch.isfinite(tensor.sum()) or torch.isfinite(tensor).all())
