"""Read FlashFace weights (official checkpoint or our converted file), validate them, and
split them into ComfyUI-named parts: main U-Net, mask conv, reference U-Net, reference attention.

Key mapping and groups: spec section 2. Tensors are memory-mapped where the format allows,
so reading a multi-GB file costs no RAM until the tensors are used.
"""

import itertools
import json
import logging
import pickle
import pickletools
import re
import zipfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open

from .mapped_pages import release_mapped_pages

logger = logging.getLogger(__name__)

FORMAT = "flashface-comfyui"
FORMAT_VERSION = "1"
DEFAULT_NUM_HEADS = 8  # SD1.5; tensor shapes cannot tell the head count
LATENT_CHANNELS = 4
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
REF_ATTN_PROJECTIONS = ("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight", "to_out.0.bias")
TORCH_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")

_OFFICIAL_GROUPS = ("time_embedding", "encoder", "middle", "decoder", "head", "ref_encoder", "ref_decoder")
_OFFICIAL_DROPPED = ("ori_encoder", "ori_middle", "ori_decoder", "ref_middle")  # aliases; unused copy
_CONVERTED_GROUPS = ("unet", "mask_conv", "ref_unet", "ref_attn")
_FIX_HINT = (
    "Expected FlashFace SD1.5 weights: the official flashface.ckpt, or a file written by "
    "`python -m flashface_core.convert`. If it is one of those, it is damaged: download or convert it again."
)


class FlashFaceCheckpointError(ValueError):
    """A file that is not (intact) FlashFace weights; the message says what was expected and what to do."""


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


# --- reading files ---------------------------------------------------------------------------


def _as_float(tensor, dtype):
    """`tensor` in dtype if it is a float tensor (others are left for validation to name)."""
    return tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor


def _read_file(path: Path, dtype=None) -> tuple[dict[str, torch.Tensor], dict[str, str], bool]:
    """Tensors, metadata and whether the tensors are a file mapping, of a .safetensors or torch
    checkpoint file (no code executed). A .safetensors file is read tensor by tensor and converted to
    `dtype` on the way; a torch file is memory-mapped as it is."""
    if not path.is_file():
        raise FlashFaceCheckpointError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return *_read_safetensors(path, dtype), False
    if suffix in TORCH_SUFFIXES:
        mapped = zipfile.is_zipfile(path)  # legacy (non-zip, pre-1.6) torch files cannot be mapped: read whole
        return _read_torch(path, mapped), {}, mapped
    raise FlashFaceCheckpointError(
        f"{path}: unknown file type {suffix!r}; expected .safetensors or a torch checkpoint "
        f"({', '.join(TORCH_SUFFIXES)})"
    )


def _read_safetensors(path, dtype=None):
    try:
        with safe_open(path, framework="pt") as file:
            tensors = {key: _as_float(file.get_tensor(key), dtype) for key in file.keys()}
            return tensors, file.metadata() or {}
    except SafetensorError as err:
        raise FlashFaceCheckpointError(
            f"{path}: not a readable .safetensors file ({err}); it is truncated or corrupt. "
            "Download or convert it again."
        ) from err


def _read_torch(path, mmap):
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, KeyError) as err:
        raise FlashFaceCheckpointError(f"{path}: {_unreadable_torch_file(path, err)}") from err
    if isinstance(loaded, dict):
        for wrapper in ("state_dict", "model"):
            if isinstance(loaded.get(wrapper), dict):
                loaded = loaded[wrapper]
                break
    tensors = {k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)} if isinstance(loaded, dict) else {}
    if not tensors:
        raise FlashFaceCheckpointError(f"{path}: contains no tensors (a {type(loaded).__name__}). {_FIX_HINT}")
    return tensors


def _unreadable_torch_file(path, err):
    """Why torch.load (weights_only) refused the file, judged from the error and the file's first bytes."""
    with path.open("rb") as file:
        head = file.read(16)
    is_pickle = head.startswith(b"\x80")  # pickle's PROTO opcode; torch.save writes zip archives instead
    # torch's wording varies by version: "Unsupported global: GLOBAL x.y" or "unsupported GLOBAL x.y whose ..."
    refused_global = re.search(r"unsupported (?:global: )?GLOBAL (\S+)", str(err.__context__ or err), re.IGNORECASE)
    imports = refused_global.group(1) if refused_global else (_pickle_import(path) if is_pickle else None)
    if imports:
        return (
            f"refused to load: unpickling it would import {imports}, i.e. run code rather than read tensors "
            "(nothing from it was executed). Use the official flashface.ckpt, or a .safetensors file."
        )
    if not head:
        return "the file is empty (0 bytes). Download it again."
    if is_pickle:
        return (
            "a Python pickle that torch.load cannot read as a checkpoint (truncated, or not written by "
            f"torch.save; nothing from it was executed). {_FIX_HINT}"
        )
    if head[8:9] == b"{":  # safetensors: an 8-byte header length, then the JSON header
        return "a .safetensors file under a torch file name: rename it to end in .safetensors."
    if not head.startswith(b"PK"):
        return f"not a torch checkpoint (neither a zip archive nor a pickle; it starts with {head[:8]!r}). {_FIX_HINT}"
    reason = (str(err).splitlines() or [type(err).__name__])[0]  # torch's messages run to several lines
    return f"cannot read this torch checkpoint ({reason}); it is truncated or corrupt. Download it again."


def _pickle_import(path, max_opcodes=100_000):
    """The first import outside torch and collections that a plain pickle would make, read without
    executing anything (torch.load refuses these files before it gets to their imports)."""
    strings = []
    with path.open("rb") as file:
        try:
            for opcode, arg, _ in itertools.islice(pickletools.genops(file), max_opcodes):
                name = None
                if opcode.name in ("GLOBAL", "INST"):
                    name = arg.replace(" ", ".")
                elif opcode.name == "STACK_GLOBAL":  # module and name were pushed as the two strings before
                    name = ".".join(strings[-2:])
                elif isinstance(arg, str):
                    strings.append(arg)
                if name and not name.startswith(("torch.", "collections.")):
                    return name
        except ValueError:  # truncated, or not a pickle after all
            pass
    return None


# --- official key layout -> converted layout (spec section 2.2) ------------------------------

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
_REF_ATTN_MARK = ".transformer_blocks.0.attn1."


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


def _converted_key(official: str) -> str | None:
    """The converted-layout key of an official key; '' for keys FlashFace never uses, None if unknown."""
    section, _, rest = official.partition(".")
    if section in _OFFICIAL_DROPPED:
        return ""
    if ".self_attn_first." in official:  # the block's extra copy of its self-attention
        target = _converted_key(official.replace(".self_attn_first.", ".", 1)) or ""
        block, found, projection = target.partition(_REF_ATTN_MARK)
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


def split_official(state_dict, num_heads=DEFAULT_NUM_HEADS, release_checked=False) -> FlashFaceWeights:
    """Official FlashFace state dict -> FlashFaceWeights; drops the ori_* aliases and the unused ref_middle.
    release_checked: see _build."""
    _check_groups(state_dict, "official", _OFFICIAL_GROUPS, _OFFICIAL_DROPPED)
    flat, official_names, unknown = {}, {}, []
    for key, tensor in state_dict.items():
        target = _converted_key(key)
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
                + _FIX_HINT
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
            raise FlashFaceCheckpointError(f"unreadable 'layout' metadata ({err}). {_FIX_HINT}") from err
    return _build(flat, num_heads, release_checked=release_checked)


def _is_converted(state_dict, metadata):
    return metadata.get("format") == FORMAT or any(k.partition(".")[0] in _CONVERTED_GROUPS for k in state_dict)


def load_flashface(path, dtype=None, num_heads=None) -> FlashFaceWeights:
    """Load an official or converted FlashFace file. dtype None keeps the file's dtype; num_heads
    overrides the value stored in a converted file (default 8, SD1.5)."""
    path = Path(path)
    state_dict, metadata, mapped = _read_file(path, dtype)
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
            + _FIX_HINT
        )
    missing = [f"{g}.*" for g in required if g not in groups]
    unexpected = [f"{g}.* ({_listing(keys, 3)})" for g, keys in groups.items() if g not in required + optional]
    problems = [f"missing key groups: {', '.join(missing)}"] if missing else []
    problems += [f"unexpected key groups: {'; '.join(unexpected)}"] if unexpected else []
    if problems:
        raise FlashFaceCheckpointError(
            f"not FlashFace weights in the {kind} layout: {'; '.join(problems)}. {_FIX_HINT}"
        )


def _infer_layout(unet, num_heads) -> UNetLayout:
    """The layout from shapes: widths and block counts per level, attention where a level's blocks have it."""

    def dim(key, axis):
        if key not in unet or unet[key].ndim <= axis:
            raise FlashFaceCheckpointError(
                f"cannot work out the U-Net layout: 'unet.{key}' is missing or has too few dimensions. {_FIX_HINT}"
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
            + _FIX_HINT
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
        block, found, projection = key.partition(_REF_ATTN_MARK)
        if found and projection == "to_q.weight" and not block.startswith("input_blocks."):
            for projection in REF_ATTN_PROJECTIONS:
                shapes[f"ref_attn.{block}.{projection}"] = main[f"{block}{_REF_ATTN_MARK}{projection}"]
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
            f"not valid FlashFace weights (layout from the shapes: {layout}): {'; '.join(problems)}. {_FIX_HINT}"
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
