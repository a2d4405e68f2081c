"""Randomized smoothing (Cohen et al. 2019): CERTIFY / PREDICT for one image, Clopper-Pearson bounds, dataset runs.

Noise is seeded per (image seed, stage, batch) in ``noise`` so IRS can regenerate any estimation sample exactly;
``certify(..., keep_cache=True)`` records what IRS needs (``CertificationCache``).
"""

from certquant.smoothing.bounds import certified_radius, clopper_pearson_lower, clopper_pearson_upper
from certquant.smoothing.core import (
    ABSTAIN,
    Certificate,
    CertificationCache,
    certify,
    model_device,
    predict,
    sample_counts,
    validate_smoothing_args,
)
from certquant.smoothing.metrics import (
    average_certified_radius,
    certified_accuracy,
    certify_metrics,
    predict_metrics,
    radius_grid,
)
from certquant.smoothing.noise import ESTIMATION, PREDICTION, SELECTION, batch_seed, image_seed, noisy_batches
from certquant.smoothing.runner import certify_dataset, predict_dataset

__all__ = [
    "ABSTAIN",
    "Certificate",
    "CertificationCache",
    "ESTIMATION",
    "PREDICTION",
    "SELECTION",
    "average_certified_radius",
    "batch_seed",
    "certified_accuracy",
    "certified_radius",
    "certify",
    "certify_dataset",
    "certify_metrics",
    "clopper_pearson_lower",
    "clopper_pearson_upper",
    "image_seed",
    "model_device",
    "noisy_batches",
    "predict",
    "predict_dataset",
    "predict_metrics",
    "radius_grid",
    "sample_counts",
    "validate_smoothing_args",
]
