"""The shipped example workflows (CI, no ComfyUI). Every workflows/*.json must: be the UI format with
consistent links; use only core nodes or ours, with valid values for ours; convert to the API
format; ship a <name>.jpg thumbnail; be saved at zoom >= 0.6 with the whole graph inside a
1280x800 view; declare its model files in `properties.models` (name, url, directory) on each loader,
named as in the README's weights table; start with a "Read me" note. The browser test
(tests/host/test_frontend.py) checks the same in the real frontend.

Our node schemas need ComfyUI to import, so they are read statically from nodes/*.py with `ast`
(our_node_schemas); tests/host/test_graph_execution.py checks that reading against the real schemas,
and the core-node table below against ComfyUI's.
"""

import ast
import importlib
import json
import re
from pathlib import Path

import pytest

from flashface_runner import ui_format

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_DIR = REPO / "workflows"
NODES_DIR = REPO / "nodes"
WORKFLOWS = sorted(path.stem for path in WORKFLOW_DIR.glob("*.json"))
EXPECTED_WORKFLOWS = {
    "FlashFace portrait", "FlashFace another age or gender", "FlashFace character made real", "FlashFace person as artwork",
    "FlashFace identity mix", "FlashFace face swap", "FlashFace advanced sampling", "FlashFace any SD1.5 checkpoint",
    "FlashFace two people", "FlashFace face swap two people", "FlashFace animation",
}
FRONTEND_ONLY = {"MarkdownNote", "Note"}
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}

# The core node types the workflows use, as ComfyUI v0.3.64 declares them (INPUT_TYPES, RETURN_TYPES);
# combo option lists are left out (they depend on the install).
CORE_INPUT_TYPES = {
    "CheckpointLoaderSimple": {"required": {"ckpt_name": ("COMBO", {})}},
    "CLIPTextEncode": {"required": {"text": ("STRING", {"multiline": True, "dynamicPrompts": True}),
                                    "clip": ("CLIP",)}},
    "EmptyLatentImage": {"required": {"width": ("INT", {"min": 16}), "height": ("INT", {"min": 16}),
                                      "batch_size": ("INT", {"min": 1})}},
    "LoadImage": {"required": {"image": ("COMBO", {"image_upload": True})}},
    "ImageBatch": {"required": {"image1": ("IMAGE",), "image2": ("IMAGE",)}},
    "ImageScale": {"required": {"image": ("IMAGE",), "upscale_method": ("COMBO", {}), "width": ("INT", {}),
                                "height": ("INT", {}), "crop": ("COMBO", {})}},
    "VAEDecode": {"required": {"samples": ("LATENT",), "vae": ("VAE",)}},
    "VAEEncode": {"required": {"pixels": ("IMAGE",), "vae": ("VAE",)}},
    "SetLatentNoiseMask": {"required": {"samples": ("LATENT",), "mask": ("MASK",)}},
    "DifferentialDiffusion": {"required": {"model": ("MODEL",)},
                              "optional": {"strength": ("FLOAT", {"min": 0.0, "max": 1.0})}},
    "ImageCompositeMasked": {"required": {"destination": ("IMAGE",), "source": ("IMAGE",), "x": ("INT", {"min": 0}),
                                          "y": ("INT", {"min": 0}), "resize_source": ("BOOLEAN", {})},
                             "optional": {"mask": ("MASK",)}},
    "MaskComposite": {"required": {"destination": ("MASK",), "source": ("MASK",), "x": ("INT", {"min": 0}),
                                   "y": ("INT", {"min": 0}), "operation": ("COMBO", {})}},
    "SaveImage": {"required": {"images": ("IMAGE",), "filename_prefix": ("STRING", {})}},
    "SaveAnimatedWEBP": {"required": {"images": ("IMAGE",), "filename_prefix": ("STRING", {}),
                                      "fps": ("FLOAT", {"min": 0.01}), "lossless": ("BOOLEAN", {}),
                                      "quality": ("INT", {"min": 0, "max": 100}), "method": ("COMBO", {})}},
    "PreviewImage": {"required": {"images": ("IMAGE",)}},
    "RandomNoise": {"required": {"noise_seed": ("INT", {"min": 0, "control_after_generate": True})}},
    "SamplerCustomAdvanced": {"required": {"noise": ("NOISE",), "guider": ("GUIDER",), "sampler": ("SAMPLER",),
                                           "sigmas": ("SIGMAS",), "latent_image": ("LATENT",)}},
}
CORE_RETURN_TYPES = {
    "CheckpointLoaderSimple": ["MODEL", "CLIP", "VAE"], "CLIPTextEncode": ["CONDITIONING"],
    "EmptyLatentImage": ["LATENT"], "LoadImage": ["IMAGE", "MASK"], "ImageBatch": ["IMAGE"], "ImageScale": ["IMAGE"],
    "VAEDecode": ["IMAGE"], "VAEEncode": ["LATENT"], "SetLatentNoiseMask": ["LATENT"], "SaveAnimatedWEBP": [],
    "DifferentialDiffusion": ["MODEL"], "ImageCompositeMasked": ["IMAGE"], "MaskComposite": ["MASK"], "SaveImage": [],
    "PreviewImage": [],
    "RandomNoise": ["NOISE"], "SamplerCustomAdvanced": ["LATENT", "LATENT"],
}

# Other packs' nodes a workflow may use (its Read me names the pack), as the commit the README's "Next to
# other packs" table names declares them: pack -> node type -> (INPUT_TYPES, RETURN_TYPES). With the
# pack installed, tests/host/test_graph_execution.py compares them with its real schemas and runs the
# workflow; without it those host tests skip with the reason.
PACK_NODES = {"AnimateDiff-Evolved": {
    "ADE_LoadAnimateDiffModel": ({"required": {"model_name": ("COMBO", {})}, "optional": {"ad_settings": ("AD_SETTINGS",)}},
                                 ["MOTION_MODEL_ADE"]),
    "ADE_ApplyAnimateDiffModelSimple": ({"required": {"motion_model": ("MOTION_MODEL_ADE",)},
                                         "optional": {"motion_lora": ("MOTION_LORA",), "scale_multival": ("MULTIVAL",),
                                                      "effect_multival": ("MULTIVAL",), "ad_keyframes": ("AD_KEYFRAMES",),
                                                      "per_block": ("PER_BLOCK",)}}, ["M_MODELS"]),
    "ADE_StandardUniformContextOptions": ({"required": {"context_length": ("INT", {"min": 1}),
                                                        "context_stride": ("INT", {"min": 1}),
                                                        "context_overlap": ("INT", {"min": 0})},
                                           "optional": {"fuse_method": ("COMBO", {}), "use_on_equal_length": ("BOOLEAN", {}),
                                                        "start_percent": ("FLOAT", {"min": 0.0, "max": 1.0}),
                                                        "guarantee_steps": ("INT", {"min": 0}),
                                                        "prev_context": ("CONTEXT_OPTIONS",), "view_opts": ("VIEW_OPTS",)}},
                                          ["CONTEXT_OPTIONS"]),
    "ADE_UseEvolvedSampling": ({"required": {"model": ("MODEL",), "beta_schedule": ("COMBO", {})},
                                "optional": {"m_models": ("M_MODELS",), "context_options": ("CONTEXT_OPTIONS",),
                                             "sample_settings": ("SAMPLE_SETTINGS",)}}, ["MODEL"]),
}}
PACK_SCHEMAS = {kind: schema for pack in PACK_NODES.values() for kind, schema in pack.items()}


def packs_needed(workflow):
    kinds = {node["type"] for node in workflow["nodes"]}
    return sorted(pack for pack, kinds_of_pack in PACK_NODES.items() if kinds & set(kinds_of_pack))


# --- our schemas, read statically from nodes/*.py --------------------------------------------

UNKNOWN = object()  # a value that needs ComfyUI to compute (e.g. its sampler list, a folder listing)


class _Module:
    """One nodes/*.py file: its top-level constants, functions and imported names, evaluated lazily."""

    def __init__(self, name, modules):
        self.tree = ast.parse((NODES_DIR / f"{name}.py").read_text())
        self.modules = modules
        self.assigns, self.functions, self.imports = {}, {}, {}
        for statement in self.tree.body:
            if isinstance(statement, ast.Assign) and isinstance(statement.targets[0], ast.Name):
                self.assigns[statement.targets[0].id] = statement.value
            elif isinstance(statement, ast.Assign) and isinstance(statement.targets[0], ast.Tuple) \
                    and isinstance(statement.value, ast.Tuple):  # A, B = "a", "b"
                for target, value in zip(statement.targets[0].elts, statement.value.elts):
                    self.assigns[target.id] = value
            elif isinstance(statement, ast.FunctionDef):
                self.functions[statement.name] = statement
            elif isinstance(statement, ast.ImportFrom) and statement.level > 0:
                for alias in statement.names:
                    self.imports[alias.asname or alias.name] = (statement.level, statement.module, alias.name)

    def lookup(self, name):
        if name in self.assigns:
            return self.value(self.assigns[name], {})
        if name in self.functions:
            return ("function", self, self.functions[name])
        if name in self.imports:
            level, module, attr = self.imports[name]
            if level == 1:  # a sibling in nodes/
                return self.modules[module].lookup(attr)
            if module.startswith("flashface_core"):  # importable without ComfyUI
                return getattr(importlib.import_module(module), attr)
        return UNKNOWN

    def value(self, node, env):
        """The value of a simple expression; UNKNOWN where it needs ComfyUI."""
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [self.value(item, env) for item in node.elts]
            return UNKNOWN if UNKNOWN in items else list(items)
        if isinstance(node, ast.Dict):
            return {self.value(k, env): None for k in node.keys}
        if isinstance(node, ast.Name):
            return env[node.id] if node.id in env else self.lookup(node.id)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            operand = self.value(node.operand, env)
            return UNKNOWN if operand is UNKNOWN else -operand
        if isinstance(node, ast.Subscript):
            container, index = self.value(node.value, env), self.value(node.slice, env)
            return UNKNOWN if UNKNOWN in (container, index) else container[index]
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            left, right = self.value(node.left, env), self.value(node.right, env)
            return UNKNOWN if UNKNOWN in (left, right) else left + right
        if isinstance(node, ast.Call):
            return self.call(node, env)
        return UNKNOWN

    def call(self, node, env):
        func = node.func
        if isinstance(func, ast.Name) and func.id == "list":
            inner = self.value(node.args[0], env)
            return UNKNOWN if inner is UNKNOWN else list(inner)
        if isinstance(func, ast.Attribute) and func.attr in ("Input", "Output"):
            socket = self.io_type(func.value, env)
            kwargs = {kw.arg: self.value(kw.value, env) for kw in node.keywords}
            if func.attr == "Output":
                return ("output", socket)
            return ("input", self.value(node.args[0], env), socket, kwargs)
        if isinstance(func, ast.Attribute) and func.attr == "Custom":  # io.Custom("FLASHFACE")
            return ("custom", self.value(node.args[0], env))
        if isinstance(func, ast.Name):
            helper = self.lookup(func.id)
            if isinstance(helper, tuple) and helper[0] == "function":
                return helper[1].run_function(helper[2], node, env, self)
        return UNKNOWN

    def io_type(self, node, env):
        if isinstance(node, ast.Attribute):  # io.Int, io.Vae, ... -> INT, VAE, ...
            return node.attr.upper()
        custom = self.value(node, env)
        return custom[1] if isinstance(custom, tuple) and custom[0] == "custom" else UNKNOWN

    def run_function(self, function, call, env, caller):
        """A helper's returned input(s), its parameters bound like Python would."""
        params = [arg.arg for arg in function.args.args]
        defaults = function.args.defaults
        bound = dict(zip(params[len(params) - len(defaults):], (self.value(d, {}) for d in defaults)))
        bound.update(zip(params, (caller.value(a, env) for a in call.args)))
        bound.update({kw.arg: caller.value(kw.value, env) for kw in call.keywords})
        returned = next(s for s in ast.walk(function) if isinstance(s, ast.Return))
        return self.value(returned.value, bound)


def our_node_schemas():
    """node_id -> {"input_types": INPUT_TYPES-like dict, "outputs": [type, ...]} for every node in nodes/*.py."""
    modules = {}
    for path in sorted(NODES_DIR.glob("*.py")):
        if path.stem != "__init__":
            modules[path.stem] = None
    for name in modules:
        modules[name] = _Module(name, modules)
    schemas = {}
    for module in modules.values():
        for schema_call in ast.walk(module.tree):
            if not (isinstance(schema_call, ast.Call) and isinstance(schema_call.func, ast.Attribute)
                    and schema_call.func.attr == "Schema"):
                continue
            kwargs = {kw.arg: kw.value for kw in schema_call.keywords}
            inputs = []
            for element in getattr(kwargs.get("inputs"), "elts", []):
                found = module.value(element.value if isinstance(element, ast.Starred) else element, {})
                inputs.extend(found if isinstance(found, list) else [found])
            outputs = [module.value(e, {})[1] for e in getattr(kwargs.get("outputs"), "elts", [])]
            input_types = {"required": {}, "optional": {}}
            for _, name, socket, options in inputs:
                section = "optional" if options.pop("optional", False) else "required"
                options.pop("tooltip", None)
                input_types[section][name] = (socket, options)
            schemas[module.value(kwargs["node_id"], {})] = {"input_types": input_types, "outputs": outputs}
    return schemas


OUR_SCHEMAS = our_node_schemas()


def input_types_of(kind):
    if kind in OUR_SCHEMAS:
        return OUR_SCHEMAS[kind]["input_types"]
    return PACK_SCHEMAS[kind][0] if kind in PACK_SCHEMAS else CORE_INPUT_TYPES[kind]


def output_types_of(kind):
    if kind in OUR_SCHEMAS:
        return OUR_SCHEMAS[kind]["outputs"]
    return PACK_SCHEMAS[kind][1] if kind in PACK_SCHEMAS else CORE_RETURN_TYPES[kind]


def spec_of(kind, name):
    for section in ("required", "optional"):
        if name in input_types_of(kind).get(section, {}):
            socket, *options = input_types_of(kind)[section][name]
            return socket, (options[0] if options else {}), section
    return None


def load(name):
    return json.loads((WORKFLOW_DIR / f"{name}.json").read_text())


def workflow_nodes(name):
    return [node for node in load(name)["nodes"] if node["type"] not in FRONTEND_ONLY]


def api(name):
    return ui_format.ui_to_api(load(name), input_types_of)


def by_type(prompt, kind):
    return [node["inputs"] for node in prompt.values() if node["class_type"] == kind]


# --- tests -----------------------------------------------------------------------------------


def test_static_schemas_found_every_node():
    assert set(OUR_SCHEMAS) >= {"LoadFlashFace", "EncodeReferences", "FaceMask", "ApplyReferenceAttention",
                                "FlashFaceSampler", "FlashFaceGuider", "FlashFaceGuidance", "FlashFaceTrailingScheduler",
                                "FlashFaceDDIMSampler"}
    sampler = OUR_SCHEMAS["FlashFaceSampler"]["input_types"]["required"]
    assert sampler["seed"][1]["control_after_generate"] is True
    # the default comes from GuidanceSettings, which this reading of the source does not evaluate
    assert sampler["launch_timestep"][1] == {"default": UNKNOWN, "min": 0, "max": 1000, "step": 50}
    assert OUR_SCHEMAS["FaceMask"]["input_types"]["optional"]["mode"][1]["options"] == ["box", "from_detection", "person_region"]
    assert OUR_SCHEMAS["FaceMask"]["input_types"]["optional"]["face_order"][1]["options"] == ["largest_first", "left_to_right"]
    assert OUR_SCHEMAS["EncodeReferences"]["outputs"] == ["FLASHFACE_REFS", "IMAGE"]


def test_every_node_is_in_the_readme_node_table():
    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("## Nodes"):readme.index("## How it is built")]
    assert [kind for kind in OUR_SCHEMAS if f"(`{kind}`)" not in table] == []


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
    assert name in (REPO / "README.md").read_text(), f"{name!r} is missing from the README's workflow table"


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
        assert kind == origin_out["type"] == target_in["type"]
        assert output_types_of(nodes[origin]["type"])[origin_slot] == kind
        assert spec_of(nodes[target]["type"], target_in["name"])[0] == kind, (name, target, target_in["name"])


@pytest.mark.parametrize("name", WORKFLOWS)
def test_workflow_uses_only_core_nodes_and_ours(name):
    """...or the nodes of PACK_NODES, with the pack named as required in the Read me."""
    workflow = load(name)
    kinds = {node["type"] for node in workflow["nodes"]}
    assert kinds <= set(CORE_INPUT_TYPES) | set(OUR_SCHEMAS) | set(PACK_SCHEMAS) | FRONTEND_ONLY
    read_me = workflow["nodes"][0]["widgets_values"][0]
    for pack in packs_needed(workflow):
        assert f"**Requires [{pack}]" in read_me, (name, pack)


@pytest.mark.parametrize("name", WORKFLOWS)
def test_every_required_socket_is_connected(name):
    for node in workflow_nodes(name):
        linked = {slot["name"] for slot in node.get("inputs", []) if slot["link"] is not None}
        for socket_name, (socket, *_) in input_types_of(node["type"]).get("required", {}).items():
            if socket not in ui_format.WIDGET_TYPES:
                assert socket_name in linked, f"{name}: node #{node['id']} {node['type']} input {socket_name}"


@pytest.mark.parametrize("name", WORKFLOWS)
def test_our_nodes_get_valid_values(name):
    for node in workflow_nodes(name):
        if node["type"] not in OUR_SCHEMAS:
            continue
        where = f"{name}: node #{node['id']} {node['type']}"
        for slot in node.get("inputs", []):
            assert spec_of(node["type"], slot["name"]) is not None, f"{where}: no input {slot['name']}"
        names = ui_format.widget_names(input_types_of(node["type"]))
        assert len(node["widgets_values"]) == len(names), where
        previous = None
        for widget, value in zip(names, node["widgets_values"]):
            if widget is None:
                assert value in CONTROL_VALUES, f"{where}: control value of {previous} is {value!r}"
            else:
                check_value(where, widget, value, *spec_of(node["type"], widget)[:2])
            previous = widget


def check_value(where, name, value, kind, options):
    where = f"{where} input {name}={value!r}"
    if kind == "INT":
        assert isinstance(value, int) and not isinstance(value, bool), where
    elif kind == "FLOAT":
        assert isinstance(value, (int, float)) and not isinstance(value, bool), where
    elif kind == "STRING":
        assert isinstance(value, str), where
    elif kind == "BOOLEAN":
        assert isinstance(value, bool), where
    elif kind == "COMBO":
        choices = options.get("options", UNKNOWN)
        assert value in choices if choices is not UNKNOWN else isinstance(value, str), where
    for bound, holds in (("min", lambda b: value >= b), ("max", lambda b: value <= b)):
        if options.get(bound, UNKNOWN) is not UNKNOWN:
            assert holds(options[bound]), where


@pytest.mark.parametrize("name", WORKFLOWS)
def test_workflow_converts_to_api_format(name):
    prompt = api(name)
    assert len(prompt) == len(workflow_nodes(name))
    for node in prompt.values():
        spec = input_types_of(node["class_type"])
        declared = {**spec.get("required", {}), **spec.get("optional", {})}
        assert set(node["inputs"]) <= set(declared)
        assert set(spec.get("required", {})) <= set(node["inputs"]), node
    for inputs in by_type(prompt, "LoadImage"):
        assert (WORKFLOW_DIR / "inputs" / inputs["image"]).is_file()
        assert inputs["image"] in (WORKFLOW_DIR / "inputs" / "NOTICE.md").read_text()


# The view a workflow opens in: ComfyUI draws widgets only from zoom ~0.57 on, and a 1280x800
# window (a small laptop) leaves the graph canvas 1240x760 (measured in frontend 1.27.10).
# LiteGraph draws canvas point p at (p + offset) * scale; titles sit above pos.
MIN_ZOOM, VIEW = 0.6, (1240, 760)
TITLE_HEIGHT = 30
# Loader type -> its model folder (the file name is the first widget).
LOADERS = {"CheckpointLoaderSimple": "checkpoints", "LoadFlashFace": "flashface",
           "ADE_LoadAnimateDiffModel": "animatediff_models"}


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
    readme = (REPO / "README.md").read_text()
    weights_table = readme[readme.index("## Weights"):readme.index("## Commands")]
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


def test_portrait_uses_the_official_fidelity_preset():
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


def test_age_gender_uses_the_official_age_preset():
    prompt = api("FlashFace another age or gender")
    [apply] = by_type(prompt, "ApplyReferenceAttention")
    [sampler] = by_type(prompt, "FlashFaceSampler")
    assert apply["reference_strength"] == 0.9
    assert (sampler["reference_cfg"], sampler["launch_timestep"], sampler["text_cfg"]) == (2.5, 750, 8.5)


def test_identity_mix_weights_one_number_per_photo():
    prompt = api("FlashFace identity mix")
    [encode] = by_type(prompt, "EncodeReferences")
    assert len(encode["weights"].split(",")) == len(by_type(prompt, "LoadImage")) == 4


def test_face_swap_inpaints_inside_the_detected_face_and_pastes_back():
    prompt = api("FlashFace face swap")
    [mask_id] = [i for i, n in prompt.items() if n["class_type"] == "FaceMask"]
    [sampler] = by_type(prompt, "FlashFaceSampler")
    [apply] = by_type(prompt, "ApplyReferenceAttention")
    [noise_mask] = by_type(prompt, "SetLatentNoiseMask")
    [paste] = by_type(prompt, "ImageCompositeMasked")
    [scale_id] = [i for i, n in prompt.items() if n["class_type"] == "ImageScale"]
    assert prompt[mask_id]["inputs"]["mode"] == "from_detection"
    assert apply["face_mask"] == noise_mask["mask"] == paste["mask"] == [mask_id, 0]
    assert paste["destination"] == prompt[mask_id]["inputs"]["image"] == [scale_id, 0]
    assert (paste["x"], paste["y"], paste["resize_source"]) == (0, 0, False)
    assert 0 < sampler["denoise"] < 1
    assert prompt[sampler["model"][0]]["class_type"] == "DifferentialDiffusion"


def test_any_checkpoint_applies_flashface_on_the_users_checkpoint_over_plain_sd15():
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


def test_two_people_workflows_load_one_checkpoint_and_one_flashface():
    # Zoom, declared model files and the Read me note: the tests above, for every workflow.
    for name in ("FlashFace two people", "FlashFace face swap two people"):
        loaders = [node for node in load(name)["nodes"] if node["type"] in LOADERS]
        assert sorted(node["type"] for node in loaders) == ["CheckpointLoaderSimple", "LoadFlashFace"]


def test_two_people_chain_two_identities_on_complementary_halves():
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


def test_face_swap_two_gives_each_detected_face_its_own_identity():
    prompt = api("FlashFace face swap two people")
    chain = chain_of_applies(prompt)
    masks = [prompt[apply["face_mask"][0]]["inputs"] for apply in chain]
    assert [(m["mode"], m["face_index"], m["face_order"]) for m in masks] == [
        ("from_detection", 0, "left_to_right"), ("from_detection", 1, "left_to_right")]
    assert all(apply["region"] == apply["face_mask"] for apply in chain)
    [both_id] = [i for i, n in prompt.items() if n["class_type"] == "MaskComposite"]
    both = prompt[both_id]["inputs"]
    assert [both["destination"], both["source"]] == [chain[0]["face_mask"], chain[1]["face_mask"]]
    [noise_mask] = by_type(prompt, "SetLatentNoiseMask")
    [paste] = by_type(prompt, "ImageCompositeMasked")
    [sampler] = by_type(prompt, "FlashFaceSampler")
    assert noise_mask["mask"] == paste["mask"] == [both_id, 0] and 0 < sampler["denoise"] < 1


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
