"""CIFAR-style ResNets (He et al. 2016, Sec. 4.2): 6n+2 layers, 16/32/64 channels.

Option A (``resnet20/56/110``): when the shape changes, the shortcut subsamples by 2 and zero-pads the new channels
(no parameters). Option B (``resnet20b/56b/110b``): a strided 1x1 conv and batch norm there, the layout of the CIFAR
ResNets Cohen et al. released noise-trained checkpoints for (see ``certquant.deploy.importers``).
Any input channels and size work: the head is a global average pool.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from certquant.models.registry import register_model


class PadShortcut(nn.Module):
    """Option-A shortcut: x[:, :, ::2, ::2] padded with zero channels to ``out_channels``."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.pad = out_channels - in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::2, ::2]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))


def _shortcut(in_channels: int, out_channels: int, stride: int, option: str) -> nn.Module:
    """Identity when the shape is kept; else option A (pad, no parameters) or B (1x1 conv + BN)."""
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    if option == "A":
        return PadShortcut(in_channels, out_channels)
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels))


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, shortcut: str = "A"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.relu2 = nn.ReLU()
        self.shortcut = _shortcut(in_channels, out_channels, stride, shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int, in_channels: int, shortcut: str = "A"):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        layers, channels = [], 16
        for stage, width in enumerate((16, 32, 64)):
            for i in range(blocks):
                stride = 2 if stage > 0 and i == 0 else 1
                layers.append(BasicBlock(channels, width, stride, shortcut))
                channels = width
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def _register(depth: int, shortcut: str) -> None:
    suffix, what = (
        ("", "option-A shortcuts") if shortcut == "A" else ("b", "option-B (1x1 conv) shortcuts, Cohen et al.'s")
    )

    @register_model(f"resnet{depth}{suffix}", in_channels=3, input_size=32, description=f"CIFAR ResNet-{depth}, {what}")
    def constructor(num_classes: int, in_channels: int, input_size: int) -> nn.Module:
        return CifarResNet(depth, num_classes, in_channels, shortcut)


for _depth in (20, 56, 110):
    for _option in ("A", "B"):
        _register(_depth, _option)
