"""Deterministic synthetic images for fast tests: 10 fixed class prototypes plus seeded pixel noise, 1x28x28."""

from __future__ import annotations

import torch

from certquant.data.registry import DatasetInfo, register_dataset

SIZES = {"train": 2000, "test": 500}
NUM_CLASSES = 10


def make_synthetic(count: int, seed: int, channels: int = 1, size: int = 28) -> tuple[torch.Tensor, torch.Tensor]:
    """Learnable images: each class is a smooth random prototype; samples add N(0, 0.15^2) and clip to [0, 1]."""
    proto_gen = torch.Generator().manual_seed(1234)
    coarse = torch.rand(NUM_CLASSES, channels, 7, 7, generator=proto_gen)
    prototypes = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, NUM_CLASSES, (count,), generator=gen)
    images = prototypes[labels] + 0.15 * torch.randn(count, channels, size, size, generator=gen)
    return images.clamp(0.0, 1.0), labels.to(torch.int64)


def load_synthetic(split: str, root=None) -> tuple[torch.Tensor, torch.Tensor]:
    return make_synthetic(SIZES[split], seed={"train": 0, "test": 1}[split])


register_dataset(
    DatasetInfo(
        name="synthetic",
        num_classes=NUM_CLASSES,
        in_channels=1,
        input_size=28,
        mean=(0.5,),
        std=(0.25,),
        loader=load_synthetic,
        fetcher=lambda: "generated in memory",
        description="deterministic random class prototypes plus noise (2000 train / 500 test), for tests",
    )
)
