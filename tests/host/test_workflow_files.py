"""The shipped workflows against the node schemas of the running ComfyUI and this pack (what the UI
and the runner use): every link joins sockets of one type, only core nodes and ours, every required
socket connected, valid values for our nodes' widgets, the API conversion, and the presets each
workflow promises. The file-level checks that need no schema run on CPU (tests/test_workflows.py)."""

import json

import pytest
from PIL import Image

from flashface_runner import comfyui, ui_format
from support import object_info
from support.other_packs import packs_needed
from support.paths import README, WORKFLOW_DIR, WORKFLOWS

FRONTEND_ONLY = ui_format.NOTE_TYPES
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}


@pytest.fixture(scope="module")
def node_classes(host):
    """ComfyUI's core nodes and this pack's (no other custom nodes), as the runner loads them."""
    comfyui.load_nodes()
    import nodes

    return nodes.NODE_CLASS_MAPPINGS


@pytest.fixture(scope="module")
def ours(host, node_classes):
    """The node ids this pack registers."""
    import asyncio

    return {cls.define_schema().node_id for cls in asyncio.run(host.nodes.FlashFaceExtension().get_node_list())}


@pytest.fixture(autouse=True)
def packs_of_the_workflow(request):
    """A workflow with another pack's nodes is checked with that pack loaded (skipped with the reason without)."""
    name = request.node.callspec.params.get("name") if hasattr(request.node, "callspec") else None
    if name is not None and packs_needed(load(name)):
        request.getfixturevalue("other_packs")


@pytest.fixture(scope="module")
def api(node_classes):
    """name -> the workflow as ComfyUI's API prompt (as the runner converts it)."""
    return lambda name: ui_format.ui_to_api(load(name), comfyui.input_types_of)


def load(name):
    return json.loads((WORKFLOW_DIR / f"{name}.json").read_text())


def test_recorded_object_info_is_the_running_one(node_classes):
    """The runner's CPU tests play a server with tests/data/portrait_object_info.json: it must be what
    this ComfyUI and pack answer (FLASHFACE_RECORD=1 records it anew)."""
    import os

    running = object_info.object_info_of(comfyui.input_types_of)
    if os.environ.get("FLASHFACE_RECORD"):
        object_info.RECORDING.write_text(json.dumps(running, indent=1) + "\n")
    assert json.dumps(object_info.recorded_object_info()) == json.dumps(running)  # input order included


def workflow_nodes(name):
    return [node for node in load(name)["nodes"] if node["type"] not in FRONTEND_ONLY]


def by_type(prompt, kind):
    return [node["inputs"] for node in prompt.values() if node["class_type"] == kind]


def spec_of(node_classes, kind, name):
    """(socket type, options) of input `name` of node type `kind`; a combo's choices as options["options"]."""
    input_types = node_classes[kind].INPUT_TYPES()
    for section in ("required", "optional"):
        if name in input_types.get(section, {}):
            socket, *rest = input_types[section][name]
            options = dict(rest[0]) if rest and rest[0] else {}
            if isinstance(socket, list):
                socket, options["options"] = "COMBO", socket
            return socket, options
    return None


def test_our_nodes_are_in_the_readme_node_table(ours):
    readme = README.read_text()
    start = readme.index("## Nodes")
    table = readme[start:readme.index("\n## ", start)]
    assert ours and [kind for kind in sorted(ours) if f"(`{kind}`)" not in table] == []


@pytest.mark.parametrize("name", WORKFLOWS)
def test_links_join_sockets_of_the_nodes_types(node_classes, name):
    nodes = {node["id"]: node for node in load(name)["nodes"]}
    for _, origin, origin_slot, target, target_slot, kind in load(name)["links"]:
        target_in = nodes[target]["inputs"][target_slot]
        assert str(node_classes[nodes[origin]["type"]].RETURN_TYPES[origin_slot]) == kind, (name, origin)
        assert spec_of(node_classes, nodes[target]["type"], target_in["name"])[0] == kind, (name, target)


@pytest.mark.parametrize("name", WORKFLOWS)
def test_workflow_uses_only_core_nodes_and_ours(node_classes, name):
    assert {node["type"] for node in workflow_nodes(name)} <= set(node_classes)


@pytest.mark.parametrize("name", WORKFLOWS)
def test_every_required_socket_is_connected(node_classes, name):
    for node in workflow_nodes(name):
        linked = {slot["name"] for slot in node.get("inputs", []) if slot["link"] is not None}
        for socket_name, (socket, *_) in node_classes[node["type"]].INPUT_TYPES().get("required", {}).items():
            if not (isinstance(socket, list) or socket in ui_format.WIDGET_TYPES):
                assert socket_name in linked, f"{name}: node #{node['id']} {node['type']} input {socket_name}"


@pytest.mark.parametrize("name", WORKFLOWS)
def test_our_nodes_get_valid_values(node_classes, ours, name):
    for node in workflow_nodes(name):
        if node["type"] not in ours:
            continue
        where = f"{name}: node #{node['id']} {node['type']}"
        for slot in node.get("inputs", []):
            assert spec_of(node_classes, node["type"], slot["name"]) is not None, f"{where}: no input {slot['name']}"
        names = ui_format.widget_names(node_classes[node["type"]].INPUT_TYPES())
        assert len(node["widgets_values"]) == len(names), where
        previous = None
        for widget, value in zip(names, node["widgets_values"]):
            if widget is None:
                assert value in CONTROL_VALUES, f"{where}: control value of {previous} is {value!r}"
            else:
                model_file = (node["type"], widget) in comfyui.MODEL_INPUTS  # choices depend on the install
                check_value(f"{where} input {widget}={value!r}", value, *spec_of(node_classes, node["type"], widget),
                            any_choice=model_file)
            previous = widget


def check_value(where, value, kind, options, any_choice=False):
    if kind == "INT":
        assert isinstance(value, int) and not isinstance(value, bool), where
    elif kind == "FLOAT":
        assert isinstance(value, (int, float)) and not isinstance(value, bool), where
    elif kind == "STRING":
        assert isinstance(value, str), where
    elif kind == "BOOLEAN":
        assert isinstance(value, bool), where
    elif kind == "COMBO":
        assert isinstance(value, str) if any_choice else value in options["options"], where
    if "min" in options:
        assert value >= options["min"], where
    if "max" in options:
        assert value <= options["max"], where


@pytest.mark.parametrize("name", WORKFLOWS)
def test_workflow_converts_to_api_format(node_classes, api, name):
    prompt = api(name)
    assert len(prompt) == len(workflow_nodes(name))
    for node in prompt.values():
        spec = node_classes[node["class_type"]].INPUT_TYPES()
        assert set(node["inputs"]) <= {*spec.get("required", {}), *spec.get("optional", {})}, node
        assert set(spec.get("required", {})) <= set(node["inputs"]), node


def test_portrait_uses_the_official_fidelity_preset(api):
    prompt = api("FlashFace portrait")
    [apply] = by_type(prompt, "ApplyReferenceAttention")
    [sampler] = by_type(prompt, "FlashFaceSampler")
    [mask] = by_type(prompt, "FaceMask")
    [encode] = by_type(prompt, "EncodeReferences")
    assert len(by_type(prompt, "LoadImage")) == 4 and encode["pad_to"] == 4
    assert (apply["reference_strength"], apply["strength_before_launch"]) == (1.2, 0.85)
    assert {k: sampler[k] for k in ("reference_cfg", "launch_timestep", "text_cfg", "cfg_rescale", "steps",
                                     "sampler_name", "scheduler")} == {
        "reference_cfg": 3.2, "launch_timestep": 750, "text_cfg": 7.5, "cfg_rescale": 0.5, "steps": 25,
        "sampler_name": "flashface_ddim", "scheduler": "flashface_trailing"}
    assert (mask["x1"], mask["y1"], mask["x2"], mask["y2"]) == (0.3, 0.2, 0.6, 0.5)
    positive = prompt[sampler["positive"][0]]["inputs"]["text"]
    assert "year old" in positive


def test_age_gender_uses_the_official_age_preset(api):
    prompt = api("FlashFace another age or gender")
    [apply] = by_type(prompt, "ApplyReferenceAttention")
    [sampler] = by_type(prompt, "FlashFaceSampler")
    assert apply["reference_strength"] == 0.9
    assert (sampler["reference_cfg"], sampler["launch_timestep"], sampler["text_cfg"]) == (2.5, 750, 8.5)


def test_identity_mix_weights_one_number_per_photo(api):
    prompt = api("FlashFace identity mix")
    [encode] = by_type(prompt, "EncodeReferences")
    assert len(encode["weights"].split(",")) == len(by_type(prompt, "LoadImage")) == 4


def crop_chain(prompt, crop_id):
    """The nodes a FaceCrop feeds: (Apply, SetLatentNoiseMask, FlashFaceSampler, FaceStitch) inputs, checked
    to be wired as one crop -> sample -> stitch chain."""
    def fed(kind, **inputs):
        found = [(i, n["inputs"]) for i, n in prompt.items() if n["class_type"] == kind
                 and all(n["inputs"].get(k) == v for k, v in inputs.items())]
        assert len(found) == 1, (kind, inputs, found)
        return found[0]
    _, apply = fed("ApplyReferenceAttention", face_mask=[crop_id, 1])
    encode_id, _ = fed("VAEEncode", pixels=[crop_id, 0])
    noise_id, _ = fed("SetLatentNoiseMask", samples=[encode_id, 0], mask=[crop_id, 1])
    sampler_id, sampler = fed("FlashFaceSampler", latent_image=[noise_id, 0])
    decode_id, _ = fed("VAEDecode", samples=[sampler_id, 0])
    stitch_id, stitch = fed("FaceStitch", face_crop=[crop_id, 2], crops=[decode_id, 0])
    model = prompt[sampler["model"][0]]
    while model["class_type"] == "DifferentialDiffusion":
        model = prompt[model["inputs"]["model"][0]]
    assert model["inputs"] == apply and sampler["positive"] != sampler["negative"]
    assert stitch["image"] == prompt[crop_id]["inputs"]["image"] and "mask" not in stitch
    return apply, sampler, stitch_id


def test_face_swap_crops_the_face_of_the_photo_at_its_own_size_and_stitches_it_back(api):
    prompt = api("FlashFace face swap")
    [crop_id] = [i for i, n in prompt.items() if n["class_type"] == "FaceCrop"]
    crop = prompt[crop_id]["inputs"]
    target = prompt[crop["image"][0]]
    assert target["class_type"] == "LoadImage" and "mask" not in crop  # detected, in the photo as loaded
    assert min(Image.open(WORKFLOW_DIR / "inputs" / target["inputs"]["image"]).size) >= 1536
    assert (crop["size"], crop["on_no_face"]) == (512, "error")
    apply, sampler, stitch_id = crop_chain(prompt, crop_id)
    assert 0 < sampler["denoise"] < 1 and prompt[sampler["model"][0]]["class_type"] == "DifferentialDiffusion"
    [save] = by_type(prompt, "SaveImage")
    assert save["images"] == [stitch_id, 0]


def test_face_swap_two_chains_two_crops_each_with_its_own_identity(api):
    prompt = api("FlashFace face swap two people")
    crops = {i: n["inputs"] for i, n in prompt.items() if n["class_type"] == "FaceCrop"}
    [(first_id, first)] = [(i, c) for i, c in crops.items() if prompt[c["image"][0]]["class_type"] == "LoadImage"]
    [(second_id, second)] = [(i, c) for i, c in crops.items() if i != first_id]
    assert [(c["face_index"], c["face_order"]) for c in (first, second)] == [(1, "left_to_right"), (0, "left_to_right")]
    apply_1, sampler_1, stitch_1 = crop_chain(prompt, first_id)
    apply_2, sampler_2, stitch_2 = crop_chain(prompt, second_id)
    assert second["image"] == [stitch_1, 0]  # the stitched photo goes into the next crop
    assert apply_1["references"] != apply_2["references"] and sampler_1["positive"] != sampler_2["positive"]
    assert 0 < sampler_1["denoise"] < 1 and 0 < sampler_2["denoise"] < 1
    [save] = by_type(prompt, "SaveImage")
    assert save["images"] == [stitch_2, 0]


def test_face_refine_resamples_the_portraits_face_with_the_same_references(api):
    prompt = api("FlashFace face refine")
    [latent] = by_type(prompt, "EmptyLatentImage")
    assert (latent["width"], latent["height"]) == (512, 768)
    [crop_id] = [i for i, n in prompt.items() if n["class_type"] == "FaceCrop"]
    crop = prompt[crop_id]["inputs"]
    portrait = prompt[crop["image"][0]]
    assert portrait["class_type"] == "VAEDecode"
    first_sampler = prompt[portrait["inputs"]["samples"][0]]["inputs"]
    first_apply = prompt[first_sampler["model"][0]]["inputs"]
    assert first_sampler["denoise"] == 1.0 and first_apply["face_mask"] == crop["mask"]  # the box it was drawn in
    apply, sampler, stitch_id = crop_chain(prompt, crop_id)
    assert apply["references"] == first_apply["references"] and sampler["denoise"] == 0.5
    [save] = by_type(prompt, "SaveImage")
    assert save["images"] == [stitch_id, 0]


def test_any_checkpoint_applies_flashface_on_the_users_checkpoint_over_plain_sd15(api):
    prompt = api("FlashFace any SD1.5 checkpoint")
    [apply] = by_type(prompt, "ApplyReferenceAttention")
    [sampler] = by_type(prompt, "FlashFaceSampler")
    user, base = prompt[apply["model"][0]], prompt[apply["base_model"][0]]
    assert user["class_type"] == base["class_type"] == "CheckpointLoaderSimple"
    assert base["inputs"]["ckpt_name"] == "v1-5-pruned-emaonly.safetensors" != user["inputs"]["ckpt_name"]
    assert apply["checkpoint_strength"] == 1.0
    for name in ("positive", "negative"):  # the user's checkpoint's CLIP reads the prompts
        assert prompt[sampler[name][0]]["inputs"]["clip"][0] == apply["model"][0]


def chain_of_applies(prompt):
    """The ApplyReferenceAttention nodes from the one on the checkpoint to the one the sampler gets."""
    [sampler] = by_type(prompt, "FlashFaceSampler")
    chain, node_id = [], sampler["model"][0]
    while prompt[node_id]["class_type"] in ("ApplyReferenceAttention", "DifferentialDiffusion"):
        if prompt[node_id]["class_type"] == "ApplyReferenceAttention":
            chain.insert(0, prompt[node_id]["inputs"])
        node_id = prompt[node_id]["inputs"]["model"][0]
    assert prompt[node_id]["class_type"] == "CheckpointLoaderSimple"
    return chain


def test_two_people_chain_two_identities_on_complementary_halves(api):
    prompt = api("FlashFace two people")
    chain = chain_of_applies(prompt)
    assert len(chain) == 2 and chain[0]["references"] != chain[1]["references"]
    boxes = []
    for apply in chain:
        region = prompt[apply["region"][0]]["inputs"]
        assert region["mode"] == "box" and apply["face_mask"] != apply["region"]
        boxes.append((region["x1"], region["y1"], region["x2"], region["y2"]))
    assert boxes == [(0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0)]
    [sampler] = by_type(prompt, "FlashFaceSampler")
    positive = prompt[sampler["positive"][0]]["inputs"]["text"]
    assert "man" in positive and "woman" in positive
