"""Where the tests' data lives (tests/data/, see its README) and how a missing file is reported:
as a failure, since a skip would hide it. Not a conftest: tests/host has its own conftest module."""

from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent / "data"


def required_file(path, what, variable):
    if not Path(path).is_file():
        pytest.fail(f"{what} not found at {path}: restore tests/data (git checkout -- tests/data) or set {variable}")
    return Path(path)
