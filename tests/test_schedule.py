"""The official trailing grid, timestep rounding and DDIM rule against the golden runs."""

import json

import pytest
import torch
from safetensors.torch import load_file

from flashface_core import schedule
from support import official_schedule


@pytest.fixture(scope="module")
def golden_runs(golden_dir):
    manifest = json.loads((golden_dir / "manifest.json").read_text())
    return manifest["runs"], load_file(golden_dir / "cases.safetensors")


def test_trailing_grid_values():
    assert schedule.trailing_timesteps(4).tolist() == [999, 749, 499, 249]
    grid = schedule.trailing_timesteps(3)
    assert grid.tolist() == pytest.approx([999, 665.6666667, 332.3333333])
    with pytest.raises(ValueError, match="at least 1"):
        schedule.trailing_timesteps(0)


def test_sigma_grid_matches_golden(golden_runs):
    runs, tensors = golden_runs
    for run in runs:
        ours = official_schedule.vp_sigmas(run["steps"]).float()
        golden = tensors[run["prefix"] + "sigmas"]
        assert torch.allclose(ours, golden, atol=1e-7, rtol=0), (ours, golden)


def test_model_timesteps_match_golden(golden_runs):
    runs, _ = golden_runs
    log_sigmas = official_schedule.ve_log_sigmas(official_schedule.scaled_linear_alphas_cumprod())
    for run in runs:
        grid = official_schedule.t_to_sigma(schedule.trailing_timesteps(run["steps"]), log_sigmas)
        expected = [info["t_model"] for info in run["steps_info"]]
        assert schedule.model_timestep(grid, log_sigmas).tolist() == expected
        # the inverse is exact on the grid, fractional points included
        assert torch.allclose(schedule.sigma_to_t(grid, log_sigmas), schedule.trailing_timesteps(run["steps"]))


def test_ddim_step_reproduces_golden_trajectory(golden_runs):
    runs, tensors = golden_runs
    for run in runs:
        p = run["prefix"]
        sigmas_vp = tensors[p + "sigmas"].double()
        sigmas_ve = official_schedule.vp_to_ve_sigma(sigmas_vp)
        alphas = (1 - sigmas_vp**2) ** 0.5
        for k in range(run["steps"]):
            x_ve = tensors[f"{p}step{k}.xt"].double() / alphas[k]
            x0 = tensors[f"{p}step{k}.x0"].double()
            nxt = schedule.ddim_step(x_ve, x0, sigmas_ve[k], sigmas_ve[k + 1]) * alphas[k + 1]
            golden = tensors[f"{p}step{k + 1}.xt"] if k + 1 < run["steps"] else tensors[p + "x0_final"]
            tol = 1e-5 * golden.abs().max().item()
            assert (nxt.float() - golden).abs().max().item() <= tol, (run["name"], k)


def test_noise_is_the_start_point(golden_runs):
    runs, tensors = golden_runs
    for run in runs:
        assert torch.equal(tensors[run["prefix"] + "noise"], tensors[run["prefix"] + "step0.xt"])
