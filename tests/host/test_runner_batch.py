"""`python -m flashface_runner --seeds` in this process with the random full-size models (64 px, 2 steps):
a batch gives the images of single runs with the same seeds, bit for bit, and runs FlashFace's
reference pass once per step for the whole batch (the reference store serves every further image).

Loads the full-size models (fp16, ~7 GB of RAM)."""

import gc
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flashface_runner import __main__ as runner

from support import model_files

REPO = Path(__file__).resolve().parents[2]
PORTRAIT = REPO / "workflows" / "FlashFace portrait.json"
STEPS = 2
SHRINK = ["--set", "15.width=64", "--set", "15.height=64", "--set", "17.width=64", "--set", "17.height=64",
          "--set", f"18.steps={STEPS}"]


@pytest.fixture
def run_cli(host, keys_tsv, tmp_path, monkeypatch, capsys):
    """main(argv + models, output folder, 64 px / 2 steps) -> (exit status, image paths, stderr), with
    fp16 weights as the servers of test_runner_servers use (`--fp16-unet`)."""
    import comfy.cli_args
    import comfy.model_management
    import folder_paths

    models = model_files.cached_models_dir(keys_tsv)
    monkeypatch.setattr(comfy.cli_args.args, "fp16_unet", True)
    monkeypatch.chdir(tmp_path)
    output_dir = folder_paths.get_output_directory()

    def run(*argv):
        status = runner.main([str(PORTRAIT), "--comfyui", str(Path(folder_paths.base_path)), "--models-dir",
                              str(models), "--output-dir", str(tmp_path / "output"), *SHRINK, *argv])
        out, err = capsys.readouterr()
        comfy.model_management.unload_all_models()  # each main() has its own executor: free the last one's models
        gc.collect()
        return status, [tmp_path / line for line in out.splitlines()], err

    yield run
    folder_paths.set_output_directory(output_dir)


@pytest.fixture
def reference_passes():
    """Counts calls of FlashFace's reference U-Net (a U-Net ending in nn.Identity, see end_reference_unet_at)."""
    counter = {"calls": 0}

    def count(module, args):
        if type(module).__name__ == "UNetModel" and isinstance(getattr(module, "out", None), torch.nn.Identity):
            counter["calls"] += 1

    handle = torch.nn.modules.module.register_module_forward_pre_hook(count)
    yield counter
    handle.remove()


def pixels(path):
    return np.asarray(Image.open(path))


def test_seed_batch_is_three_single_runs_with_one_reference_pass_per_step(run_cli, reference_passes):
    status, batch, err = run_cli("--seeds", "3-5")
    assert status == 0, err
    assert "3 jobs; --seeds sets #18 FlashFaceSampler.seed" in err
    assert reference_passes["calls"] == STEPS  # image 1 runs it at every step, images 2 and 3 reuse it
    assert len(batch) == 3 and "3 of 3 jobs saved their images" in err
    singles = []
    for seed in (3, 4, 5):
        before = reference_passes["calls"]
        status, [path], err = run_cli("--set", f"18.seed={seed}")
        assert status == 0, err
        assert reference_passes["calls"] - before == STEPS  # a fresh process state pays the pass
        singles.append(path)
    for seed, from_batch, single in zip((3, 4, 5), batch, singles):
        assert np.array_equal(pixels(from_batch), pixels(single)), seed
    assert not np.array_equal(pixels(batch[0]), pixels(batch[1]))  # the seeds differ


def test_ctrl_c_stops_the_batch_at_the_next_step(run_cli, monkeypatch):
    """The first Ctrl-C stops sampling at its next step (ComfyUI's interrupt) and ends the batch."""
    import comfy.model_management

    from flashface_runner import progress

    steps = []

    def ctrl_c_at_the_first_step(self, where, value, total):
        steps.append(value)
        if len(steps) == 1:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(progress.Progress, "step", ctrl_c_at_the_first_step)
    handler = signal.getsignal(signal.SIGINT)
    status, images, err = run_cli("--seeds", "7-9")
    assert status == 130 and images == [], err
    assert steps == [1]  # no further step, no further job
    assert "0 of 3 jobs saved their images" in err and err.rstrip().endswith("--seeds 7,8,9")
    assert not comfy.model_management.processing_interrupted()
    assert signal.getsignal(signal.SIGINT) is handler  # the runner's own handler is gone
