"""The difference rule and the shape check that tells which kind of U-Net a MODEL holds."""

import dataclasses

import torch

from flashface_core.any_checkpoint import add_flashface_difference_, unet_mismatch
from support.layouts import SD15_LAYOUT

SD15 = SD15_LAYOUT.state_dict_shapes(in_channels=4)


def test_rule_in_place_on_the_working_copy():
    generator = torch.Generator().manual_seed(0)
    flashface, base, delta = (torch.randn(3, 5, generator=generator).half() for _ in range(3))
    working = (base.float() + delta.float())
    expected = flashface.float() + 0.5 * (working - base.float())
    out = add_flashface_difference_(working, flashface, base, 0.5)
    assert out is working and out.dtype == torch.float32
    assert torch.allclose(out, expected, rtol=0, atol=1e-6)
    same = base.float()
    assert torch.equal(add_flashface_difference_(same, flashface, base, 1.0), flashface.float())


def test_sd15_fits():
    assert unet_mismatch(SD15, dict(SD15)) is None


def test_inpainting_model_is_named():
    inpainting = dict(SD15, **{"input_blocks.0.0.weight": (320, 9, 3, 3)})
    assert unet_mismatch(SD15, inpainting) == (
        f"input_blocks.0.0.weight is [320, 9, 3, 3] where SD1.5 has [320, 4, 3, 3] "
        f"(a 9-channel inpainting model?); 1 of {len(SD15)} weights differ")


def test_sd2_context_width_is_named():
    sd2 = dataclasses.replace(SD15_LAYOUT, context_dim=1024).state_dict_shapes(in_channels=4)
    text = unet_mismatch(SD15, sd2)
    assert "text context 1024 wide, SD1.5's is 768: an SD2.x model?" in text
    assert text.startswith("input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight is [320, 1024]")


def test_sdxl_like_model_is_named():
    sdxl = dataclasses.replace(SD15_LAYOUT, channel_mult=(1, 2, 4), attention_levels=(1, 2), context_dim=2048)
    sdxl = sdxl.state_dict_shapes(in_channels=4)
    text = unet_mismatch(SD15, sdxl)
    assert "an SDXL model?" in text and text.startswith("input_blocks.1.1.norm.weight is missing")


def test_missing_keys_are_counted():
    partial = {k: v for k, v in SD15.items() if not k.startswith("out.")}
    assert unet_mismatch(SD15, partial) == f"out.0.weight is missing where SD1.5 has [320]; 4 of {len(SD15)} weights differ"
