"""The pack imports without ComfyUI, insightface or onnxruntime, and does nothing at import time."""

import json
import re
import subprocess
import sys

from support.paths import REPO


def run_probe(code):
    result = subprocess.run([sys.executable, "-c", code, str(REPO)], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_pack_import_has_no_side_effects():
    code = r"""
import importlib.util, inspect, json, sys
for blocked in ("comfy", "folder_paths", "insightface", "onnxruntime"):
    sys.modules[blocked] = None  # importing any of these now raises ImportError
before = set(sys.modules)
spec = importlib.util.spec_from_file_location("flashface_pack", sys.argv[1] + "/__init__.py",
                                              submodule_search_locations=[sys.argv[1]])
pack = importlib.util.module_from_spec(spec)
sys.modules["flashface_pack"] = pack
spec.loader.exec_module(pack)
print(json.dumps({"new": sorted(set(sys.modules) - before - {"flashface_pack"}),
                  "async_entrypoint": inspect.iscoroutinefunction(pack.comfy_entrypoint)}))
"""
    found = run_probe(code)
    assert found["async_entrypoint"]
    assert found["new"] == []  # no torch, no nodes, no face models: nothing until ComfyUI asks


def test_core_imports_without_optional_dependencies():
    code = r"""
import json, sys
for blocked in ("comfy", "folder_paths", "insightface", "onnxruntime", "dlib"):
    sys.modules[blocked] = None
import flashface_core.checkpoint, flashface_core.reference_attention, flashface_core.faces
print(json.dumps({"comfy_loaded": any(m == "comfy" or m.startswith("comfy.") for m in sys.modules if sys.modules[m])}))
"""
    assert run_probe(code) == {"comfy_loaded": False}


# Standard-library names new in Python 3.11; pyproject promises 3.10, as ComfyUI supports it. A use
# right under an `if hasattr(...)` guard of the same name is fine.
PYTHON_311_ONLY = r"hashlib\.file_digest|\btomllib\b|\bExceptionGroup\b|except\s*\*|datetime\.UTC\b|" \
                  r"\bStrEnum\b|\bTaskGroup\b|typing import[^\n]*\b(Self|Never|LiteralString|assert_never)\b|" \
                  r"\.(uncancel|cancelling)\(|asyncio\.(timeout|Runner)\b"


def uses_of_python_311(text):
    lines = text.splitlines()
    return [match.group(0) for number, line in enumerate(lines) for match in re.finditer(PYTHON_311_ONLY, line)
            if not (number and re.search(rf"if hasattr\([^)]*\"{match.group(0).strip('.(')}\"\)", lines[number - 1]))]


def test_sources_run_on_python_310():
    assert 'requires-python = ">=3.10"' in (REPO / "pyproject.toml").read_text()
    used = [f"{path.relative_to(REPO)}: {use}"
            for folder in ("flashface_core", "nodes", "flashface_runner", "bench")
            for path in (REPO / folder).rglob("*.py")
            for use in uses_of_python_311(path.read_text())]
    assert used == []
    assert uses_of_python_311("task = asyncio.current_task()\ntask.uncancel()") == [".uncancel("]


def test_registry_icon_is_a_small_square_image_of_this_repository():
    from PIL import Image

    text = (REPO / "pyproject.toml").read_text()
    repository = re.search(r'^Repository = "https://github\.com/([^"]+)"$', text, re.MULTILINE).group(1)
    icon = re.search(r'^Icon = "([^"]+)"$', text, re.MULTILINE).group(1)
    prefix = f"https://raw.githubusercontent.com/{repository}/main/"
    assert icon.startswith(prefix), (icon, prefix)
    with Image.open(REPO / icon.removeprefix(prefix)) as image:
        assert image.width == image.height <= 400, image.size
    assert f"github.com/{repository}" in (REPO / "README.md").read_text()  # the clone URL users are given
