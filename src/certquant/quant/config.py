"""Settings of quantization (noisy calibration, clipping) and of noise-aware fine-tuning: frozen, validated once."""

from __future__ import annotations

from dataclasses import dataclass

from certquant.quant.quantizers import ACT_CLIP_METHODS
from certquant.utils.config import check

ACT_CLIPS = ACT_CLIP_METHODS
WEIGHT_CLIPS = ("auto", "max", "mse")


@dataclass(frozen=True)
class QuantizeConfig:
    """How a policy becomes a quantized model: activation ranges calibrated on noisy images (SPEC 4)."""

    calibration_images: int = 512
    """Noisy training images used to calibrate activation ranges (noise at the run's sigma)."""
    act_clip: str = "auto"
    """Activation clipping: auto (MSE below 5 bits, else max), max, mse or percentile."""
    weight_clip: str = "auto"
    """Weight clipping: auto (MSE at 2 bits, else max |w| per channel), max or mse."""
    seed: int = 0
    """Seed of the calibration draw and its noise."""

    def __post_init__(self) -> None:
        check(self.calibration_images >= 1, f"calibration_images must be >= 1, got {self.calibration_images}")
        check(self.act_clip in ACT_CLIPS, f"act_clip must be one of {', '.join(ACT_CLIPS)}, got {self.act_clip!r}")
        check(
            self.weight_clip in WEIGHT_CLIPS,
            f"weight_clip must be one of {', '.join(WEIGHT_CLIPS)}, got {self.weight_clip!r}",
        )


@dataclass(frozen=True)
class FinetuneConfig:
    """Quantization-aware fine-tuning with the base model's Gaussian noise (straight-through gradients)."""

    epochs: int = 1
    """Epochs over the fine-tuning images (0: no fine-tuning)."""
    images: int = 10_000
    """Training images used (a seeded draw from the base model's training split; 0: all)."""
    lr: float = 0.01
    """SGD learning rate (momentum 0.9, cosine schedule)."""
    batch: int = 128
    """Minibatch size."""
    seed: int = 0
    """Seed of the image draw, the shuffling and the noise."""

    def __post_init__(self) -> None:
        check(
            self.epochs >= 0 and self.images >= 0,
            f"finetune epochs and images must be >= 0, got {self.epochs}, {self.images}",
        )
        check(self.lr > 0 and self.batch >= 1, f"finetune lr must be > 0 and batch >= 1, got {self.lr}, {self.batch}")
