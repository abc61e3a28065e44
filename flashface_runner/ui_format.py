"""A workflow saved by ComfyUI's UI (nodes with widgets_values, links) as ComfyUI's API prompt.

Pure: needs only each node type's INPUT_TYPES (passed in as a function), never ComfyUI itself, so
the CI tests can convert the shipped workflows without a ComfyUI checkout.
"""

import json
import logging

log = logging.getLogger(__name__)

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SEED_NAMES = ("seed", "noise_seed")  # the frontend adds 'control after generate' to these by name too
NOTE_TYPES = {"Note", "MarkdownNote"}  # frontend-only, no backend class
MUTED, BYPASSED = 2, 4  # LiteGraph node modes


class RunnerError(Exception):
    """A problem with the workflow or the setup; the message says what to change."""


def spec_options(spec):
    """The options of an input spec, [kind] or [kind, options]."""
    return (spec[1] if len(spec) > 1 else {}) or {}


def takes_upload(spec):
    """Whether the frontend gives this input an upload button (image_upload and the like)."""
    return any(key.endswith("_upload") and value for key, value in spec_options(spec).items())


def widget_names(input_types):
    """Input names in the order of a node's widgets_values; None marks a value the frontend adds
    after a widget (a seed's 'control after generate', an image combo's upload button)."""
    names = []
    for section in ("required", "optional"):
        for name, spec in input_types.get(section, {}).items():
            kind, options = spec[0], spec_options(spec)
            if not (isinstance(kind, list) or kind in WIDGET_TYPES) or options.get("forceInput"):
                continue
            names.append(name)
            if options.get("control_after_generate") or (kind == "INT" and name in SEED_NAMES):
                names.append(None)
            if takes_upload(spec):
                names.append(None)
    return names


def ui_to_api(workflow, input_types_of, mismatches=None):
    """API prompt {id: {class_type, inputs, _meta}} from a UI workflow; input_types_of(type) -> INPUT_TYPES.
    A node whose saved widget values do not fit its widgets is matched in order with a warning, or,
    given a `mismatches` list, described there (for a server whose node versions must fit exactly)."""
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
            if len(values) != len(names) and mismatches is not None:
                mismatches.append(f"node #{node_id} {kind}: the workflow saved {len(values)} widget values, "
                                  f"its widgets here are {len(names)} {[n for n in names if n]}")
            elif len(values) != len(names):
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
        prompt[node_id]["inputs"][name] = _parse_value(text)


def set_widget_values(workflow, assignments, input_types_of):
    """Apply the same 'NODE_ID.input=value' overrides to the UI workflow's widgets_values, so the
    workflow a saved image carries shows the values the image was made with. Inputs without a
    widget (linked sockets) are left alone: the API prompt carries them."""
    nodes = {str(node["id"]): node for node in workflow.get("nodes", [])}
    for assignment in assignments:
        target, _, text = assignment.partition("=")
        node_id, _, name = target.partition(".")
        node = nodes[node_id]
        values = node.get("widgets_values")
        if isinstance(values, dict):
            values[name] = _parse_value(text)
            continue
        names = widget_names(input_types_of(node["type"]))
        if isinstance(values, list) and name in names and names.index(name) < len(values):
            values[names.index(name)] = _parse_value(text)


def _parse_value(text):
    try:
        return json.loads(text)
    except ValueError:
        return text
