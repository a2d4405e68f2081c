"""Top-1 accuracy of a base classifier on clean or Gaussian-noised inputs (seeded, so repeatable)."""

from __future__ import annotations

import torch
from torch import nn

from certquant.utils.errors import CertquantError


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' picks CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise CertquantError(f"unknown device '{device}': use auto, cpu or cuda") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise CertquantError("device 'cuda' requested but no GPU is available: use --device cpu")
    return resolved


@torch.inference_mode()
def accuracy(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    sigma: float = 0.0,
    batch_size: int = 500,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> float:
    """Fraction of ``images`` (+ N(0, sigma^2) noise when sigma > 0) that ``model`` classifies as ``labels``."""
    if sigma < 0:
        raise CertquantError(f"sigma must be >= 0, got {sigma}")
    device = torch.device(device)
    model = model.to(device).eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    correct = 0
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].to(device)
        if sigma > 0:
            x = x + sigma * torch.randn(x.shape, generator=generator, device=device)
        correct += (model(x).argmax(1).cpu() == labels[start : start + batch_size]).sum().item()
    return correct / max(1, len(images))
