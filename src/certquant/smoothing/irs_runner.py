"""Dataset-level IRS: certify an approximate model on the images of a base run's cache; resumable like CERTIFY.

The run folder has the layout of ``runner.certify_dataset`` (run.json, certificates.jsonl, summary.json, certify.tsv);
each record adds ``zeta``, ``n_d``, ``n_p``, ``branch``, ``base_pa_lower`` and ``evaluated`` (samples f' ran on), and
the summary adds an ``incremental`` block (n_p, gamma, alpha_zeta, disparity, mean zeta, branch counts, the share of
the n_p samples f' ran on, the base run's ACR on the same images).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from certquant.engine import Engine
from certquant.smoothing.cache_store import CacheStore, tensor_sha256
from certquant.smoothing.incremental import (
    BRANCH_DIRECT,
    BRANCH_ZETA,
    DEFAULT_ALPHA_ZETA,
    DEFAULT_DISPARITY,
    DEFAULT_GAMMA,
    certify_incremental,
    validate_incremental_args,
)
from certquant.smoothing.metrics import average_certified_radius, certify_metrics
from certquant.smoothing.runner import (
    CERTIFY_FILES,
    ImageWorker,
    Item,
    _options,
    certificate_record,
    run_dataset,
)
from certquant.utils.errors import CertquantError
from certquant.utils.io import read_jsonl


def certify_dataset_incremental(
    approx_model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    indices: Sequence[int],
    out_dir: str | Path,
    store: CacheStore,
    n_p: int,
    gamma: float = DEFAULT_GAMMA,
    alpha_zeta: float = DEFAULT_ALPHA_ZETA,
    disparity: str = DEFAULT_DISPARITY,
    identity: dict[str, Any] | None = None,
    arguments: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
    input_shape: Sequence[int] | None = None,
    progress: bool = True,
    channels_last: bool = False,
    base_run: str | Path | None = None,
    resume: bool = False,
    engine: Engine | None = None,
) -> dict[str, Any]:
    """IRS (``certify_incremental``) of ``images[i]`` for every i in ``indices`` against ``store``'s entries; write the
    run folder and return the summary. Each image's pixels must be those the cache was made for. With ``engine``
    the images run on its workers, each reading only its images' cache entries."""
    params = irs_params(store, indices, n_p, gamma, alpha_zeta, disparity, channels_last, n_p=n_p)
    worker = IncrementalImage(
        approx_model,
        store,
        params["sigma"],
        n_p,
        float(gamma),
        float(alpha_zeta),
        disparity,
        input_shape,
        channels_last,
    )
    return run_dataset(
        "certify-incremental",
        worker,
        (images, labels, indices),
        out_dir,
        params,
        lambda records: (
            {**certify_metrics(records), "incremental": incremental_summary(records, params, base_run)},
            n_p,
        ),
        **_options(identity, arguments, provenance, progress, resume, engine),
    )


@dataclass
class IncrementalImage(ImageWorker):
    """Worker side of ``certify_dataset_incremental``: IRS of one ``(index, image, label)`` item -> record. Holds the
    approximate model and the cache's index (key and records); an image's predictions file is read where it runs."""

    store: CacheStore
    sigma: float
    n_p: int
    gamma: float
    alpha_zeta: float
    disparity: str
    input_shape: Sequence[int] | None = None
    channels_last: bool = False

    def __call__(self, item: Item) -> dict[str, Any]:
        index, image, label = item
        check_cached_image(self.store, index, image)
        cert = certify_incremental(
            self.model,
            self.store.entry(index),
            image,
            self.sigma,
            self.n_p,
            self.gamma,
            self.alpha_zeta,
            self.disparity,
            input_shape=self.input_shape,
        )
        fields = ("n_a", "zeta", "n_d", "n_p", "branch", "base_pa_lower", "evaluated")
        return certificate_record(index, label, cert, *fields)


def irs_params(
    store: CacheStore,
    indices: Sequence[int],
    n_p: int,
    gamma: float,
    alpha_zeta: float,
    disparity: str,
    channels_last: bool,
    /,
    **variant: Any,
) -> dict[str, Any]:
    """Check IRS's arguments against the cache ``store`` (which must hold ``indices``); return the run's identity:
    the cache's CERTIFY arguments, ``variant`` (n_p, or sequential IRS's n_p_max and radii), IRS's arguments."""
    key = store.key
    validate_incremental_args(n_p, gamma, alpha_zeta, disparity, float(key["alpha"]))
    if n_p > int(key["n"]):
        raise CertquantError(f"n_p = {n_p} exceeds the {key['n']} cached estimation samples: use --np <= {key['n']}")
    store.require(indices)
    return {
        "sigma": float(key["sigma"]),
        "n0": int(key["n0"]),
        "n": int(key["n"]),
        "alpha": float(key["alpha"]),
        "batch_size": int(key["batch_size"]),
        "seed": int(key["seed"]),
        **variant,
        "gamma": float(gamma),
        "alpha_zeta": float(alpha_zeta),
        "disparity": disparity,
        "channels_last": channels_last,
        "base_checkpoint_sha256": key.get("checkpoint_sha256"),
        "base_model_sha256": key.get("model_sha256"),
    }


def check_cached_image(store: CacheStore, index: int, image: torch.Tensor) -> None:
    """Refuse an image whose pixels are not those the IRS cache was made for."""
    expected = store.image_sha256(index)
    if expected is not None and expected != tensor_sha256(image):
        raise CertquantError(
            f"test image {index} differs from the image the IRS cache was made for: use the base run's dataset"
        )


def incremental_summary(
    records: Sequence[dict[str, Any]], params: dict[str, Any], base_run: str | Path | None = None
) -> dict[str, Any]:
    """n_p, gamma, alpha_zeta, disparity, the confidence, mean zeta, branch counts and (when the base run's
    certificates are at hand) the base model's ACR on the same images."""
    count = max(1, len(records))
    out = {
        "n_p": params["n_p"],
        "gamma": params["gamma"],
        "alpha_zeta": params["alpha_zeta"],
        "disparity": params["disparity"],
        "confidence": 1.0 - (params["alpha"] + params["alpha_zeta"]),
        "mean_zeta": sum(float(r["zeta"]) for r in records) / count,
        "mean_zeta_zeta_branch": _mean([float(r["zeta"]) for r in records if r["branch"] == BRANCH_ZETA]),
        "mean_disagreement_rate": sum(r["n_d"] / r["n_p"] for r in records) / count,
        "branch_counts": {b: sum(1 for r in records if r["branch"] == b) for b in (BRANCH_ZETA, BRANCH_DIRECT)},
        "evaluated_fraction": sum(r.get("evaluated", r["n_p"]) for r in records)
        / max(1, sum(r["n_p"] for r in records)),
        "base_run": str(base_run) if base_run is not None else None,
    }
    if base_run is not None:
        base = {int(r["index"]): r for r in read_jsonl(Path(base_run) / CERTIFY_FILES["jsonl"])}
        same = [base[int(r["index"])] for r in records if int(r["index"]) in base]
        if len(same) == len(records) and records:
            out["base_acr"] = average_certified_radius(same)
            out["base_clean_accuracy"] = sum(1 for r in same if r["correct"]) / len(same)
    return out


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None
