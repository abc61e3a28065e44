"""Run a workflow saved by ComfyUI's UI headless, in-process, and print the images it saved.

    python -m flashface_core.run workflows/flashface_portrait.json --comfyui /path/to/ComfyUI \
        [--set 18.seed=7 --set 13.text="a photo of a 40 year old man"] [--models-dir DIR] [--output-dir DIR] \
        [-- --cpu ...ComfyUI's own arguments]

The UI format (nodes with widgets_values, links) becomes ComfyUI's API format using the nodes'
input schemas, then runs through ComfyUI's own validate_prompt and PromptExecutor. ComfyUI is
imported inside functions only: this package must stay importable without it.
"""

import argparse
import asyncio
import json
import logging
import os
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

PACK_DIR = Path(__file__).resolve().parents[1]
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SEED_NAMES = ("seed", "noise_seed")  # the frontend adds 'control after generate' to these by name too
NOTE_TYPES = {"Note", "MarkdownNote"}  # frontend-only, no backend class
MUTED, BYPASSED = 2, 4  # LiteGraph node modes
# (node type, input) -> models folder, to name the missing file and where it goes.
MODEL_INPUTS = {
    ("CheckpointLoaderSimple", "ckpt_name"): "checkpoints",
    ("LoadFlashFace", "flashface_name"): "flashface",
    ("VAELoader", "vae_name"): "vae",
    ("LoraLoader", "lora_name"): "loras",
    ("LoraLoaderModelOnly", "lora_name"): "loras",
}


class RunnerError(Exception):
    """A problem with the workflow or the setup; the message says what to change."""


# --- UI format -> API format (pure: needs only each node type's INPUT_TYPES) ---------------


def widget_names(input_types):
    """Input names in the order of a node's widgets_values; None marks a value the frontend adds
    after a widget (a seed's 'control after generate', an image combo's upload button)."""
    names = []
    for section in ("required", "optional"):
        for name, spec in input_types.get(section, {}).items():
            kind, options = spec[0], (spec[1] if len(spec) > 1 else {}) or {}
            if not (isinstance(kind, list) or kind in WIDGET_TYPES) or options.get("forceInput"):
                continue
            names.append(name)
            if options.get("control_after_generate") or (kind == "INT" and name in SEED_NAMES):
                names.append(None)
            if any(key.endswith("_upload") and value for key, value in options.items()):
                names.append(None)
    return names


def ui_to_api(workflow, input_types_of):
    """API prompt {id: {class_type, inputs, _meta}} from a UI workflow; input_types_of(type) -> INPUT_TYPES."""
    nodes = {node["id"]: node for node in workflow.get("nodes", [])}
    links = {}
    for link in workflow.get("links", []):
        if isinstance(link, dict):
            link = [link["id"], link["origin_id"], link["origin_slot"], link["target_id"], link["target_slot"]]
        links[link[0]] = (link[1], link[2])
    subgraphs = {sub.get("id") for sub in workflow.get("definitions", {}).get("subgraphs", [])}

    def source(link_id):
        """[node id, output slot], ("value", v) for a PrimitiveNode, or None (muted / nothing connected)."""
        if link_id not in links:
            return None
        origin_id, slot = links[link_id]
        origin = nodes.get(origin_id)
        if origin is None or origin.get("mode") == MUTED:
            return None
        if origin["type"] == "Reroute":
            return source(origin["inputs"][0].get("link"))
        if origin["type"] == "PrimitiveNode":
            return ("value", origin["widgets_values"][0])
        if origin.get("mode") == BYPASSED:  # passes through its first input of the output's type
            wanted = origin["outputs"][slot]["type"]
            through = [i for i in origin.get("inputs", []) if i.get("link") is not None and i.get("type") == wanted]
            return source(through[0]["link"]) if through else None
        return [str(origin_id), slot]

    prompt = {}
    for node_id, node in nodes.items():
        kind = node["type"]
        if kind in NOTE_TYPES or kind in ("Reroute", "PrimitiveNode") or node.get("mode") in (MUTED, BYPASSED):
            continue
        if kind in subgraphs:
            raise RunnerError(f"node #{node_id} is a subgraph; unpack it in the UI first "
                              "(right click > Unpack Subgraph)")
        try:
            input_types = input_types_of(kind)
        except KeyError:
            raise RunnerError(f"node #{node_id}: unknown node type {kind!r}; "
                              "is the node pack that provides it loaded?") from None
        inputs = {}
        values = node.get("widgets_values") or []
        if isinstance(values, dict):  # some packs save widgets by name
            inputs.update(values)
        else:
            names = widget_names(input_types)
            if len(values) != len(names):
                log.warning("node #%s (%s): %d widget values for %d widgets %s; matching them in order",
                            node_id, kind, len(values), len(names), [n for n in names if n])
            inputs.update({name: value for name, value in zip(names, values) if name is not None})
        for slot in node.get("inputs", []):
            if slot.get("link") is None:
                continue
            origin = source(slot["link"])
            if isinstance(origin, tuple):
                inputs[slot["name"]] = origin[1]
            elif origin is not None:
                inputs[slot["name"]] = origin
        prompt[str(node_id)] = {"class_type": kind, "inputs": inputs, "_meta": {"title": node.get("title") or kind}}
    return prompt


def apply_overrides(prompt, assignments):
    """'NODE_ID.input=value' strings; value is JSON when it parses (7, 0.5, true, "x"), else a plain string."""
    for assignment in assignments:
        target, sep, text = assignment.partition("=")
        node_id, dot, name = target.partition(".")
        if not sep or not dot or not name:
            raise RunnerError(f"--set {assignment!r}: expected NODE_ID.input=value, e.g. --set 18.seed=7")
        if node_id not in prompt:
            raise RunnerError(f"--set {assignment!r}: no node #{node_id}; the workflow's nodes are: "
                              + ", ".join(f"#{i} {n['class_type']}" for i, n in prompt.items()))
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        prompt[node_id]["inputs"][name] = value


# --- ComfyUI in this process ---------------------------------------------------------------


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
            raise RunnerError(f"could not load the FlashFace nodes from {PACK_DIR}; see the log above")


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
                                f"'{folder}' folder: {paths[0] if paths else f'models/{folder}'}"
                                + (f" (also searched: {', '.join(paths[1:])})" if len(paths) > 1 else "")
                                + f". Or use another file: --set {node_id}.{name}=FILE")
    return problems


def resolve_input_images(prompt, workflow_dir):
    """Images a workflow names that are not in ComfyUI's input folder are taken from the
    workflow's own inputs/ folder (the shipped examples keep theirs there)."""
    import folder_paths

    for node in prompt.values():
        if node["class_type"] != "LoadImage":
            continue
        name = node["inputs"].get("image")
        shipped = Path(workflow_dir).resolve() / "inputs" / str(name)
        if isinstance(name, str) and not folder_paths.exists_annotated_filepath(name) and shipped.is_file():
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

    def run(self, prompt) -> RunResult:
        import comfy.utils
        import execution
        import folder_paths

        prompt_id = str(uuid.uuid4())
        valid, error, outputs, node_errors = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
        if not valid:
            return RunResult(False, error=_validation_message(error, node_errors))
        comfy.utils.set_progress_bar_global_hook(self._progress_hook)
        self.executor.execute(prompt, prompt_id, {}, list(outputs))
        if not self.executor.success:
            return RunResult(False, error=_execution_message(self.executor.status_messages))
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


def _validation_message(error, node_errors):
    lines = [f"{error.get('message', 'invalid prompt')}: {error.get('details', '')}".rstrip(": ")]
    for node_id, found in node_errors.items():
        for reason in found["errors"]:
            lines.append(f"  node #{node_id} {found['class_type']}: {reason['message']}: {reason.get('details', '')}")
    return "\n".join(lines)


def _execution_message(messages):
    for event, data in messages:
        if event == "execution_interrupted":
            return f"interrupted at node #{data['node_id']} {data['node_type']}"
        if event == "execution_error":
            return (f"node #{data['node_id']} {data['node_type']} failed: "
                    f"{data['exception_type']}: {data['exception_message']}")
    return "execution failed"


# --- command line --------------------------------------------------------------------------


def _default_comfyui():
    if os.environ.get("COMFYUI_PATH"):
        return os.environ["COMFYUI_PATH"]
    if PACK_DIR.parent.name == "custom_nodes":  # installed as ComfyUI/custom_nodes/<pack>
        return str(PACK_DIR.parents[1])
    return None


def parse_args(argv):
    argv = list(argv)
    comfyui_args = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(prog="python -m flashface_core.run", description=__doc__.splitlines()[0],
                                     epilog="Arguments after `--` go to ComfyUI itself, e.g. `-- --cpu`.")
    parser.add_argument("workflow", type=Path, help="workflow JSON saved by ComfyUI's UI (Workflow > Save/Export)")
    parser.add_argument("--comfyui", default=_default_comfyui(),
                        help="ComfyUI folder (default: $COMFYUI_PATH, or the ComfyUI this pack is installed in)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="NODE_ID.input=value",
                        help="change an input, e.g. --set 18.seed=7 (repeatable; node ids as in the UI)")
    parser.add_argument("--models-dir", help="a models folder (checkpoints/, flashface/, ...) searched first")
    parser.add_argument("--output-dir", help="where SaveImage writes (default: ComfyUI's output folder)")
    args = parser.parse_args(argv)
    if not args.comfyui:
        parser.error("--comfyui is required (or set COMFYUI_PATH)")
    return args, comfyui_args


def main(argv=None):
    args, comfyui_args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        workflow = json.loads(args.workflow.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        print(f"error: cannot read workflow {args.workflow}: {error}", file=sys.stderr)
        return 1
    try:
        bootstrap_comfyui(args.comfyui, comfyui_args)
        if args.models_dir:
            add_models_dir(args.models_dir)
        if args.output_dir:
            import folder_paths

            folder_paths.set_output_directory(str(Path(args.output_dir).resolve()))
        load_nodes()
        prompt = ui_to_api(workflow, input_types_of)
        apply_overrides(prompt, args.overrides)
        resolve_input_images(prompt, args.workflow.resolve().parent)
    except RunnerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    problems = missing_models(prompt)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 2
    result = Runner().run(prompt)
    if not result.success:
        print(f"error: {result.error}", file=sys.stderr)
        return 1
    for path in result.images:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
