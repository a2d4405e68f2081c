"""How often two base classifiers (e.g. the fake-quantized PyTorch model and its exported ONNX file) predict the same
class on the same noisy inputs: the share that decides whether the exported model inherits the certificate."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from certquant.smoothing.bounds import clopper_pearson_lower, clopper_pearson_upper
from certquant.smoothing.core import classify
from certquant.smoothing.noise import ESTIMATION, image_seed, noisy_batches
from certquant.utils.errors import CertquantError


def prediction_agreement(
    model_a: nn.Module,
    model_b: nn.Module,
    images: torch.Tensor,
    indices: Sequence[int],
    sigma: float,
    samples: int,
    seed: int = 0,
    batch_size: int = 1000,
) -> dict:
    """Share of ``samples`` noisy inputs (spread evenly over ``images[indices]``) on which ``model_a`` and ``model_b``
    predict the same class. The noise of image i is the first samples of its certification's estimation stage
    (seed ``image_seed(seed, i)``), so the figure is about the inputs certification feeds both models.
    Returns agree, total, share and its 95% Clopper-Pearson interval."""
    if samples < 1 or not len(indices):
        raise CertquantError(f"agreement needs samples >= 1 and at least one image, got {samples} and {len(indices)}")
    per_image = [samples // len(indices) + (1 if k < samples % len(indices) else 0) for k in range(len(indices))]
    agree = total = 0
    model_a.eval()
    model_b.eval()
    with torch.inference_mode():
        for index, count in zip(indices, per_image):
            if count == 0:
                continue
            x = images[index].float()
            for batch in noisy_batches(x, sigma, image_seed(seed, index), ESTIMATION, count, batch_size):
                a, _ = classify(model_a, batch)
                b, _ = classify(model_b, batch)
                agree += int((a.cpu() == b.cpu()).sum())
                total += len(batch)
    tail = 0.025
    return {
        "agree": agree,
        "total": total,
        "share": agree / total,
        "ci95": [clopper_pearson_lower(agree, total, tail), clopper_pearson_upper(agree, total, tail)],
        "images": len(indices),
        "sigma": float(sigma),
        "seed": seed,
    }
