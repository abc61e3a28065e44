"""FlashFace's own detector: RetinaFace with a ResNet-50 body, from `retinaface_resnet50.pth`.

Module names follow the official state dict (spec §3.1): `body` (ResNet-50 stem and layer1-4, as
torchvision names them), `fpn.output1-3/merge1/merge2`, `ssh1-3`, and
`class_head/bbox_head/landmark_head.{0,1,2}.conv1x1`. With 256 channels the official
LeakyReLU slope is 0, i.e. a plain ReLU.
"""
from __future__ import annotations

import logging
import os
import pickle
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import retinaface_decode
from .alignment import letterbox
from .types import Face, FaceModelNotFound, check_image, faces_from_arrays

log = logging.getLogger(__name__)

WEIGHTS_NAME = "retinaface_resnet50.pth"
DETECTION_SIZE = 640
CHANNELS = 256
ANCHORS_PER_CELL = 2


def conv_bn(in_channels: int, out_channels: int, kernel: int, relu: bool, stride: int = 1) -> nn.Sequential:
    layers = [nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, bias=False),
              nn.BatchNorm2d(out_channels)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


class Bottleneck(nn.Module):
    """ResNet-50 v1.5 block (stride on the 3x3 conv), torchvision's parameter names."""

    def __init__(self, in_channels: int, width: int, stride: int):
        super().__init__()
        out_channels = width * 4
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                            nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet50Body(nn.Module):
    """Stem and layer1-4; returns the layer2-4 feature maps (strides 8, 16, 32)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        in_channels = 64
        for index, (width, blocks, stride) in enumerate([(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)], 1):
            layer = [Bottleneck(in_channels, width, stride)] + [Bottleneck(width * 4, width, 1) for _ in range(blocks - 1)]
            setattr(self, f"layer{index}", nn.Sequential(*layer))
            in_channels = width * 4

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        c2 = self.layer2(self.layer1(x))
        c3 = self.layer3(c2)
        return [c2, c3, self.layer4(c3)]


class FPN(nn.Module):
    def __init__(self, in_channels: Sequence[int] = (512, 1024, 2048)):
        super().__init__()
        for index, channels in enumerate(in_channels, 1):
            setattr(self, f"output{index}", conv_bn(channels, CHANNELS, 1, relu=True))
        self.merge1 = conv_bn(CHANNELS, CHANNELS, 3, relu=True)
        self.merge2 = conv_bn(CHANNELS, CHANNELS, 3, relu=True)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        fine, middle, coarse = self.output1(features[0]), self.output2(features[1]), self.output3(features[2])
        middle = self.merge2(middle + F.interpolate(coarse, size=middle.shape[2:], mode="nearest"))
        fine = self.merge1(fine + F.interpolate(middle, size=fine.shape[2:], mode="nearest"))
        return [fine, middle, coarse]


class SSH(nn.Module):
    """Context module: 3x3, 5x5 and 7x7 receptive fields (stacked 3x3 convs), concatenated."""

    def __init__(self):
        super().__init__()
        self.conv3X3 = conv_bn(CHANNELS, CHANNELS // 2, 3, relu=False)
        self.conv5X5_1 = conv_bn(CHANNELS, CHANNELS // 4, 3, relu=True)
        self.conv5X5_2 = conv_bn(CHANNELS // 4, CHANNELS // 4, 3, relu=False)
        self.conv7X7_2 = conv_bn(CHANNELS // 4, CHANNELS // 4, 3, relu=True)
        self.conv7x7_3 = conv_bn(CHANNELS // 4, CHANNELS // 4, 3, relu=False)  # lower-case x, as in the weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch5 = self.conv5X5_1(x)
        branch7 = self.conv7x7_3(self.conv7X7_2(branch5))
        return F.relu(torch.cat([self.conv3X3(x), self.conv5X5_2(branch5), branch7], dim=1))


class Head(nn.Module):
    def __init__(self, values_per_anchor: int):
        super().__init__()
        self.values_per_anchor = values_per_anchor
        self.conv1x1 = nn.Conv2d(CHANNELS, ANCHORS_PER_CELL * values_per_anchor, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [B, A*V, H, W] -> [B, H*W*A, V]: anchors ordered row, column, anchor size.
        return self.conv1x1(x).permute(0, 2, 3, 1).reshape(x.shape[0], -1, self.values_per_anchor)


class RetinaFaceResNet50(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = ResNet50Body()
        self.fpn = FPN()
        self.ssh1, self.ssh2, self.ssh3 = SSH(), SSH(), SSH()
        self.class_head = nn.ModuleList(Head(2) for _ in range(3))
        self.bbox_head = nn.ModuleList(Head(4) for _ in range(3))
        self.landmark_head = nn.ModuleList(Head(10) for _ in range(3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """BGR-minus-mean [B, 3, H, W] -> face probability [B, N], box offsets [B, N, 4], landmark offsets [B, N, 10]."""
        levels = self.fpn(self.body(x))
        levels = [self.ssh1(levels[0]), self.ssh2(levels[1]), self.ssh3(levels[2])]
        logits = torch.cat([head(level) for head, level in zip(self.class_head, levels)], dim=1)
        loc = torch.cat([head(level) for head, level in zip(self.bbox_head, levels)], dim=1)
        landmarks = torch.cat([head(level) for head, level in zip(self.landmark_head, levels)], dim=1)
        return logits.softmax(-1)[..., 1], loc, landmarks


def find_weights(flashface_dirs: Sequence[str]) -> str:
    """`retinaface_resnet50.pth` directly in one of the folders or one level below."""
    for folder in flashface_dirs:
        if not os.path.isdir(folder):
            continue
        candidates = [os.path.join(folder, WEIGHTS_NAME)]
        candidates += sorted(os.path.join(folder, sub, WEIGHTS_NAME) for sub in os.listdir(folder))
        found = next((path for path in candidates if os.path.isfile(path)), None)
        if found:
            return found
    searched = ", ".join(flashface_dirs) or "(no folders given)"
    raise FaceModelNotFound(
        f"official face detector weights {WEIGHTS_NAME} not found; searched {searched} and their "
        f"subfolders. Download {WEIGHTS_NAME} from the FlashFace weights (HuggingFace "
        f"shilongz/FlashFace-SD1.5, cache/) into models/flashface/, or pick another detector."
    )


@lru_cache(maxsize=1)
def load_network(path: str, modified: float, device: str) -> RetinaFaceResNet50:
    """The network with weights from `path`; `modified` (mtime) invalidates the cache when the file changes."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, KeyError) as error:  # what a damaged file raises
        reason = (str(error).splitlines() or [type(error).__name__])[0]  # torch's messages run to several lines
        raise ValueError(
            f"{path} cannot be read as a torch checkpoint ({reason}); replace it with {WEIGHTS_NAME} from the "
            "FlashFace weights"
        ) from error
    network = RetinaFaceResNet50()
    missing, unexpected = network.load_state_dict(state, strict=False)
    missing = [key for key in missing if not key.endswith("num_batches_tracked")]  # absent in old torch saves
    if missing or unexpected:
        raise ValueError(
            f"{path} is not FlashFace's RetinaFace-ResNet50 checkpoint: {len(missing)} missing keys "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected keys (e.g. {unexpected[:3]}); "
            f"replace it with {WEIGHTS_NAME} from the FlashFace weights"
        )
    log.info("loaded official RetinaFace-ResNet50 from %s", path)
    return network.eval().requires_grad_(False).to(device)


class OfficialRetinaFace:
    """Detection as FlashFace's demo: PadToSquare(640), threshold 0.6, top 5000, NMS 0.4, keep 750."""

    name = "official (RetinaFace ResNet-50)"

    def __init__(self, network: RetinaFaceResNet50, score_threshold: float = 0.6, nms_iou: float = 0.4):
        self.network = network
        self.score_threshold = score_threshold
        self.nms_iou = nms_iou

    @classmethod
    def from_dirs(cls, flashface_dirs: Sequence[str], device: str = "cpu") -> "OfficialRetinaFace":
        path = find_weights(flashface_dirs)
        return cls(load_network(path, os.path.getmtime(path), str(device)))

    @torch.no_grad()
    def detect(self, image: np.ndarray) -> list[Face]:
        square, scale, offset = letterbox(check_image(image), DETECTION_SIZE)
        parameter = next(self.network.parameters())
        x = torch.from_numpy(retinaface_decode.rgb_to_network_input(square)).to(parameter)
        scores, loc, landmarks = (t[0].float().cpu().numpy() for t in self.network(x))
        boxes, scores, points = retinaface_decode.postprocess(
            loc, scores, landmarks, DETECTION_SIZE, DETECTION_SIZE, self.score_threshold, self.nms_iou,
            pre_nms_top=5000, post_nms_top=750)
        shift = np.array(offset, np.float32)
        return faces_from_arrays((boxes - np.tile(shift, 2)) / scale, scores, (points - shift) / scale)
