"""The workflow as one ComfyUI server will run it, checked against that server's /object_info before
any job is queued: node types it lacks, inputs its version does not have (or needs), and models it
does not list are problems; input images it does not list are to be uploaded.

Pure (no ComfyUI, no network): object_info is the JSON the server returned.
"""

from dataclasses import dataclass

from .comfyui import MODEL_INPUTS
from .ui_format import BYPASSED, MUTED, NOTE_TYPES, apply_overrides, spec_options, takes_upload, ui_to_api

FRONTEND_ONLY = NOTE_TYPES | {"Reroute", "PrimitiveNode"}
MODEL_SUFFIXES = (".ckpt", ".safetensors", ".sft", ".pt", ".pth", ".bin", ".gguf", ".onnx")


@dataclass
class Problem:
    kind: str  # "node" | "input" | "model" | "image" | "server" | "seeds"
    text: str


def combo_options(spec):
    """The choices of a combo input spec (old style: a list; v3 nodes: "COMBO" with options), else None."""
    if isinstance(spec[0], list):
        return spec[0]
    if spec[0] == "COMBO":
        return spec_options(spec).get("options")
    return None


def prepare_for_server(workflow, object_info, overrides):
    """(prompt, problems, uploads): the API prompt converted with this server's input schemas and
    --set applied; uploads are (node id, input, image name) the server does not list."""
    problems = []
    for node in workflow.get("nodes", []):
        kind = node.get("type")
        if kind in FRONTEND_ONLY or node.get("mode") in (MUTED, BYPASSED) or kind in object_info:
            continue
        problems.append(Problem("node", f"node #{node['id']} {kind}: this server has no such node type "
                                        "(install the node pack that provides it there, e.g. this FlashFace pack)"))
    if problems:
        return None, problems, []
    mismatches = []
    prompt = ui_to_api(workflow, lambda kind: object_info[kind]["input"], mismatches=mismatches)
    problems += [Problem("input", text + " (this server runs another version of that node)")
                 for text in mismatches]
    apply_overrides(prompt, overrides)
    uploads = []
    for node_id, node in prompt.items():
        kind = node["class_type"]
        schema = object_info[kind]["input"]
        specs = {**schema.get("required", {}), **schema.get("optional", {})}
        where = f"node #{node_id} {kind}"
        for name in node["inputs"]:
            if name not in specs:
                problems.append(Problem("input", f"{where}: this server's {kind} has no input {name!r} "
                                                 "(another version of that node)"))
        for name in schema.get("required", {}):
            if name not in node["inputs"]:
                problems.append(Problem("input", f"{where}: this server's {kind} needs input {name!r}, which the "
                                                 f"workflow does not give (another version; --set {node_id}.{name}=... "
                                                 "or update the workflow)"))
        for name, value in node["inputs"].items():
            options = combo_options(specs[name]) if name in specs else None
            if options is None or isinstance(value, list) or value in options:
                continue
            if takes_upload(specs[name]):
                uploads.append((node_id, name, value))
            elif (kind, name) in MODEL_INPUTS or str(value).lower().endswith(MODEL_SUFFIXES):
                folder = MODEL_INPUTS.get((kind, name))
                problems.append(Problem("model", f"missing model {value!r} ({where}, input {name}): put it in the "
                                                 f"server's models/{folder or '...'} folder, or --set "
                                                 f"{node_id}.{name}=FILE"))
            else:
                shown = ", ".join(map(repr, options[:8])) + (", ..." if len(options) > 8 else "")
                problems.append(Problem("input", f"{where}: input {name} = {value!r} is not one of this server's "
                                                 f"choices ({shown})"))
    return prompt, problems, uploads

