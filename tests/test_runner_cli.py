"""The runner's command-line side that needs no ComfyUI: device choice and what it prints."""

import os

import pytest
import torch

from flashface_runner import __main__ as runner
from flashface_runner import comfyui


def test_cpu_is_added_only_without_an_accelerator_or_a_device_choice(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    if hasattr(torch, "xpu"):
        monkeypatch.setattr(torch.xpu, "is_available", lambda: False)
    assert comfyui.device_args(["--lowvram"]) == (["--lowvram", "--cpu"], True)
    assert comfyui.device_args(["--cpu"]) == (["--cpu"], False)
    assert comfyui.device_args(["--directml=1"]) == (["--directml=1"], False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert comfyui.device_args([]) == ([], False)


def test_shown_paths_are_relative(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert comfyui.shown_path(tmp_path / "output" / "a.png") == os.path.join("output", "a.png")
    assert not os.path.isabs(comfyui.shown_path("/usr/share"))


def test_a_missing_workflow_lists_the_shipped_ones(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(comfyui.PACK_DIR)
    assert runner.main(["workflows/flashface_portrait.json", "--comfyui", str(tmp_path)]) == 1
    message = capsys.readouterr().err
    assert "cannot read workflow workflows/flashface_portrait.json" in message
    assert '"workflows/FlashFace portrait.json"' in message
    assert message.count('"workflows/') == len(runner.shipped_workflows()) >= 10


@pytest.mark.parametrize("argv, message", [(["a.json", "--seeds"], "expected one argument"),
                                           (["a.json", "--no-such-option"], "unrecognized arguments"),
                                           (["a.json"], "--comfyui is required")])
def test_a_wrong_option_exits_1_not_the_missing_model_status(argv, message, monkeypatch, capsys):
    monkeypatch.delenv("COMFYUI_PATH", raising=False)
    monkeypatch.setattr(runner, "_default_comfyui", lambda: None)
    with pytest.raises(SystemExit) as exit_:
        runner.main(argv)
    assert exit_.value.code == runner.EXIT_STATUS["failed"] == 1
    assert message in capsys.readouterr().err
