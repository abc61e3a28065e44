"""Convolutions over [h; skip] where several rows share the skip: the skip half once per distinct skip."""

import torch.nn.functional as F


def first_shared_channel(h_channels, num_channels, num_groups):
    """The first channel of the first GroupNorm group that holds only skip channels: from there
    on, normalisation (and so the features) depend on the skip alone."""
    group = num_channels // num_groups
    return -(-h_channels // group) * group


def norm_act_conv_shared_skip(norm, act, conv, x, h_channels, first_rows, expand):
    """conv(act(norm(x))) for x = [h; skip] ([rows, C, H, W]), where rows with the same
    `expand` entry have equal skips: row `first_rows[expand[i]]` carries row i's skip. The
    convolution over skip-only GroupNorm groups runs on the distinct rows only; the result equals
    the plain composition up to float summation order."""
    shared_from = first_shared_channel(h_channels, norm.num_channels, norm.num_groups)
    features = act(norm(x))
    own = F.conv2d(features[:, :shared_from], conv.weight[:, :shared_from], conv.bias,
                   conv.stride, conv.padding, conv.dilation)
    if shared_from >= x.shape[1]:
        return own
    distinct = features[:, shared_from:].index_select(0, first_rows)
    shared = F.conv2d(distinct, conv.weight[:, shared_from:], None, conv.stride, conv.padding, conv.dilation)
    return own + shared.index_select(0, expand)
