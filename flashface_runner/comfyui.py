"""ComfyUI in this process: imported as main.py imports it, with this pack's nodes, running API
prompts through ComfyUI's own validate_prompt and PromptExecutor.

ComfyUI is imported inside functions only: the package must import without it.
"""

import asyncio
import os
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .ui_format import RunnerError

PACK_DIR = Path(__file__).resolve().parents[1]
# (node type, input) -> models folder, to name the missing file and where it goes.
MODEL_INPUTS = {
    ("CheckpointLoaderSimple", "ckpt_name"): "checkpoints",
    ("LoadFlashFace", "flashface_name"): "flashface",
    ("VAELoader", "vae_name"): "vae",
    ("LoraLoader", "lora_name"): "loras",
    ("LoraLoaderModelOnly", "lora_name"): "loras",
    ("ADE_LoadAnimateDiffModel", "model_name"): "animatediff_models",  # AnimateDiff-Evolved's motion modules
}
# ComfyUI arguments that choose a device themselves; with none of them and no accelerator in torch,
# the runner adds --cpu (ComfyUI would otherwise stop with "Found no NVIDIA driver").
DEVICE_ARGS = ("--cpu", "--directml", "--cuda-device", "--oneapi-device-selector")


def device_args(comfyui_args):
    """comfyui_args plus --cpu when torch sees no CUDA, MPS or XPU device and none was chosen."""
    import torch

    if any(arg.split("=")[0] in DEVICE_ARGS for arg in comfyui_args):
        return list(comfyui_args), False
    xpu = getattr(torch, "xpu", None)
    accelerated = (torch.cuda.is_available() or torch.backends.mps.is_available()
                   or (xpu is not None and xpu.is_available()))
    return (list(comfyui_args), False) if accelerated else ([*comfyui_args, "--cpu"], True)


def shown_path(path):
    """A path for messages, relative to the working folder: logs get shared, and absolute paths
    carry home folders and user names."""
    try:
        return os.path.relpath(path)
    except ValueError:  # Windows: another drive
        return Path(path).name


def bootstrap_comfyui(comfyui_path, comfyui_args=()):
    """Import ComfyUI as main.py does: its argument parser sees only `comfyui_args`, and `utils`
    is bound to ComfyUI's package before anything imports comfy/utils.py. Once per process."""
    if "folder_paths" in sys.modules:
        return
    root = Path(comfyui_path).resolve()
    if not (root / "comfy").is_dir() or not (root / "execution.py").is_file():
        raise RunnerError(f"--comfyui {comfyui_path}: not a ComfyUI folder (no comfy/ and execution.py there)")
    sys.path.insert(0, str(root))
    argv, sys.argv = sys.argv, [str(root / "main.py"), *comfyui_args]
    try:
        import comfy.options

        comfy.options.enable_args_parsing()
        import utils.extra_config
        import comfy.cli_args  # noqa: F401  (parses comfyui_args)
        import folder_paths  # noqa: F401
    finally:
        sys.argv = argv
    extra_paths = root / "extra_model_paths.yaml"
    if extra_paths.is_file():
        utils.extra_config.load_extra_path_config(str(extra_paths))


def add_models_dir(models_dir):
    """Search DIR/<folder> first for every model folder DIR has (checkpoints, flashface, ...)."""
    import folder_paths

    root = Path(models_dir)
    if not root.is_dir():
        raise RunnerError(f"--models-dir {models_dir}: no such folder")
    for sub in sorted(root.iterdir()):
        if sub.is_dir():
            folder_paths.add_model_folder_path(sub.name, str(sub), is_default=True)


def load_nodes():
    """ComfyUI's built-in nodes plus this pack (no other custom nodes); idempotent."""
    import nodes

    if "SamplerCustomAdvanced" not in nodes.NODE_CLASS_MAPPINGS:
        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    if "FlashFaceSampler" not in nodes.NODE_CLASS_MAPPINGS:
        if not asyncio.run(nodes.load_custom_node(str(PACK_DIR))):
            raise RunnerError(f"could not load the FlashFace nodes from {shown_path(PACK_DIR)}; see the log above")


def input_types_of(kind):
    import nodes

    return nodes.NODE_CLASS_MAPPINGS[kind].INPUT_TYPES()


def missing_models(prompt):
    """One line per model file the prompt names that is in none of its folder's paths."""
    import folder_paths

    problems = []
    for node_id, node in prompt.items():
        for (kind, name), folder in MODEL_INPUTS.items():
            value = node["inputs"].get(name)
            if node["class_type"] != kind or not isinstance(value, str):
                continue
            if folder_paths.get_full_path(folder, value) is None:
                paths = folder_paths.get_folder_paths(folder) if folder in folder_paths.folder_names_and_paths else []
                problems.append(f"missing model: {value!r} (node #{node_id} {kind}, input {name}) goes in the "
                                f"'{folder}' folder: {shown_path(paths[0]) if paths else f'models/{folder}'}"
                                + (f" (also searched: {', '.join(map(shown_path, paths[1:]))})"
                                   if len(paths) > 1 else "")
                                + f". Or use another file: --set {node_id}.{name}=FILE")
    return problems


def resolve_input_images(prompt, workflow_dir):
    """Images a workflow names that are not in ComfyUI's input folder are taken from the
    workflow's own inputs/ folder (the shipped examples keep theirs there), named relative to the
    input folder: the prompt is saved in every PNG, and an absolute path would carry the user's."""
    import folder_paths

    for node in prompt.values():
        if node["class_type"] != "LoadImage":
            continue
        name = node["inputs"].get("image")
        shipped = Path(workflow_dir).resolve() / "inputs" / str(name)
        if isinstance(name, str) and not folder_paths.exists_annotated_filepath(name) and shipped.is_file():
            try:
                node["inputs"]["image"] = os.path.relpath(shipped, folder_paths.get_input_directory())
            except ValueError:  # Windows: another drive
                node["inputs"]["image"] = str(shipped)


class _Server:
    """The parts of ComfyUI's PromptServer that the executor uses (no web server here)."""

    client_id = None
    last_node_id = None
    last_prompt_id = None
    sockets_metadata = {}

    def send_sync(self, event, data, sid=None):
        pass

    def queue_updated(self):
        pass


@dataclass
class RunResult:
    success: bool
    images: list = field(default_factory=list)  # paths of the images SaveImage nodes wrote
    error: str = ""


class Runner:
    """One PromptExecutor for several prompts: as in ComfyUI, unchanged nodes (loaders) are cached."""

    def __init__(self, on_progress=None):
        import execution

        self.on_progress = on_progress  # called as on_progress(value, total) at every progress update
        self.executor = execution.PromptExecutor(_Server(), cache_type=execution.CacheType.CLASSIC, cache_size=0)

    def run(self, prompt, workflow=None) -> RunResult:
        """Validate and execute `prompt`; with `workflow` (the UI format), saved PNGs carry it beside
        the prompt, as the UI's own runs do, so a shared image opens as its workflow."""
        import comfy.utils
        import execution
        import folder_paths

        prompt_id = str(uuid.uuid4())
        valid, error, outputs, node_errors = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
        if not valid:
            return RunResult(False, error=validation_message(error, node_errors))
        comfy.utils.set_progress_bar_global_hook(self._progress_hook)
        extra_data = {"extra_pnginfo": {"workflow": workflow}} if workflow is not None else {}
        self.executor.execute(prompt, prompt_id, extra_data, list(outputs))
        if not self.executor.success:
            return RunResult(False, error=execution_message(self.executor.status_messages))
        images = []
        for node_output in self.executor.history_result["outputs"].values():
            for image in node_output.get("images", []):
                if image.get("type") == "output":
                    images.append(os.path.join(folder_paths.get_directory_by_type("output"), image["subfolder"],
                                               image["filename"]))
        return RunResult(True, images)

    def node_output(self, node_id, index=0):
        """The value output `index` of node `node_id` had in the last run (from the executor's cache)."""
        return self.executor.caches.outputs.get(str(node_id))[index][0]

    def _progress_hook(self, value, total, preview_image=None, prompt_id=None, node_id=None):
        # ComfyUI's server checks for a cancel request here too: samplers report every step.
        import comfy.model_management

        if self.on_progress is not None:
            self.on_progress(value, total)
        comfy.model_management.throw_exception_if_processing_interrupted()


def validation_message(error, node_errors):
    lines = [f"{error.get('message', 'invalid prompt')}: {error.get('details', '')}".rstrip(": ")]
    for node_id, found in node_errors.items():
        for reason in found["errors"]:
            lines.append(f"  node #{node_id} {found['class_type']}: {reason['message']}: {reason.get('details', '')}")
    return "\n".join(lines)


def execution_message(messages):
    for event, data in messages:
        if event == "execution_interrupted":
            return f"interrupted at node #{data['node_id']} {data['node_type']}"
        if event == "execution_error":
            return (f"node #{data['node_id']} {data['node_type']} failed: "
                    f"{data['exception_type']}: {data['exception_message']}")
    return "execution failed"


