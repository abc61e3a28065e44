"""Shared fixtures: the golden parity data, the official key list and the real face photos ship in
tests/data/ (see tests/data/README.md). A missing file fails the test: a skip would hide it."""

import os
from pathlib import Path

import pytest

from data_files import DATA, required_file


@pytest.fixture(scope="session")
def golden_dir():
    path = Path(os.environ.get("FLASHFACE_GOLDEN", DATA / "golden"))
    required_file(path / "weights.safetensors", "golden parity data", "FLASHFACE_GOLDEN")
    return path


@pytest.fixture(scope="session")
def keys_tsv():
    """Every official FlashFace key with its group, ComfyUI key and full-size shape."""
    return required_file(os.environ.get("FLASHFACE_KEYS_TSV", DATA / "flashface_keys.tsv"), "official key list",
                         "FLASHFACE_KEYS_TSV")
