"""The converted file format and the `python -m flashface_core.convert` CLI."""

import hashlib
import json
from dataclasses import asdict

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from flashface_core.checkpoint import FORMAT, FlashFaceCheckpointError, load_flashface
from flashface_core.convert import DTYPES, main, save_converted, sha256_of


@pytest.fixture(scope="module")
def golden_path(golden_dir):
    return golden_dir / "weights.safetensors"


@pytest.fixture(scope="module")
def golden_weights(golden_path):
    return load_flashface(golden_path, num_heads=4)


def assert_bit_identical_dicts(got, expected):
    assert got.keys() == expected.keys()
    for key, tensor in expected.items():
        assert got[key].dtype == tensor.dtype and torch.equal(got[key], tensor), key


def assert_bit_identical(got, expected):
    """Same FlashFaceWeights: keys in the same (canonical) order, dtypes and bits."""
    got, expected = got.converted_state_dict(), expected.converted_state_dict()
    assert list(got) == list(expected)
    assert_bit_identical_dicts(got, expected)


@pytest.mark.parametrize("dtype_name", DTYPES)
def test_round_trip_is_bit_identical(tmp_path, golden_path, golden_weights, dtype_name):
    dtype = DTYPES[dtype_name]
    path = tmp_path / "converted.safetensors"
    save_converted(golden_weights, path, "ab" * 32, dtype=dtype)
    loaded = load_flashface(path)
    assert loaded.layout == golden_weights.layout  # num_heads=4 comes back from the metadata
    assert_bit_identical(loaded, load_flashface(golden_path, dtype=dtype, num_heads=4))
    assert not list(tmp_path.glob("*.partial"))
    # A standard safetensors reader sees the same tensors and our metadata.
    assert_bit_identical_dicts(load_file(path), golden_weights.to(dtype).converted_state_dict())
    with safe_open(path, framework="pt") as file:
        metadata = file.metadata()
    assert metadata["format"] == FORMAT and metadata["format_version"] == "1"
    assert metadata["source_sha256"] == "ab" * 32
    assert json.loads(metadata["layout"]) == json.loads(json.dumps(asdict(golden_weights.layout)))


def test_mixed_dtypes_are_kept(tmp_path, golden_weights):
    mixed = golden_weights.to(torch.float16)
    mixed.unet = mixed.unet | {"out.2.bias": mixed.unet["out.2.bias"].float()}
    mixed.mask_conv_weight = mixed.mask_conv_weight.bfloat16()
    path = tmp_path / "mixed.safetensors"
    save_converted(mixed, path, None)
    assert_bit_identical_dicts(load_file(path), mixed.converted_state_dict())
    with safe_open(path, framework="pt") as file:
        assert "source_sha256" not in file.metadata()


def test_num_heads_override_and_reconversion(tmp_path, golden_weights):
    path = tmp_path / "converted.safetensors"
    save_converted(golden_weights, path, None)
    assert load_flashface(path, num_heads=8).layout.num_heads == 8
    again = tmp_path / "again.safetensors"
    save_converted(load_flashface(path), again, None, dtype=torch.float32)
    assert_bit_identical(load_flashface(again), golden_weights.to(torch.float32))


def test_cli_converts_and_prints_summary(tmp_path, golden_path, golden_weights, capsys):
    out = tmp_path / "flashface_sd15.safetensors"
    assert main([str(golden_path), str(out), "--dtype", "bf16", "--num-heads", "4"]) == 0
    printed = capsys.readouterr().out
    assert f"{golden_weights.num_parameters():,} (bf16)" in printed
    assert hashlib.sha256(out.read_bytes()).hexdigest() in printed
    with safe_open(out, framework="pt") as file:
        assert file.metadata()["source_sha256"] == hashlib.sha256(golden_path.read_bytes()).hexdigest()
    assert_bit_identical(load_flashface(out), golden_weights.to(torch.bfloat16))


def test_cli_reports_bad_input(tmp_path, capsys):
    path = tmp_path / "sd15.safetensors"
    save_file({"model.diffusion_model.out.2.bias": torch.zeros(4)}, path)
    assert main([str(path), str(tmp_path / "out.safetensors")]) == 1
    assert "looks like an SD1.5 checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(path), str(path)])


def test_newer_format_version_is_refused(tmp_path, golden_weights):
    path = tmp_path / "future.safetensors"
    tensors = {k: v.contiguous() for k, v in golden_weights.converted_state_dict().items()}
    save_file(tensors, path, metadata={"format": FORMAT, "format_version": "2"})
    with pytest.raises(FlashFaceCheckpointError, match="format version 2; this pack reads version 1"):
        load_flashface(path)


def test_converted_file_missing_a_group(tmp_path, golden_weights):
    path = tmp_path / "partial.safetensors"
    tensors = golden_weights.converted_state_dict()
    save_file({k: v.contiguous() for k, v in tensors.items() if not k.startswith("ref_attn.")}, path)
    with pytest.raises(FlashFaceCheckpointError, match=r"converted layout: missing key groups: ref_attn\.\*"):
        load_flashface(path)


def test_sha256_reads_in_chunks(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(bytes(range(256)) * 41)
    assert sha256_of(path, chunk_bytes=1000) == hashlib.sha256(path.read_bytes()).hexdigest()
