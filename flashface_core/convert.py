"""Convert FlashFace weights into this pack's .safetensors layout.

    python -m flashface_core.convert flashface.ckpt flashface_sd15.safetensors --dtype fp16

The converted file holds only what inference uses, in ComfyUI key names ('unet.*',
'mask_conv.weight', 'ref_unet.*', 'ref_attn.<block>.<projection>'), plus metadata: format,
format_version, source_sha256 and the U-Net layout as JSON (with num_heads).
"""

import argparse
import hashlib
import json
import logging
import os
import struct
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from .checkpoint import FORMAT, FORMAT_VERSION, FlashFaceCheckpointError, FlashFaceWeights, load_flashface

logger = logging.getLogger(__name__)

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


def save_converted(weights: FlashFaceWeights, path, source_sha256: str | None, *, dtype=None) -> None:
    """Write `weights` (cast to `dtype` if given) as a converted .safetensors file.

    Tensors are cast and written one at a time: safetensors' own writer needs every output
    tensor in memory at once, which for a memory-mapped multi-GB input means the whole model.
    """
    path = Path(path)
    tensors = weights.converted_state_dict()
    out_dtypes = {key: dtype or t.dtype for key, t in tensors.items()}
    # Widest items first keeps every tensor aligned to its item size within the file.
    order = sorted(tensors, key=lambda key: -out_dtypes[key].itemsize)
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "layout": json.dumps(asdict(weights.layout))}
    if source_sha256:
        metadata["source_sha256"] = source_sha256
    header, offset = {"__metadata__": metadata}, 0
    for key in order:
        size = tensors[key].numel() * out_dtypes[key].itemsize
        header[key] = {
            "dtype": _SAFETENSORS_DTYPES[out_dtypes[key]],
            "shape": list(tensors[key].shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the tensor data starts 8-byte aligned
    partial = path.with_name(path.name + ".partial")  # never leave a half-written file under the real name
    try:
        with open(partial, "wb") as file:
            file.write(struct.pack("<Q", len(blob)) + blob)
            for key in order:
                file.write(_raw_bytes(tensors[key].to(out_dtypes[key])))
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    logger.info("wrote %s (%d tensors, %.2f GB)", path, len(order), path.stat().st_size / 1e9)


def _raw_bytes(tensor):
    """The tensor's little-endian bytes without a copy when it is already contiguous."""
    return tensor.contiguous().reshape(-1).view(torch.uint8).numpy()


def sha256_of(path, chunk_bytes=16 << 20) -> str:
    digest = hashlib.sha256()  # a loop: hashlib's file_digest needs Python 3.11
    with open(path, "rb") as file:
        while chunk := file.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flashface_core.convert",
        description="Convert the official FlashFace checkpoint (or a converted file) into this pack's layout.",
    )
    parser.add_argument("input", type=Path, help="flashface.ckpt, or a .safetensors file in either layout")
    parser.add_argument("output", type=Path, help="the .safetensors file to write")
    parser.add_argument("--dtype", choices=DTYPES, default="fp16", help="output dtype (default: fp16)")
    parser.add_argument(
        "--num-heads", type=int, default=None, help="attention heads, stored in the output (default: 8, SD1.5)"
    )
    args = parser.parse_args(argv)
    if args.output.suffix != ".safetensors":
        parser.error("the output file must end in .safetensors")
    if args.output.exists() and args.input.exists() and args.output.samefile(args.input):
        parser.error("the output must be a different file from the input")
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    try:
        weights = load_flashface(args.input, num_heads=args.num_heads)
    except FlashFaceCheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    source_sha256 = sha256_of(args.input)
    save_converted(weights, args.output, source_sha256, dtype=DTYPES[args.dtype])
    print(f"{args.input} -> {args.output}")
    print(f"  layout      {weights.layout}")
    print(f"  parameters  {weights.num_parameters():,} ({args.dtype})")
    print(f"  size        {args.output.stat().st_size / 1e9:.3f} GB")
    print(f"  sha256      {sha256_of(args.output)}")
    print(f"  source      sha256 {source_sha256}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
