"""Node glue inside ComfyUI: errors that name the node, input and fix; LoRA order; plain CFG."""

import dataclasses
import importlib
from types import SimpleNamespace

import pytest
import torch

from support.pipeline import Parts, apply


def references(host, count=2, multiplicity=None):
    latents = torch.randn(count, 4, 14, 14, generator=torch.Generator().manual_seed(5))
    return host.reference_set.ReferenceSet(latents, multiplicity or [1] * count)


def negative():
    return [[torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(6)), {}]]


@pytest.fixture()
def parts(host, base):
    """Two random references and a random negative prompt, no face mask."""
    return Parts(base, [references(host)], negative(), negative())


def with_references(parts, references):
    return dataclasses.replace(parts, references=[references])


def test_missing_flashface_file_names_the_folder(host, tmp_path, monkeypatch):
    flashface_folder(tmp_path, monkeypatch)
    with pytest.raises(host.errors.FlashFaceNodeError, match=r"LoadFlashFace: flashface_name 'nope.ckpt'.*" + str(tmp_path)):
        host.nodes.LoadFlashFace.execute("nope.ckpt")


def test_wrong_file_is_explained(host, tmp_path, monkeypatch):
    from safetensors.torch import save_file

    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3)}, tmp_path / "sd15.safetensors")
    flashface_folder(tmp_path, monkeypatch)
    with pytest.raises(host.errors.FlashFaceNodeError, match="LoadFlashFace: .*SD1.5 checkpoint"):
        host.nodes.LoadFlashFace.execute("sd15.safetensors", "fp32")


def flashface_folder(tmp_path, monkeypatch):
    import folder_paths

    monkeypatch.setitem(folder_paths.folder_names_and_paths, "flashface",
                        ([str(tmp_path)], {".ckpt", ".pt", ".pth", ".safetensors"}))
    monkeypatch.setattr(folder_paths, "filename_list_cache", {})  # ComfyUI caches folder listings
    return tmp_path


def test_load_errors_name_the_file_once(host, tmp_path, monkeypatch):
    folder = flashface_folder(tmp_path, monkeypatch)
    torch.save({"backbone.conv.weight": torch.zeros(2)}, folder / "other_model.ckpt")
    with pytest.raises(host.errors.FlashFaceNodeError) as error:
        host.nodes.LoadFlashFace.execute("other_model.ckpt", "fp32")
    message = str(error.value)
    assert message.startswith("LoadFlashFace: flashface_name: ") and message.count("other_model.ckpt") == 1
    assert "not a FlashFace checkpoint: it holds 1 tensors in key groups backbone.*" in message


def test_damaged_weights_name_the_file_and_key(host, tmp_path, monkeypatch, golden_dir):
    from safetensors.torch import load_file, save_file

    folder = flashface_folder(tmp_path, monkeypatch)
    state_dict = load_file(golden_dir / "weights.safetensors")
    state_dict["head.2.bias"][1] = float("nan")
    save_file(state_dict, folder / "flashface.safetensors")
    with pytest.raises(host.errors.FlashFaceNodeError, match=r"LoadFlashFace: flashface_name: .*flashface\.safetensors: "
                       r"tensors with inf or NaN values: unet\.out\.2\.bias \(official head\.2\.bias\)"):
        host.nodes.LoadFlashFace.execute("flashface.safetensors", "fp32")


def test_file_list_leaves_out_face_detector_files(host, tmp_path, monkeypatch):
    folder = flashface_folder(tmp_path, monkeypatch)
    for name in ("flashface.ckpt", "retinaface_resnet50.pth", "sub/RetinaFace-R50.pth", "det_10g.pth", "mine.safetensors"):
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).write_bytes(b"")
    schema = host.nodes.LoadFlashFace.define_schema()
    options = next(i for i in schema.inputs if i.id == "flashface_name").options
    assert sorted(options) == ["flashface.ckpt", "mine.safetensors"]


def test_model_of_another_shape_is_refused_and_left_unpatched(host, make_sd15_patcher, golden_config, flashface,
                                                              parts):
    other = make_sd15_patcher({**golden_config["comfy_unet_config_main"], "context_dim": 48})
    with pytest.raises(host.errors.FlashFaceNodeError, match="ApplyReferenceAttention: `model` is not an SD1.5 U-Net"):
        apply(host, other, flashface, parts)
    assert not other.patches and not host.call.has_reference_attention(other)


def test_bad_ranges_are_refused(host, base, flashface, parts):
    with pytest.raises(host.errors.FlashFaceNodeError, match="start_percent"):
        apply(host, base, flashface, parts, start_percent=0.8, end_percent=0.2)


def test_sampler_needs_the_patched_model(host, base):
    with pytest.raises(host.errors.FlashFaceNodeError, match="FlashFaceSampler: `model` has no FlashFace"):
        host.nodes.FlashFaceSampler.execute(base, negative(), negative(), {"samples": torch.zeros(1, 4, 16, 16)},
                                            0, 2, 7.5, 3.2, 750, 0.5, "flashface_ddim", "flashface_trailing")


def test_lora_patches_before_and_after_apply_on_top_of_flashface(host, base, flashface, parts):
    import comfy.model_management

    key = "diffusion_model.out.2.bias"
    before, after = torch.full((4,), 0.25), torch.full((4,), 0.5)
    lora_first = base.clone()
    lora_first.add_patches({key: ("diff", (before,))})
    patched = apply(host, lora_first, flashface, parts)
    patched.add_patches({key: ("diff", (after,))})
    comfy.model_management.load_models_gpu([patched])
    expected = flashface.weights.unet["out.2.bias"] + before + after
    assert torch.allclose(patched.model.diffusion_model.out[2].bias, expected, atol=1e-6)


def test_plain_cfg_guider_runs_the_patched_model(host, base, flashface, parts):
    """KSampler-style CFG: every row uses the references at strength_before_launch; finite result."""
    import comfy.samplers

    patched = apply(host, base, flashface, parts, face_mask=torch.ones(1, 128, 128))
    guider = comfy.samplers.CFGGuider(patched)
    guider.set_conds(negative(), negative())
    guider.set_cfg(5.0)
    sigmas = host.sampling.flashface_sigmas(patched, "normal", 2)
    noise = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    out = guider.sample(noise, torch.zeros_like(noise), comfy.samplers.sampler_object("euler"), sigmas,
                        disable_pbar=True, seed=0)
    assert out.shape == noise.shape and torch.isfinite(out).all()


def test_multiplicity_changes_the_output_and_start_end_switch_references_off(host, base, flashface, parts,
                                                                           loaded_call_options):
    def eps(model, sigma):
        options = loaded_call_options(model, cond_or_uncond=[0], sigmas=torch.tensor([sigma]))
        x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            return model.model.diffusion_model(x, torch.tensor([500.0]), context=negative()[0][0],
                                               transformer_options=options)

    plain = eps(apply(host, base, flashface, parts), 1.0)
    weighted = eps(apply(host, base, flashface, with_references(parts, references(host, multiplicity=[3, 1]))), 1.0)
    assert (plain - weighted).abs().max() > 1e-4
    # outside [start, end] the strength is 0: the output no longer depends on the references
    late = dict(start_percent=0.9, end_percent=1.0)
    off_a = eps(apply(host, base, flashface, parts, **late), 1.0)
    other_refs = host.reference_set.ReferenceSet(torch.randn(2, 4, 14, 14), [1, 1])
    off_b = eps(apply(host, base, flashface, with_references(parts, other_refs), **late), 1.0)
    assert torch.equal(off_a, off_b)


class NoFaces:
    name = "stub detector"

    def detect(self, image):
        return []


class BrokenModel(NoFaces):
    def detect(self, image):
        raise RuntimeError("model run failed")  # what onnxruntime's own exception types carry


@pytest.fixture()
def face_similarity(host, monkeypatch):
    module = importlib.import_module(f"{host.pack.__name__}.nodes.face_similarity")
    monkeypatch.setattr(module, "make_embedder", lambda name, roots: SimpleNamespace(name="stub embedder"))
    return module


@pytest.mark.parametrize("detector, fails, message", [
    (NoFaces(), None, "FaceSimilarity: references: no face found in any of the 1 reference images"),
    (BrokenModel(), None, "FaceSimilarity: detector 'auto', similarity 'auto': running stub detector and stub "
                          "embedder failed \\(RuntimeError: model run failed\\)"),
    (NoFaces(), FileNotFoundError("shape_predictor_5_face_landmarks.dat is missing"),
     "FaceSimilarity: similarity 'auto': shape_predictor_5_face_landmarks.dat is missing"),
    (NoFaces(), ValueError("unknown face similarity backend"), "FaceSimilarity: similarity 'auto': unknown"),
])
def test_face_similarity_errors_name_node_and_input(host, face_similarity, monkeypatch, detector, fails, message):
    monkeypatch.setattr(face_similarity, "load_detector", lambda node, name: detector)
    if fails:
        def make_embedder(name, roots):
            raise fails
        monkeypatch.setattr(face_similarity, "make_embedder", make_embedder)
    images = torch.rand(2, 32, 32, 3)
    with pytest.raises(host.errors.FlashFaceNodeError, match=message):
        face_similarity.FaceSimilarity.execute(images, images[:1])


def test_face_similarity_missing_detector_names_the_input(host):
    module = importlib.import_module(f"{host.pack.__name__}.nodes.face_similarity")
    with pytest.raises(host.errors.FlashFaceNodeError, match="FaceSimilarity: detector 'nope': unknown face detector"):
        module.FaceSimilarity.execute(torch.rand(1, 32, 32, 3), torch.rand(1, 32, 32, 3), "nope")


def test_grey_and_rgba_images_reach_the_detectors_as_rgb(host):
    detectors = host.detectors
    for channels in (1, 4):
        assert [p.shape for p in detectors.image_to_uint8(torch.rand(2, 8, 6, channels))] == [(8, 6, 3)] * 2
