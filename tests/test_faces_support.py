"""Shared fixtures of the face tests (no tests here): the real photos, the builtin detector and a
network guard. The face test modules import them by name."""
import os
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_files import DATA, required_file
from flashface_core.faces import make_detector

FACES = Path(os.environ.get("FLASHFACE_FACES", DATA / "faces"))
PHOTO_NAMES = [f"{person}_{i}.jpg" for person in ("man", "woman") for i in range(1, 5)]


@pytest.fixture(scope="session")
def photos() -> list[np.ndarray]:
    """The 8 test photos (man_1..4, woman_1..4), one face each, as RGB uint8."""
    for name in PHOTO_NAMES:
        required_file(FACES / name, "test photo", "FLASHFACE_FACES")
    return [np.asarray(Image.open(FACES / name).convert("RGB")) for name in PHOTO_NAMES]


@pytest.fixture(scope="session")
def builtin():
    return make_detector("builtin")  # onnxruntime is a requirement: missing, this fails


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("face code tried to open a network connection")
    monkeypatch.setattr(socket.socket, "connect", refuse)
