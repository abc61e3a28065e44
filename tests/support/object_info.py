"""The /object_info a ComfyUI server with this pack gives for the portrait workflow's nodes, recorded in
tests/data/portrait_object_info.json so that the runner's CPU tests can play a server without ComfyUI.
A host test (tests/host/test_workflow_files.py) records it from the running code and fails when the
recording is stale: FLASHFACE_RECORD=1 writes it anew."""

import json

from .paths import DATA, WORKFLOW_DIR

RECORDING = DATA / "portrait_object_info.json"
# Inputs whose choices list the install's files: recorded empty, a test gives its own.
INSTALL_CHOICES = {("CheckpointLoaderSimple", "ckpt_name"), ("LoadFlashFace", "flashface_name"),
                   ("LoadImage", "image")}


# What a server with the portrait's model files and input images offers.
HAS_MODELS = {"CheckpointLoaderSimple": {"ckpt_name": ["v1-5-pruned-emaonly.safetensors"]},
              "LoadFlashFace": {"flashface_name": ["flashface.ckpt"]},
              "LoadImage": {"image": ["flashface_man_1.jpg", "other.png"]}}


def portrait_workflow():
    return json.loads((WORKFLOW_DIR / "FlashFace portrait.json").read_text())


def portrait_kinds():
    return sorted({node["type"] for node in portrait_workflow()["nodes"]} - {"MarkdownNote", "Note"})


def object_info_of(input_types_of):
    """{kind: {"input": {section: {name: [type, options]}}}} as /object_info writes it (combos as "COMBO"
    with their choices in options["options"]), from a node type -> INPUT_TYPES() function."""
    info = {}
    for kind in portrait_kinds():
        sections = {}
        for section, inputs in input_types_of(kind).items():
            if section not in ("required", "optional"):
                continue
            sections[section] = {}
            for name, spec in inputs.items():
                socket, options = spec[0], dict(spec[1]) if len(spec) > 1 and spec[1] else {}
                if isinstance(socket, list):
                    socket, options["options"] = "COMBO", socket
                if (kind, name) in INSTALL_CHOICES:
                    options["options"] = []
                sections[section][name] = [socket, {k: v for k, v in options.items() if k != "tooltip"}]
        info[kind] = {"input": sections}
    return json.loads(json.dumps(info))  # as a server's JSON answer reads


def recorded_object_info():
    return json.loads(RECORDING.read_text())


def object_info(**choices):
    """The recorded /object_info with the combo choices given as node type -> {input: options}."""
    info = recorded_object_info()
    for kind, inputs in choices.items():
        for section in info[kind]["input"].values():
            for name in inputs.keys() & section.keys():
                section[name][1]["options"] = inputs[name]
    return info
