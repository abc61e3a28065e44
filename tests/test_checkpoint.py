"""Reading FlashFace checkpoints: key mapping (every official key), golden values, layout, errors."""

import json
import os
import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file

from flashface_core import checkpoint
from flashface_core.checkpoint import FlashFaceCheckpointError, load_flashface, split_official
from support.layouts import SD15_LAYOUT, comfy_unet_config

REF_ATTN_MARK = ".transformer_blocks.0.attn1."


def read_keys(keys_tsv):
    """Rows (official key, group, ComfyUI key, full-size shape) of the official key list."""
    rows = []
    for line in keys_tsv.read_text().splitlines()[1:]:
        official, group, comfy, shape = line.split("\t")
        rows.append((official, group, comfy, tuple(int(n) for n in shape.split("x"))))
    return rows


@pytest.fixture(scope="module")
def golden_path(golden_dir):
    return golden_dir / "weights.safetensors"


@pytest.fixture(scope="module")
def golden(golden_path):
    return load_file(golden_path)


@pytest.fixture(scope="module")
def golden_weights(golden_path):
    return load_flashface(golden_path, num_heads=4)


def test_every_official_key_maps_as_listed(keys_tsv):
    rows = read_keys(keys_tsv)
    # Full-size shapes on the meta device: the whole 1.7 B-parameter mapping without memory.
    state_dict = {k: torch.empty(s, dtype=torch.float16, device="meta") for k, g, _, s in rows if g != "alias"}
    for official, group, _, _ in rows:
        if group == "alias":  # like torch.load of the real file: the very tensor of its twin
            state_dict[official] = state_dict[official.removeprefix("ori_")]
    weights = split_official(state_dict)

    assert weights.layout == SD15_LAYOUT
    placed = {"unet": weights.unet, "ref": weights.ref_unet}
    for official, group, comfy, shape in rows:
        if official == "encoder.0.weight":
            assert weights.unet[comfy].shape == (320, 4, 3, 3) and shape == (320, 5, 3, 3)
            assert weights.mask_conv_weight.shape == (320, 1, 3, 3)
        elif group in placed:
            assert placed[group][comfy] is state_dict[official], official
        elif group == "ref_attn":
            block, _, projection = comfy.partition(REF_ATTN_MARK)
            assert weights.ref_attn[block][projection] is state_dict[official], official
        else:
            assert group in ("alias", "unused") and comfy == "-", official
    kept = {id(t) for t in weights.converted_state_dict().values()}
    assert not any(id(state_dict[k]) in kept for k, g, _, _ in rows if g == "unused")
    assert (len(weights.unet), len(weights.ref_unet), len(weights.ref_attn)) == (686, 632, 10)
    assert all(len(projections) == 5 for projections in weights.ref_attn.values())
    assert weights.num_parameters() == 1_652_310_404  # the official checkpoint's weights needed at inference

    # The shape rules of the layout reproduce every listed ComfyUI shape.
    main_shapes = SD15_LAYOUT.state_dict_shapes(5)
    assert main_shapes == {c: s for _, g, c, s in rows if g == "unet"}
    assert {c: s for _, g, c, s in rows if g == "ref"} == {
        k: s
        for k, s in SD15_LAYOUT.state_dict_shapes(4).items()
        if k.startswith(("input_blocks.", "output_blocks."))
    }


def test_sd15_comfy_config():
    config = comfy_unet_config(SD15_LAYOUT, 4)
    assert config["transformer_depth"] == [1, 1, 1, 1, 1, 1, 0, 0]
    assert config["transformer_depth_output"] == [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]
    assert (config["model_channels"], config["context_dim"], config["num_heads"]) == (320, 768, 8)


def test_golden_values_are_bit_identical(golden, golden_weights, keys_tsv):
    where = {official: (group, comfy) for official, group, comfy, _ in read_keys(keys_tsv)}
    for key, tensor in golden.items():
        group, comfy = where[key]
        if key == "encoder.0.weight":
            got = torch.cat([golden_weights.unet[comfy], golden_weights.mask_conv_weight], dim=1)
        elif group == "unet":
            got = golden_weights.unet[comfy]
        elif group == "ref":
            got = golden_weights.ref_unet[comfy]
        elif group == "ref_attn":
            block, _, projection = comfy.partition(REF_ATTN_MARK)
            got = golden_weights.ref_attn[block][projection]
        else:
            continue
        assert got.dtype == torch.float16 and torch.equal(got, tensor), key
    unused = sum(t.numel() for k, t in golden.items() if k.startswith("ref_middle."))
    assert golden_weights.num_parameters() == sum(t.numel() for t in golden.values()) - unused


def test_golden_layout_matches_config(golden_dir, golden_weights):
    config = json.loads((golden_dir / "config.json").read_text())
    assert comfy_unet_config(golden_weights.layout, 5) == config["comfy_unet_config_main"]
    assert comfy_unet_config(golden_weights.layout, 4) == config["comfy_unet_config_ref"]
    assert load_flashface(golden_dir / "weights.safetensors").layout.num_heads == 8  # default without override


def test_reference_unet_shares_the_main_tensors(golden_weights):
    ref = golden_weights.reference_unet_state_dict()
    assert ref.keys() == golden_weights.layout.state_dict_shapes(4).keys()
    for key in ("time_embed.0.weight", "middle_block.1.transformer_blocks.0.attn1.to_q.weight", "out.2.bias"):
        assert ref[key] is golden_weights.unet[key]


def test_to_casts_and_keeps_same_dtype_tensors(golden_weights):
    same = golden_weights.to(torch.float16)
    assert same is not golden_weights
    assert same.unet["out.2.weight"] is golden_weights.unet["out.2.weight"]
    wide = golden_weights.to(torch.float32)
    assert all(t.dtype == torch.float32 for t in wide.converted_state_dict().values())
    assert torch.equal(
        wide.ref_attn["middle_block.1"]["to_q.weight"].half(), same.ref_attn["middle_block.1"]["to_q.weight"]
    )


@pytest.mark.parametrize("variant", ["aliases", "no_aliases", "wrapped"])
def test_official_torch_checkpoint_loads(tmp_path, golden, golden_weights, variant):
    state_dict = dict(golden)
    if variant == "aliases":  # as in the real file: ori_* share storage with their twins
        state_dict |= {
            f"ori_{k}": v for k, v in golden.items() if k.startswith(("encoder.", "middle.", "decoder."))
        }
    path = tmp_path / "flashface.ckpt"
    torch.save({"state_dict": state_dict} if variant == "wrapped" else state_dict, path)
    loaded = load_flashface(path, num_heads=4)
    assert loaded.layout == golden_weights.layout
    expected = golden_weights.converted_state_dict()
    got = loaded.converted_state_dict()
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in expected)


def test_mapped_file_pages_are_given_back_after_the_check_and_the_conversion(tmp_path, golden, golden_weights,
                                                                             monkeypatch):
    """Loading an fp32 .ckpt as fp16 reads each tensor twice (inf/NaN check, then conversion); each time its
    file pages are given back, so the whole file is never resident at once. Kept as it is: nothing given back."""
    path = tmp_path / "flashface.ckpt"
    torch.save({k: v.float() for k, v in golden.items()}, path)
    released = []
    real = checkpoint.release_mapped_pages
    monkeypatch.setattr(checkpoint, "release_mapped_pages", lambda t: released.append(t.data_ptr()) or real(t))
    loaded = load_flashface(path, dtype=torch.float16, num_heads=4)
    tensors = golden_weights.converted_state_dict()
    assert len(released) == 2 * len(tensors)  # once checked, once converted
    got = loaded.converted_state_dict()
    assert all(torch.equal(got[k], tensors[k]) for k in tensors)
    released.clear()
    load_flashface(path, num_heads=4)
    assert released == []


def write_variant(tmp_path, golden, name="variant.safetensors", drop=(), **changes):
    state_dict = {k: v for k, v in golden.items() if k not in drop} | changes
    save_file({k: v.contiguous() for k, v in state_dict.items()}, tmp_path / name)
    return tmp_path / name


def test_sd15_checkpoint_is_named(tmp_path):
    path = tmp_path / "v1-5-pruned-emaonly.safetensors"
    save_file({"model.diffusion_model.out.2.bias": torch.zeros(4), "cond_stage_model.x": torch.zeros(1)}, path)
    with pytest.raises(FlashFaceCheckpointError, match="looks like an SD1.5 checkpoint") as err:
        load_flashface(path)
    assert "not FlashFace weights" in str(err.value) and "flashface.ckpt" in str(err.value)
    assert str(path) in str(err.value)


def test_other_models_tensors_are_named_by_group(tmp_path, golden_weights):
    path = tmp_path / "unet.ckpt"
    torch.save(dict(golden_weights.unet), path)
    with pytest.raises(FlashFaceCheckpointError) as err:
        load_flashface(path)
    message = str(err.value)
    assert f"not a FlashFace checkpoint: it holds {len(golden_weights.unet)} tensors in key groups " in message
    assert "time_embed.*, input_blocks.*, middle_block.*, output_blocks.*, out.*" in message
    assert "none of FlashFace's (time_embedding.*, encoder.*," in message


def test_some_groups_missing_are_listed(tmp_path, golden):
    path = write_variant(tmp_path, golden, drop=[k for k in golden if k.startswith("head.")], **{"extra.w": torch.zeros(1)})
    with pytest.raises(FlashFaceCheckpointError, match=r"missing key groups: head\.\*; unexpected key groups: extra\.\* \(extra\.w\)"):
        load_flashface(path)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_name_the_first_bad_key(tmp_path, golden, bad):
    damaged = {key: golden[key].clone() for key in ("decoder.3.1.blocks.0.self_attn.self_attn_first.q.weight", "encoder.0.weight")}
    damaged["decoder.3.1.blocks.0.self_attn.self_attn_first.q.weight"][0, 0] = bad
    damaged["encoder.0.weight"][0, 4, 0, 0] = bad  # the mask channel
    path = write_variant(tmp_path, golden, **damaged)
    with pytest.raises(FlashFaceCheckpointError) as err:
        load_flashface(path)
    message = str(err.value)
    assert message.startswith(f"{path}: tensors with inf or NaN values: ")
    assert "mask_conv.weight (official encoder.0.weight)" in message
    assert "ref_attn.output_blocks.3.1.to_q.weight (official decoder.3.1" in message
    assert "unet.input_blocks.0.0.weight" not in message and "damaged" in message


def test_large_finite_weights_pass(tmp_path, golden):
    """A float16 sum can overflow although every value is finite: that must not count as damage."""
    path = write_variant(tmp_path, golden, **{"head.2.bias": torch.full((4,), 60000.0, dtype=torch.float16)})
    assert load_flashface(path, num_heads=4).unet["out.2.bias"][0] == 60000.0


def test_four_channel_conv_in_is_refused(tmp_path, golden):
    path = write_variant(tmp_path, golden, **{"encoder.0.weight": golden["encoder.0.weight"][:, :4]})
    with pytest.raises(
        FlashFaceCheckpointError, match=r"encoder.0.weight .* \[32, 4, 3, 3\], expected \[C, 5, 3, 3\]"
    ):
        load_flashface(path)


def test_shape_mismatch_names_both_shapes(tmp_path, golden):
    key = "decoder.3.1.blocks.0.self_attn.self_attn_first.q.weight"
    path = write_variant(tmp_path, golden, **{key: torch.zeros(64, 32, dtype=torch.float16)})
    with pytest.raises(FlashFaceCheckpointError) as err:
        load_flashface(path)
    assert (
        f"1 shape mismatches: ref_attn.output_blocks.3.1.to_q.weight (official {key}): [64, 32], expected [64, 64]"
        in str(err.value)
    )


def test_missing_and_unknown_keys_are_listed(tmp_path, golden):
    extra = {"decoder.3.1.blocks.0.extra.weight": torch.zeros(1, dtype=torch.float16)}
    path = write_variant(tmp_path, golden, drop=("ref_decoder.11.0.layer1.2.bias",), **extra)
    with pytest.raises(FlashFaceCheckpointError) as err:
        load_flashface(path)
    assert "1 missing keys: ref_unet.output_blocks.11.0.in_layers.2.bias" in str(err.value)
    assert "1 unexpected keys: decoder.3.1.blocks.0.extra.weight" in str(err.value)


def test_non_float_tensors_and_bad_num_heads(tmp_path, golden):
    path = write_variant(tmp_path, golden, **{"head.2.bias": torch.zeros(4, dtype=torch.int32)})
    with pytest.raises(
        FlashFaceCheckpointError, match=r"not float32/float16/bfloat16: unet.out.2.bias \(official head.2.bias\)"
    ):
        load_flashface(path)
    with pytest.raises(FlashFaceCheckpointError, match="not divisible by num_heads=3"):
        split_official(golden, num_heads=3)


@pytest.mark.parametrize("name", ["weights.safetensors", "flashface.ckpt"])
def test_truncated_file(tmp_path, golden, name):
    path = tmp_path / name
    if name.endswith(".ckpt"):
        torch.save(dict(golden), path)
    else:
        save_file(dict(golden), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(FlashFaceCheckpointError, match="truncated or corrupt"):
        load_flashface(path)


class CodePayload:
    """Unpickling this runs a shell command: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_code_in_pickle_is_refused(tmp_path, writer):
    marker = tmp_path / "executed"
    path = tmp_path / "flashface.ckpt"
    payload = {"encoder.0.weight": torch.zeros(1), "hook": CodePayload(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(FlashFaceCheckpointError, match=r"refused to load: unpickling it would import (posix|os|nt)\.system") as err:
        load_flashface(path)
    assert "nothing from it was executed" in str(err.value)
    assert not marker.exists()


def test_pickled_module_names_its_class(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(torch.nn.Linear(2, 2), path)
    with pytest.raises(FlashFaceCheckpointError, match="would import torch.nn.modules.linear.Linear"):
        load_flashface(path)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "the file is empty"),
        (b"<html>404 Not Found</html>", r"not a torch checkpoint \(neither a zip archive nor a pickle; it starts with b'<html>40'\)"),
        (pickle.dumps([1, 2]), "a Python pickle that torch.load cannot read as a checkpoint"),
    ],
)
def test_files_that_are_no_torch_checkpoint(tmp_path, content, message):
    path = tmp_path / "flashface.ckpt"
    path.write_bytes(content)
    with pytest.raises(FlashFaceCheckpointError, match=message) as err:
        load_flashface(path)
    assert "may contain code" not in str(err.value) and "would import" not in str(err.value)


def test_safetensors_under_a_torch_name(tmp_path):
    path = tmp_path / "flashface.ckpt"
    save_file({"a": torch.zeros(2)}, path)
    with pytest.raises(FlashFaceCheckpointError, match="rename it to end in .safetensors"):
        load_flashface(path)


@pytest.mark.parametrize("name", ["missing.ckpt", "broken.safetensors", "flashface.onnx", "other.safetensors"])
def test_each_message_names_the_path_once(tmp_path, name):
    path = tmp_path / name
    if name != "missing.ckpt":
        path.write_bytes(b"\0" * 16) if name != "other.safetensors" else save_file({"x.y": torch.zeros(1)}, path)
    with pytest.raises(FlashFaceCheckpointError) as err:
        load_flashface(path)
    assert str(err.value).startswith(f"{path}: ") and str(err.value).count(str(path)) == 1


def test_unknown_file_type(tmp_path):
    path = tmp_path / "flashface.onnx"
    path.write_bytes(b"\0" * 16)
    with pytest.raises(FlashFaceCheckpointError, match="unknown file type '.onnx'"):
        load_flashface(path)
