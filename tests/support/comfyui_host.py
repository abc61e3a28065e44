"""ComfyUI and this pack in this process, for the host tests and the benchmarks: ComfyUI imported as
main.py imports it (flashface_runner's bootstrap; CPU, no other custom nodes), the pack imported as
ComfyUI imports a custom node (a package of its own name, from the repository's __init__.py)."""

import importlib
import importlib.util
import sys
from types import SimpleNamespace

from flashface_runner.comfyui import bootstrap_comfyui

from .paths import REPO, TORCHVISION_STUB

PACK_NAME = "comfyui_flashface"


def start_comfyui(comfyui_path, *comfyui_args):
    """Import ComfyUI from `comfyui_path` with `--cpu --disable-all-custom-nodes` plus `comfyui_args`;
    once per process. Without torchvision an import-only stand-in takes its place."""
    if importlib.util.find_spec("torchvision") is None:  # SD1.5 never calls it; ComfyUI imports it
        sys.path.append(str(TORCHVISION_STUB))
    bootstrap_comfyui(comfyui_path, ["--cpu", "--disable-all-custom-nodes", *comfyui_args])


def import_pack():
    """The pack's modules (after start_comfyui), by the names the tests use."""
    if PACK_NAME not in sys.modules:
        spec = importlib.util.spec_from_file_location(PACK_NAME, REPO / "__init__.py",
                                                      submodule_search_locations=[str(REPO)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACK_NAME] = module
        spec.loader.exec_module(module)

    def load(name):
        return importlib.import_module(f"{PACK_NAME}.{name}")

    return SimpleNamespace(
        pack=sys.modules[PACK_NAME],
        nodes=load("nodes"),
        node_ids=load("nodes.runtime.node_ids"),
        flashface_model=load("nodes.runtime.flashface_model"),
        call=load("nodes.runtime.reference_call"),
        reference_cache=load("nodes.runtime.reference_cache"),
        errors=load("nodes.runtime.errors"),
        guidance=load("nodes.runtime.guidance"),
        sampling=load("nodes.runtime.sampling"),
        model_folders=load("nodes.runtime.model_folders"),
        reference_set=load("nodes.runtime.reference_set"),
        detectors=load("nodes.runtime.detectors"),
        checkpoint=load("flashface_core.checkpoint"),
    )
