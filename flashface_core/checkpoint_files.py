"""Reading FlashFace weight files without running code (.safetensors, or torch checkpoints through
torch.load(weights_only=True)), and saying why a file that cannot be read is not what was expected."""

import itertools
import pickle
import pickletools
import re
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

TORCH_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
FIX_HINT = (
    "Expected FlashFace SD1.5 weights: the official flashface.ckpt, or a file written by "
    "`python -m flashface_core.convert`. If it is one of those, it is damaged: download or convert it again."
)


class FlashFaceCheckpointError(ValueError):
    """A file that is not (intact) FlashFace weights; the message says what was expected and what to do."""


def _as_float(tensor, dtype):
    """`tensor` in dtype if it is a float tensor (others are left for validation to name)."""
    return tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor


def read_file(path: Path, dtype=None) -> tuple[dict[str, torch.Tensor], dict[str, str], bool]:
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
        raise FlashFaceCheckpointError(f"{path}: contains no tensors (a {type(loaded).__name__}). {FIX_HINT}")
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
            f"torch.save; nothing from it was executed). {FIX_HINT}"
        )
    if head[8:9] == b"{":  # safetensors: an 8-byte header length, then the JSON header
        return "a .safetensors file under a torch file name: rename it to end in .safetensors."
    if not head.startswith(b"PK"):
        return f"not a torch checkpoint (neither a zip archive nor a pickle; it starts with {head[:8]!r}). {FIX_HINT}"
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
