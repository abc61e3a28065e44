"""Region masks keep their meaning at every resolution the U-Net sees."""

import pytest
import torch

from flashface_core.regions import region_tokens, resample_region

# latent 64x64 -> block grids of SD1.5's reference blocks (and a latent not divisible by 8)
GRIDS = [(64, 64), (32, 32), (16, 16), (8, 8), (13, 7)]


@pytest.mark.parametrize("source", [(512, 512), (64, 64), (100, 37), (5, 9)])
def test_complementary_regions_stay_complementary(source):
    g = torch.Generator().manual_seed(0)
    left = torch.rand(2, *source, generator=g, dtype=torch.float64)
    right = 1 - left
    for height, width in GRIDS:
        total = resample_region(left, height, width) + resample_region(right, height, width)
        assert torch.allclose(total, torch.ones_like(total), atol=1e-12), (source, height, width)


def test_area_downsampling_of_aligned_halves_is_exact():
    image = torch.zeros(1, 512, 512)
    image[:, :, :256] = 1
    latent = torch.zeros(1, 64, 64)
    latent[:, :, :32] = 1
    for height, width in GRIDS[:4]:
        assert torch.equal(resample_region(image, height, width), resample_region(latent, height, width))
        assert set(resample_region(image, height, width).unique().tolist()) == {0.0, 1.0}


def test_tokens_are_row_major_like_comfyuis_blocks():
    mask = torch.zeros(1, 1, 4, 6)
    mask[0, 0, 1, 2] = 1
    tokens = region_tokens(mask, 4, 6)
    assert tokens.shape == (1, 24) and tokens[0].nonzero().flatten().tolist() == [1 * 6 + 2]
