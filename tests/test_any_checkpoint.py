"""The difference rule and the shape check that tells which kind of U-Net a MODEL holds."""

import torch

from flashface_core.any_checkpoint import unet_mismatch, weight_on_checkpoint
from flashface_core.checkpoint import UNetLayout

SD15 = UNetLayout(320, (1, 2, 4, 4), 2, (0, 1, 2), 768).state_dict_shapes(in_channels=4)


def test_rule_and_dtype():
    generator = torch.Generator().manual_seed(0)
    flashface, base, delta = (torch.randn(3, 5, generator=generator) for _ in range(3))
    user = (base + delta).half()
    out = weight_on_checkpoint(flashface, user, base.half(), 0.5)
    assert out.dtype == torch.float16
    expected = flashface + 0.5 * (user.float() - base.half().float())
    assert torch.equal(out, expected.half())
    assert torch.equal(weight_on_checkpoint(flashface, base, base, 1.0), flashface)
    assert weight_on_checkpoint(flashface, flashface, base, 0.0) is not flashface  # a new tensor


def test_sd15_fits():
    assert unet_mismatch(SD15, dict(SD15)) is None


def test_inpainting_model_is_named():
    inpainting = dict(SD15, **{"input_blocks.0.0.weight": (320, 9, 3, 3)})
    assert unet_mismatch(SD15, inpainting) == (
        f"input_blocks.0.0.weight is [320, 9, 3, 3] where SD1.5 has [320, 4, 3, 3] "
        f"(a 9-channel inpainting model?); 1 of {len(SD15)} weights differ")


def test_sd2_context_width_is_named():
    sd2 = UNetLayout(320, (1, 2, 4, 4), 2, (0, 1, 2), 1024).state_dict_shapes(in_channels=4)
    text = unet_mismatch(SD15, sd2)
    assert "text context 1024 wide, SD1.5's is 768: an SD2.x model?" in text
    assert text.startswith("input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight is [320, 1024]")


def test_sdxl_like_model_is_named():
    sdxl = UNetLayout(320, (1, 2, 4), 2, (1, 2), 2048).state_dict_shapes(in_channels=4)
    text = unet_mismatch(SD15, sdxl)
    assert "an SDXL model?" in text and text.startswith("input_blocks.1.1.norm.weight is missing")


def test_missing_keys_are_counted():
    partial = {k: v for k, v in SD15.items() if not k.startswith("out.")}
    assert unet_mismatch(SD15, partial) == f"out.0.weight is missing where SD1.5 has [320]; 4 of {len(SD15)} weights differ"
