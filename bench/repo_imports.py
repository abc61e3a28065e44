"""The bench scripts run as files (`python bench/step_cost.py`): this puts the repository (flashface_core,
flashface_runner) and the tests' toolkit (tests/support) on sys.path. Called first in their `__main__`
block, so that importing a script (as tests/test_bench_bound.py does) changes nothing."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def use_repo_imports():
    sys.path[:0] = [str(REPO), str(REPO / "tests")]
