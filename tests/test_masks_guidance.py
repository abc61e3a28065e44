"""Face-position masks against the golden masks, and the guidance formulas."""

import json

import pytest
import torch
from safetensors.torch import load_file

from flashface_core import guidance
from flashface_core.masks import face_position_mask, latent_mask
from support.official_guidance import three_way_guidance, two_way_guidance


def test_official_square_matches_golden_masks(golden_dir):
    manifest = json.loads((golden_dir / "manifest.json").read_text())
    tensors = load_file(golden_dir / "cases.safetensors")
    checked = 0
    for case in manifest["cases"]:
        if "face_bbox" not in case:  # the stage cases run the plain U-Nets
            continue
        golden = tensors[case["prefix"] + "masks"]
        box = case["face_bbox"] if case["face_mask"] else [0, 0, 0, 0]
        h, w = golden.shape[-2:]
        pixel = face_position_mask(8 * h, 8 * w, box, "official_square")
        assert torch.equal(latent_mask(pixel, h, w)[0], golden[0]), case["name"]
        checked += 1
    assert checked == 6


def test_box_and_square_shapes():
    box = face_position_mask(10, 20, (0.1, 0.2, 0.3, 0.9), "box")
    assert box.sum() == 4 * 7 and box[2:9, 2:6].all()
    square = face_position_mask(10, 20, (0.1, 0.2, 0.3, 0.9), "official_square")
    assert square[2:9, 2:9].all() and square.sum() == 7 * 7  # side max(4, 7), from the top-left corner
    clipped = face_position_mask(10, 20, (0.1, 0.8, 0.6, 0.9), "official_square")
    assert clipped[8:10, 2:12].all() and clipped.sum() == 2 * 10  # side 10, clipped at the bottom
    assert face_position_mask(8, 8, (0, 0, 0, 0)).sum() == 0
    with pytest.raises(ValueError, match="x1 <= x2"):
        face_position_mask(8, 8, (0.5, 0, 0.2, 1))
    with pytest.raises(ValueError, match="unknown mask shape"):
        face_position_mask(8, 8, (0, 0, 1, 1), "circle")


def test_latent_mask_resamples_other_sizes():
    mask = face_position_mask(100, 60, (0.5, 0.5, 1, 1))[None]
    small = latent_mask(mask, 10, 6)
    assert small.shape == (1, 10, 6)
    assert small[0, 5:, 3:].all() and small.sum() == 15


def test_rescale_formula():
    g = torch.Generator().manual_seed(0)
    guided = torch.randn(2, 4, 8, 8, generator=g)
    ref = 3 * torch.randn(2, 4, 8, 8, generator=g)
    out = guidance.rescale_guidance(guided, ref, 0.5)
    for i in range(2):
        ratio = ref[i].std() / guided[i].std()
        assert torch.allclose(out[i], guided[i] * (0.5 * ratio + 0.5), atol=1e-6)
    assert torch.equal(guidance.rescale_guidance(guided, ref, 0.0), guided)


def test_cfg_plus_reference_term_is_the_official_three_way_guidance():
    g = torch.Generator().manual_seed(1)
    ref, c, u = torch.randn(3, 2, 4, 8, 8, generator=g, dtype=torch.float64)
    cfg_of_ref = u + 7.5 * (ref - u)
    split = guidance.add_reference_guidance(cfg_of_ref, ref, c, 7.5, 3.2)
    assert torch.allclose(split, u + 7.5 * (c - u) + 3.2 * (ref - c), atol=1e-12)
    rescaled = guidance.rescale_guidance(split, c, 0.5)
    assert torch.allclose(rescaled, three_way_guidance(ref, c, u, 7.5, 3.2, 0.5), atol=1e-12)
    # With no reference difference it is plain CFG.
    assert torch.allclose(guidance.add_reference_guidance(u + 7.5 * (c - u), c, c, 7.5, 3.2),
                          two_way_guidance(c, u, 7.5, 0.0), atol=1e-12)


def test_guidance_phase_follows_launch_rule():
    assert guidance.guidance_phase(759, 750, 3.2) == guidance.GuidancePhase(launched=False, three_way=False)
    assert guidance.guidance_phase(750, 750, 3.2) == guidance.GuidancePhase(launched=True, three_way=True)
    assert guidance.guidance_phase(100, 750, 0.0) == guidance.GuidancePhase(launched=True, three_way=False)
    # a continuous sampler's timestep is compared as it is, not rounded down
    assert guidance.guidance_phase(750.4, 750, 3.2) == guidance.GuidancePhase(launched=False, three_way=False)
    assert guidance.GuidanceSettings(3.2, 750.5, 0.5).phase(750.4).three_way


def test_eps_denoised_round_trip():
    x = torch.randn(2, 4, 8, 8)
    eps = torch.randn(2, 4, 8, 8)
    sigma = torch.tensor([3.0, 3.0])
    den = guidance.denoised_from_eps(x, eps, sigma)
    assert torch.allclose(guidance.eps_from_denoised(x, den, sigma), eps, atol=1e-5)
