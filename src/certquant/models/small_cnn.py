"""Small CNNs for 28x28 inputs: the SPEC's small CNN and LeNet-5."""

from __future__ import annotations

from torch import nn

from certquant.models.registry import register_model


@register_model(
    "small-cnn", in_channels=1, input_size=28, description="Conv32-Pool-Conv64-Pool-FC128-FC (4.2M MACs at 28x28)"
)
def small_cnn(num_classes: int, in_channels: int, input_size: int) -> nn.Module:
    """Conv 3x3 (C->32), ReLU, MaxPool 2; Conv 3x3 (32->64), ReLU, MaxPool 2; Linear -> 128, ReLU; Linear -> classes."""
    side = input_size // 4
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * side * side, 128),
        nn.ReLU(),
        nn.Linear(128, num_classes),
    )


@register_model("lenet5", in_channels=1, input_size=28, description="LeNet-5 (LeCun et al. 1998), ReLU, max-pooling")
def lenet5(num_classes: int, in_channels: int, input_size: int) -> nn.Module:
    side = ((input_size + 4 - 4) // 2 - 4) // 2  # conv5 pad2, pool2, conv5, pool2
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * side * side, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, num_classes),
    )
