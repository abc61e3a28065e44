"""Shared fixtures: the golden parity data, the official key list and the real face photos ship in
tests/data/ (see tests/data/README.md). A missing file fails the test: a skip would hide it."""

import os
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from support.paths import DATA, FACES, PHOTO_NAMES, keys_tsv as official_keys_tsv, required_file


@pytest.fixture(scope="session")
def golden_dir():
    path = Path(os.environ.get("FLASHFACE_GOLDEN", DATA / "golden"))
    required_file(path / "weights.safetensors", "golden parity data", "FLASHFACE_GOLDEN")
    return path


@pytest.fixture(scope="session")
def keys_tsv():
    return official_keys_tsv()


@pytest.fixture(scope="session")
def photos() -> list[np.ndarray]:
    """The 8 test photos (man_1..4, woman_1..4), one face each, as RGB uint8."""
    for name in PHOTO_NAMES:
        required_file(FACES / name, "test photo", "FLASHFACE_FACES")
    return [np.asarray(Image.open(FACES / name).convert("RGB")) for name in PHOTO_NAMES]


@pytest.fixture(scope="session")
def builtin():
    from flashface_core.faces import make_detector

    return make_detector("builtin")  # onnxruntime is a requirement: missing, this fails


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("face code tried to open a network connection")
    monkeypatch.setattr(socket.socket, "connect", refuse)
