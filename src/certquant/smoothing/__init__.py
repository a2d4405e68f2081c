"""Randomized smoothing (Cohen et al. 2019): CERTIFY / PREDICT for one image, Clopper-Pearson bounds, dataset runs.

Noise is seeded per (image seed, stage, batch) in ``noise`` so IRS can regenerate any estimation sample exactly;
``certify(..., keep_cache=True)`` records what IRS needs (``CertificationCache``); ``certify_incremental`` (IRS, Ugare
et al. 2024) certifies an approximation of the model from it; ``cache_store`` keeps caches on disk next to a run.
"""

from certquant.smoothing.bounds import certified_radius, clopper_pearson_lower, clopper_pearson_upper
from certquant.smoothing.cache_store import CacheStore, CacheWriter
from certquant.smoothing.config import DISPARITIES
from certquant.smoothing.core import (
    ABSTAIN,
    Certificate,
    CertificationCache,
    certify,
    certify_many,
    model_device,
    predict,
    sample_counts,
    sample_counts_many,
    validate_smoothing_args,
)
from certquant.smoothing.incremental import (
    IncrementalCertificate,
    certify_incremental,
    disparity_bound,
    incremental_certificate,
    samples_to_evaluate,
)
from certquant.smoothing.irs_runner import certify_dataset_incremental
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
    "CacheStore",
    "CacheWriter",
    "Certificate",
    "CertificationCache",
    "DISPARITIES",
    "ESTIMATION",
    "IncrementalCertificate",
    "PREDICTION",
    "SELECTION",
    "average_certified_radius",
    "batch_seed",
    "certified_accuracy",
    "certified_radius",
    "certify",
    "certify_dataset",
    "certify_dataset_incremental",
    "certify_incremental",
    "certify_many",
    "certify_metrics",
    "clopper_pearson_lower",
    "clopper_pearson_upper",
    "disparity_bound",
    "image_seed",
    "incremental_certificate",
    "model_device",
    "noisy_batches",
    "predict",
    "predict_dataset",
    "predict_metrics",
    "radius_grid",
    "sample_counts",
    "sample_counts_many",
    "samples_to_evaluate",
    "validate_smoothing_args",
]
