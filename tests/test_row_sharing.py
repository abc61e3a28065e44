"""The skip half of a decoder ResBlock's first convolution, computed once per distinct skip."""

import pytest
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from flashface_core.row_sharing import first_shared_channel, norm_act_conv_shared_skip


def test_first_shared_channel_is_the_first_skip_only_group():
    assert first_shared_channel(320, 640, 32) == 320  # SD1.5 output_blocks.10: groups align
    assert first_shared_channel(640, 960, 32) == 660  # output_blocks.9: group 22 mixes h and skip
    assert first_shared_channel(1280, 1920, 32) == 1320


# group boundary at the split, and inside a group (groups of 6 channels)
@pytest.mark.parametrize("h_channels,skip_channels", [(12, 12), (10, 14)])
def test_shared_skip_matches_plain_and_skips_work(h_channels, skip_channels):
    generator = torch.Generator().manual_seed(0)
    channels = h_channels + skip_channels
    norm, act = nn.GroupNorm(4, channels, eps=1e-6), nn.SiLU()
    conv = nn.Conv2d(channels, 16, 3, padding=1)
    with torch.no_grad():
        norm.weight.normal_(generator=generator)
        norm.bias.normal_(generator=generator)
    h = torch.randn(3, h_channels, 8, 8, generator=generator)
    skips = torch.randn(2, skip_channels, 8, 8, generator=generator)
    expand = torch.tensor([0, 0, 1])  # rows 0 and 1 share a skip (cond + refs, cond); row 2 has its own
    x = torch.cat([h, skips[expand]], dim=1)
    first_rows = torch.tensor([0, 2])

    with torch.no_grad():
        plain = conv(act(norm(x)))
        with FlopCounterMode(display=False) as shared_count:
            shared = norm_act_conv_shared_skip(norm, act, conv, x, h_channels, first_rows, expand)
        with FlopCounterMode(display=False) as plain_count:
            conv(act(norm(x)))

    assert (shared - plain).abs().max().item() < 1e-5
    shared_from = first_shared_channel(h_channels, channels, 4)
    per_channel_row = plain_count.get_total_flops() / (3 * channels)
    assert shared_count.get_total_flops() == per_channel_row * (3 * shared_from + 2 * (channels - shared_from))
