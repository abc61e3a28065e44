"""Shared fixtures: the golden parity data and the real face photos live in ../shared."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("FLASHFACE_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def golden_dir():
    path = Path(os.environ.get("FLASHFACE_GOLDEN", SHARED / "golden" / "flashface_small"))
    if not (path / "weights.safetensors").is_file():
        pytest.skip(f"golden parity data not found in {path} (set FLASHFACE_GOLDEN)")
    return path


@pytest.fixture(scope="session")
def keys_tsv():
    """Every official FlashFace key with its group, ComfyUI key and full-size shape."""
    path = Path(os.environ.get("FLASHFACE_KEYS_TSV", SHARED / "flashface_keys.tsv"))
    if not path.is_file():
        pytest.skip(f"official key list not found at {path} (set FLASHFACE_KEYS_TSV)")
    return path
