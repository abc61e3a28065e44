"""Where the repository's files are, and how a missing data file is reported: as a failure, since a
skip would hide it."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
WORKFLOW_DIR = REPO / "workflows"
WORKFLOWS = sorted(path.stem for path in WORKFLOW_DIR.glob("*.json"))
DATA = REPO / "tests" / "data"  # see its README
FACES = Path(os.environ.get("FLASHFACE_FACES", DATA / "faces"))
PHOTO_NAMES = [f"{person}_{i}.jpg" for person in ("man", "woman") for i in range(1, 5)]
TORCHVISION_STUB = REPO / "tests" / "host" / "stubs"  # import-only stand-in for torchvision (see its __init__)


def required_file(path, what, variable):
    if not Path(path).is_file():
        pytest.fail(f"{what} not found at {path}: restore tests/data (git checkout -- tests/data) or set {variable}")
    return Path(path)


def keys_tsv():
    """Every official FlashFace key with its group, ComfyUI key and full-size shape."""
    return required_file(os.environ.get("FLASHFACE_KEYS_TSV", DATA / "flashface_keys.tsv"), "official key list",
                         "FLASHFACE_KEYS_TSV")
