"""The shipped example workflows as files (CI, no ComfyUI). Every workflows/*.json must: be the UI format
with consistent links; ship a <name>.jpg thumbnail; be saved at zoom >= 0.6 with the whole graph inside
a 1280x800 view; declare its model files in `properties.models` (name, url, directory) on each loader,
named as in the README's weights table; start with a "Read me" note; load only images that ship in
workflows/inputs/. Against the node schemas (ComfyUI's and ours, read from the running code) the host
test tests/host/test_workflow_files.py checks the rest, and tests/host/test_frontend.py the real frontend.
"""

import json
import re

import pytest

from flashface_runner import comfyui, ui_format
from support.other_packs import packs_needed
from support.paths import README, WORKFLOW_DIR, WORKFLOWS

EXPECTED_WORKFLOWS = {
    "FlashFace portrait", "FlashFace another age or gender", "FlashFace character made real", "FlashFace person as artwork",
    "FlashFace identity mix", "FlashFace face swap", "FlashFace advanced sampling", "FlashFace any SD1.5 checkpoint",
    "FlashFace two people", "FlashFace face swap two people", "FlashFace face refine", "FlashFace animation",
}
FRONTEND_ONLY = ui_format.NOTE_TYPES


def load(name):
    return json.loads((WORKFLOW_DIR / f"{name}.json").read_text())


def test_the_expected_workflows_ship_with_thumbnails():
    assert set(WORKFLOWS) >= EXPECTED_WORKFLOWS
    for name in WORKFLOWS:  # ComfyUI's template browser shows <name>.jpg beside <name>.json
        assert (WORKFLOW_DIR / f"{name}.jpg").is_file(), name


@pytest.mark.parametrize("name", WORKFLOWS)
def test_file_name_reads_as_a_template_card_title(name):
    # The frontend titles a custom node's template card by the file name alone (1.27.10 to 1.58.1).
    assert name.startswith("FlashFace ") and "_" not in name, name
    assert len(name) <= 32, f"{name!r} may not fit the two lines a card gives its title"
    assert re.fullmatch(r"[A-Za-z0-9 .]+", name), f"{name!r}: characters some file systems or URLs refuse"
    assert name in README.read_text(), f"{name!r} is missing from the README's workflow table"


@pytest.mark.parametrize("name", WORKFLOWS)
def test_workflow_is_ui_format_with_consistent_links(name):
    workflow = load(name)
    assert workflow["version"] == 0.4
    nodes = {node["id"]: node for node in workflow["nodes"]}
    for node in nodes.values():  # the keys the frontend's workflow schema requires of a node
        assert {"id", "type", "pos", "size", "flags", "order", "mode", "properties"} <= set(node), node["id"]
    assert workflow["last_node_id"] == max(nodes) and workflow["last_link_id"] == len(workflow["links"])
    for link_id, origin, origin_slot, target, target_slot, kind in workflow["links"]:
        origin_out = nodes[origin]["outputs"][origin_slot]
        target_in = nodes[target]["inputs"][target_slot]
        assert link_id in origin_out["links"] and target_in["link"] == link_id
        assert kind == origin_out["type"] == target_in["type"], (name, link_id)


@pytest.mark.parametrize("name", WORKFLOWS)
def test_input_images_ship_with_their_licence(name):
    images = [node["widgets_values"][0] for node in load(name)["nodes"] if node["type"] == "LoadImage"]
    for image in images:
        assert (WORKFLOW_DIR / "inputs" / image).is_file(), (name, image)
        assert image in (WORKFLOW_DIR / "inputs" / "NOTICE.md").read_text(), (name, image)


def test_every_shipped_input_image_is_used_by_a_workflow():  # users copy workflows/inputs/* into ComfyUI
    used = {node["widgets_values"][0] for name in WORKFLOWS for node in load(name)["nodes"]
            if node["type"] == "LoadImage"}
    shipped = {path.name for path in (WORKFLOW_DIR / "inputs").iterdir() if path.name != "NOTICE.md"}
    assert shipped == used, (shipped - used, used - shipped)


# The view a workflow opens in: ComfyUI draws widgets only from zoom ~0.57 on, and a 1280x800
# window (a small laptop) leaves the graph canvas 1240x760 (measured in frontend 1.27.10).
# LiteGraph draws canvas point p at (p + offset) * scale; titles sit above pos.
MIN_ZOOM, VIEW = 0.6, (1240, 760)
TITLE_HEIGHT = 30
# Loader type -> its model folder (the file name is the first widget), as the runner names missing files.
LOADERS = {kind: folder for (kind, _), folder in comfyui.MODEL_INPUTS.items()}


@pytest.mark.parametrize("name", WORKFLOWS)
def test_workflow_opens_readable_and_fitted(name):
    workflow = load(name)
    view = workflow["extra"]["ds"]
    scale, (offset_x, offset_y) = view["scale"], view["offset"]
    assert scale >= MIN_ZOOM
    for node in workflow["nodes"]:
        (x, y), (width, height) = node["pos"], node["size"]
        left, top = (x + offset_x) * scale, (y - TITLE_HEIGHT + offset_y) * scale
        right, bottom = (x + width + offset_x) * scale, (y + height + offset_y) * scale
        assert 0 <= left and right <= VIEW[0] and 0 <= top and bottom <= VIEW[1], (name, node["id"], node["type"])


@pytest.mark.parametrize("name", WORKFLOWS)
def test_loaders_declare_their_model_files(name):
    readme = README.read_text()
    weights_table = readme[readme.index("## Weights"):readme.index("\n## ", readme.index("## Weights") + 1)]
    loaders = [node for node in load(name)["nodes"] if node["type"] in LOADERS]
    assert loaders, name
    for node in loaders:
        [model] = node["properties"]["models"]
        assert model["name"] == node["widgets_values"][0] and model["directory"] == LOADERS[node["type"]]
        assert model["url"].startswith("https://huggingface.co/") and model["url"].endswith("/" + model["name"])
        assert f"`{model['name']}`" in weights_table, (name, model["name"])


@pytest.mark.parametrize("name", WORKFLOWS)
def test_workflow_starts_with_a_read_me_note(name):
    notes = [node for node in load(name)["nodes"] if node["type"] in FRONTEND_ONLY]
    assert notes and notes[0]["title"] == "Read me" and "models/flashface" in notes[0]["widgets_values"][0]


def test_two_people_workflows_load_one_checkpoint_and_one_flashface():
    # Zoom, declared model files and the Read me note: the tests above, for every workflow.
    for name in ("FlashFace two people", "FlashFace face swap two people"):
        loaders = [node for node in load(name)["nodes"] if node["type"] in LOADERS]
        assert sorted(node["type"] for node in loaders) == ["CheckpointLoaderSimple", "LoadFlashFace"]


# --- the converter on the frontend's conventions ---------------------------------------------

KSAMPLER = {"required": {"model": ("MODEL",), "seed": ("INT", {"control_after_generate": True}), "steps": ("INT", {}),
                         "cfg": ("FLOAT", {}), "sampler_name": (["euler", "ddim"],), "scheduler": (["normal"],),
                         "positive": ("CONDITIONING",), "negative": ("CONDITIONING",), "latent_image": ("LATENT",),
                         "denoise": ("FLOAT", {})}}
FRONTEND_TYPES = {
    "KSampler": KSAMPLER,
    "LoadImage": {"required": {"image": (["a.png"], {"image_upload": True})}},
    "Passthrough": {"required": {"model": ("MODEL",)}},
    "ModelSource": {"required": {}},
    "Muted": {"required": {"model": ("MODEL",)}},
}


def node(node_id, kind, widgets=(), inputs=(), outputs=(), mode=0):
    return {"id": node_id, "type": kind, "mode": mode, "widgets_values": list(widgets), "inputs": list(inputs),
            "outputs": [{"name": t, "type": t, "links": links} for t, links in outputs]}


def slot(name, kind, link, widget=False):
    """A node input; widget=True is a widget converted to a socket (its value stays in widgets_values)."""
    return {"name": name, "type": kind, "link": link} | ({"widget": {"name": name}} if widget else {})


def test_ui_to_api_follows_the_frontend_conventions():
    workflow = {"nodes": [
        node(1, "ModelSource", outputs=[("MODEL", [1])]),
        node(2, "Reroute", inputs=[slot("", "*", 1)], outputs=[("MODEL", [2])]),
        node(3, "Passthrough", inputs=[slot("model", "MODEL", 2)], outputs=[("MODEL", [3])], mode=ui_format.BYPASSED),
        node(4, "KSampler", [5, "randomize", 20, 7.0, "euler", "normal", 1.0],
             inputs=[slot("model", "MODEL", 3), slot("steps", "INT", 4, widget=True),
                     slot("positive", "CONDITIONING", None)]),
        node(5, "PrimitiveNode", [12], outputs=[("INT", [4])]),
        node(6, "LoadImage", ["a.png", "image"]),
        node(7, "Muted", inputs=[slot("model", "MODEL", None)], mode=ui_format.MUTED),
        node(8, "MarkdownNote", ["# notes"]),
    ], "links": [[1, 1, 0, 2, 0, "MODEL"], [2, 2, 0, 3, 0, "MODEL"], [3, 3, 0, 4, 0, "MODEL"], [4, 5, 0, 4, 1, "INT"]]}
    prompt = ui_format.ui_to_api(workflow, FRONTEND_TYPES.__getitem__)
    assert set(prompt) == {"1", "4", "6"}
    assert prompt["4"]["inputs"] == {"model": ["1", 0], "seed": 5, "steps": 12, "cfg": 7.0, "sampler_name": "euler",
                                     "scheduler": "normal", "denoise": 1.0}
    assert prompt["6"]["inputs"] == {"image": "a.png"}


def test_ui_to_api_names_unknown_nodes_and_subgraphs():
    with pytest.raises(ui_format.RunnerError, match="unknown node type 'Nope'"):
        ui_format.ui_to_api({"nodes": [node(1, "Nope")], "links": []}, FRONTEND_TYPES.__getitem__)
    subgraph = {"nodes": [node(1, "0f3c-uuid")], "links": [], "definitions": {"subgraphs": [{"id": "0f3c-uuid"}]}}
    with pytest.raises(ui_format.RunnerError, match="subgraph"):
        ui_format.ui_to_api(subgraph, FRONTEND_TYPES.__getitem__)


def test_overrides_parse_json_values_and_name_bad_targets():
    prompt = {"4": {"class_type": "KSampler", "inputs": {"seed": 1}}}
    ui_format.apply_overrides(prompt, ["4.seed=7", "4.cfg=6.5", "4.text=a photo, of x", '4.name="7"'])
    assert prompt["4"]["inputs"] == {"seed": 7, "cfg": 6.5, "text": "a photo, of x", "name": "7"}
    with pytest.raises(ui_format.RunnerError, match="#4 KSampler"):
        ui_format.apply_overrides(prompt, ["9.seed=1"])
    with pytest.raises(ui_format.RunnerError, match="NODE_ID.input=value"):
        ui_format.apply_overrides(prompt, ["4seed=1"])


def test_overrides_reach_the_workflow_saved_images_carry():
    workflow = {"nodes": [node(4, "KSampler", [5, "randomize", 20, 7.0, "euler", "normal", 1.0],
                               inputs=[slot("steps", "INT", 9, widget=True)])], "links": []}
    ui_format.set_widget_values(workflow, ["4.seed=7", "4.cfg=6.5", "4.model=1"], FRONTEND_TYPES.__getitem__)
    assert workflow["nodes"][0]["widgets_values"] == [7, "randomize", 20, 6.5, "euler", "normal", 1.0]


@pytest.mark.parametrize("name", WORKFLOWS)
def test_a_workflow_needing_another_pack_says_so_in_its_read_me(name):
    workflow = load(name)
    read_me = workflow["nodes"][0]["widgets_values"][0]
    for pack in packs_needed(workflow):
        assert f"**Requires [{pack}]" in read_me, (name, pack)
