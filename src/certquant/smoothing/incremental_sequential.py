"""Sequential IRS: certify f' from f's cache, running f' on the regenerated noise only until the radii are decided.

IRS (``incremental``) runs f' on the first n_p cached estimation samples. Here n_p is a maximum: f' is evaluated pass
by pass and the counts are tested at the looks of ``sequential.look_schedule(n_p)`` with levels that sum to the
branch's level (``sequential.SequentialTest``), so the bound stays valid however the stopping went:

- zeta branch (f's pA_lower < gamma): zeta_k = CP upper bound of the disparity after n_d of n_k samples at level
  alpha_zeta_k, sum_k alpha_zeta_k = alpha_zeta; f''s bound is pA_lower - min_k zeta_k. With probability
  >= 1 - alpha, pA_lower <= pA (f's fixed-n certification), and with probability >= 1 - alpha_zeta every zeta_k >= D
  (union bound over the looks); so with probability >= 1 - (alpha + alpha_zeta) the bound is <= pA - D <= f''s
  probability of c_A (the argument of ``incremental.certify_incremental``, for either disparity). Radius r is
  decided when pA_lower - zeta_k > Phi(r / sigma) (certified), or given up when even the disparity's lower bound
  (level beta) or no further disagreement at all could not bring it above (the candidate is already worse than the
  full n_p evaluation would allow).
- direct branch (pA_lower >= gamma): f' is certified directly on the samples with a sequential Clopper-Pearson lower
  bound whose levels sum to the direct branch's level (alpha, as ``incremental`` has it; see ``direct_level``), for the class c_A chosen by f's independent selection samples.

The same f' outputs and the same n_d counting as ``incremental`` (``samples_to_evaluate``, ``count_disagreements``):
only where the sequential test stops earlier does it run f' on fewer samples.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from certquant.smoothing.cache_store import CacheStore
from certquant.smoothing.core import (
    ABSTAIN,
    CertificationCache,
    _check_image,
    _evaluating,
    classified_samples,
    model_device,
)
from certquant.smoothing.incremental import (
    BRANCH_DIRECT,
    BRANCH_ZETA,
    DEFAULT_ALPHA_ZETA,
    DEFAULT_DISPARITY,
    DEFAULT_GAMMA,
    count_disagreements,
    samples_to_evaluate,
    validate_incremental_args,
)
from certquant.smoothing.irs_runner import check_cached_image, irs_params
from certquant.smoothing.metrics import certify_metrics
from certquant.smoothing.runner import ImageWorker, Item, _options, certificate_record, mean_postfix, run_dataset
from certquant.smoothing.sequential import (
    DISPARITY,
    PROPORTION,
    SequentialSettings,
    SequentialTest,
    look_schedule,
    radius_of,
    run_test,
    validate_radii,
)
from certquant.utils.errors import CertquantError

Piece = tuple[
    int, torch.Tensor, torch.Tensor | None, int
]  # (start, classes, positions, num_classes): classified_samples


# Sequential IRS's default settings, chosen on 100 held-out validation images (benchmarks/bench_sequential.py
# --validation 100, W8A8 and W4A4 of the small CNN at sigma 0.25): among the settings whose certified accuracy equals
# fixed-n IRS's at n_p at every radius, the fewest quantized-model samples; that was n_p_max = 2 n_p (give --np twice
# the fixed-n n_p), a quarter of the level at n_p_max and curtailment at 0.2.
IRS_SEQUENTIAL = SequentialSettings(final_share=0.25, curtail=0.2)


def direct_level(alpha: float, alpha_zeta: float) -> float:
    """The level of the direct branch's bound: alpha, as fixed-n IRS (``incremental_certificate``) has it, so the
    mixture of the branches errs with probability <= alpha + alpha_zeta (``incremental.certify_incremental``). The one
    place sequential IRS takes it from: if IRS's split changes, change it here too."""
    return alpha


@dataclass
class SequentialIncrementalCertificate:
    """Sequential IRS of one image. ``pa_lower``: the lower bound on P[f'(x+e) = c_A] behind ``radius`` (level
    1 - (alpha + alpha_zeta)); ``n_used``: positions of the n_p prefix the test covered; ``evaluated``: samples f'
    ran on (fewer in the one-sided zeta branch); ``n_d``: disagreements (zeta branch) or c_A hits (direct) there."""

    label: int
    radius: float
    pa_lower: float
    c_a: int
    branch: str
    zeta: float  # zeta branch: the smallest disparity bound seen (pA_lower - pa_lower); direct: nan
    n_d: int
    n_used: int
    evaluated: int
    n_p_max: int
    radii: list[float] | None
    certified: list[bool]
    decided_at: list[int | None]
    stopped_by: str
    base_pa_lower: float
    seconds: float


def irs_test(
    cache: CertificationCache,
    n_p_max: int,
    radii: list[float] | None,
    gamma: float,
    alpha_zeta: float,
    settings: SequentialSettings,
) -> SequentialTest:
    """The branch's ``SequentialTest``: on disagreements (zeta branch) or on f''s c_A hits (direct branch)."""
    zeta = cache.pa_lower < gamma
    level = alpha_zeta if zeta else direct_level(cache.alpha, alpha_zeta)
    return SequentialTest(
        look_schedule(n_p_max, settings),
        level,
        settings.futility if settings.futility is not None else level,
        cache.sigma,
        radii,
        settings.final_share,
        settings.tolerance,
        kind=DISPARITY if zeta else PROPORTION,
        base=cache.pa_lower if zeta else 1.0,
        curtail=settings.curtail,
    )


def certify_incremental_sequential(
    approx_model: nn.Module,
    cache_entry: CertificationCache,
    x: torch.Tensor,
    sigma: float,
    n_p_max: int,
    radii: Sequence[float] | None = None,
    gamma: float = DEFAULT_GAMMA,
    alpha_zeta: float = DEFAULT_ALPHA_ZETA,
    disparity: str = DEFAULT_DISPARITY,
    settings: SequentialSettings = IRS_SEQUENTIAL,
    input_shape: Sequence[int] | None = None,
) -> SequentialIncrementalCertificate:
    """Sequential IRS of ``approx_model`` (f') at ``x`` from f's cache, on at most the first ``n_p_max`` cached noise
    samples: at ``radii`` (stop when each is decided) or in ACR mode (``radii`` None). A returned (c_A, R), and every
    certified radius, holds for f''s smoothed classifier with probability >= 1 - (alpha + alpha_zeta) (module
    docstring). Errors as ``incremental.certify_incremental``."""
    started = time.perf_counter()
    validate_incremental_args(n_p_max, gamma, alpha_zeta, disparity, cache_entry.alpha)
    radii_list = validate_radii(radii)
    if not math.isclose(float(sigma), cache_entry.sigma, rel_tol=0.0, abs_tol=1e-12):
        raise CertquantError(
            f"the cache was made at sigma {cache_entry.sigma}, not {sigma}: certify at the cache's sigma"
        )
    if n_p_max > cache_entry.n:
        raise CertquantError(
            f"n_p = {n_p_max} exceeds the {cache_entry.n} cached estimation samples: use n_p <= {cache_entry.n}"
        )
    _check_image(x, input_shape)
    device = model_device(approx_model)
    if device.type != cache_entry.device:
        raise CertquantError(
            f"the cache's noise was drawn on {cache_entry.device}, the model is on {device.type}: "
            f"run the approximate model on {cache_entry.device} to regenerate it"
        )
    with _evaluating(approx_model):
        return _sequential_irs(
            cache_entry,
            n_p_max,
            radii_list,
            gamma,
            alpha_zeta,
            disparity,
            settings,
            started,
            lambda only: classified_samples(
                approx_model,
                x.to(device),
                cache_entry.sigma,
                cache_entry.n,
                cache_entry.batch_size,
                cache_entry.seed,
                cache_entry.stage,
                limit=n_p_max,
                only=only,
            ),
        )


def replay_incremental_sequential(
    cache: CertificationCache,
    approx_predictions: torch.Tensor,
    n_p_max: int,
    radii: Sequence[float] | None = None,
    gamma: float = DEFAULT_GAMMA,
    alpha_zeta: float = DEFAULT_ALPHA_ZETA,
    disparity: str = DEFAULT_DISPARITY,
    settings: SequentialSettings = IRS_SEQUENTIAL,
) -> SequentialIncrementalCertificate:
    """What ``certify_incremental_sequential`` decides, from f''s stored predictions on the first (at least n_p_max)
    cached samples (the benchmark's shortcut); ``evaluated`` is then the samples the test needed, without the rest of
    the last forward pass."""
    validate_incremental_args(n_p_max, gamma, alpha_zeta, disparity, cache.alpha)
    if len(approx_predictions) < n_p_max:
        raise CertquantError(f"{len(approx_predictions)} predictions of f' for n_p = {n_p_max}: store at least n_p")
    preds = approx_predictions[:n_p_max].cpu()

    def samples(only: torch.Tensor | None) -> Iterator[Piece]:
        yield 0, preds if only is None else preds[only], None, 0

    return _sequential_irs(
        cache,
        n_p_max,
        validate_radii(radii),
        gamma,
        alpha_zeta,
        disparity,
        settings,
        time.perf_counter(),
        samples,
        replay=True,
    )


def _sequential_irs(
    cache: CertificationCache,
    n_p_max: int,
    radii: list[float] | None,
    gamma: float,
    alpha_zeta: float,
    disparity: str,
    settings: SequentialSettings,
    started: float,
    samples: Callable[[torch.Tensor | None], Iterator[Piece]],
    replay: bool = False,
) -> SequentialIncrementalCertificate:
    """The branch's sequential test fed with f''s classes from ``samples(only)`` (``classified_samples`` tuples)."""
    test = irs_test(cache, n_p_max, radii, gamma, alpha_zeta, settings)
    zeta_branch = test.kind == DISPARITY
    evaluated = samples_to_evaluate(cache, n_p_max, gamma, disparity) if zeta_branch else None
    base = cache.predictions[:n_p_max]
    needed = None
    if evaluated is not None:
        base = base[evaluated]
        marked = np.concatenate([[0], np.cumsum(evaluated.numpy())])
        needed = lambda n: int(marked[n])  # noqa: E731 - samples f' ran on before position n
    pieces = _pieces(samples(evaluated), base, cache.c_a, disparity if zeta_branch else None)
    successes, drawn, _ = run_test(test, pieces, needed)
    if replay:  # one piece of every stored prediction: count the samples the test needed
        drawn = needed(test.n_used) if needed is not None else test.n_used
    label = cache.c_a if test.q_lower > 0.5 else ABSTAIN
    return SequentialIncrementalCertificate(
        label=label,
        radius=radius_of(test.q_lower, cache.sigma) if label != ABSTAIN else 0.0,
        pa_lower=test.q_lower,
        c_a=cache.c_a,
        branch=BRANCH_ZETA if zeta_branch else BRANCH_DIRECT,
        zeta=cache.pa_lower - test.q_lower if zeta_branch else math.nan,
        n_d=successes,
        n_used=test.n_used,
        evaluated=drawn,
        n_p_max=n_p_max,
        radii=radii,
        certified=list(test.certified),
        decided_at=list(test.decided_at),
        stopped_by=test.stopped_by,
        base_pa_lower=cache.pa_lower,
        seconds=time.perf_counter() - started,
    )


def _pieces(
    samples: Iterator[Piece], base: torch.Tensor, c_a: int, disparity: str | None
) -> Iterator[tuple[int, Callable[[int], int]]]:
    """(length, count) pieces for ``run_test``: f''s disagreements with the cached f (``count_disagreements``), or
    its c_A hits (``disparity`` None, the direct branch)."""
    offset = 0
    for _, classes, _, _ in samples:
        approx = classes.cpu()
        paired = base[offset : offset + len(approx)]
        yield len(approx), _counter(approx, paired, c_a, disparity)
        offset += len(approx)


def _counter(approx: torch.Tensor, paired: torch.Tensor, c_a: int, disparity: str | None) -> Callable[[int], int]:
    """Successes among the first ``cut`` samples of a pass: c_A hits of f' (direct branch), or disagreements."""
    if disparity is None:
        hits = approx == c_a
        return lambda cut: int(hits[:cut].sum())
    return lambda cut: count_disagreements(paired[:cut], approx[:cut], c_a, disparity)


def certify_dataset_incremental_sequential(
    approx_model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    indices: Sequence[int],
    out_dir: str | Path,
    store: CacheStore,
    n_p_max: int,
    radii: Sequence[float] | None = None,
    gamma: float = DEFAULT_GAMMA,
    alpha_zeta: float = DEFAULT_ALPHA_ZETA,
    disparity: str = DEFAULT_DISPARITY,
    settings: SequentialSettings = IRS_SEQUENTIAL,
    identity: dict[str, Any] | None = None,
    arguments: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
    input_shape: Sequence[int] | None = None,
    progress: bool = True,
    channels_last: bool = False,
    resume: bool = False,
) -> dict[str, Any]:
    """``certify_incremental_sequential`` of ``images[i]`` for every i in ``indices`` against ``store``'s entries; the
    run folder of ``irs_runner.certify_dataset_incremental`` with per-image decisions; returns the summary."""
    radii_list = validate_radii(radii)
    params = irs_params(
        store, indices, n_p_max, gamma, alpha_zeta, disparity, channels_last, n_p_max=n_p_max, radii=radii_list
    )
    params.update(asdict(settings))
    worker = IncrementalSequentialImage(
        approx_model,
        store,
        params["sigma"],
        n_p_max,
        radii_list,
        gamma,
        alpha_zeta,
        disparity,
        settings,
        input_shape,
        channels_last,
    )

    def summarize(records: list[dict[str, Any]]) -> tuple[dict[str, Any], float]:
        count = max(1, len(records))
        evaluated = sum(int(r["evaluated"]) for r in records)
        block = {
            "n_p_max": n_p_max,
            "radii": radii_list,
            "gamma": float(gamma),
            "alpha_zeta": float(alpha_zeta),
            "disparity": disparity,
            "confidence": 1.0 - (params["alpha"] + float(alpha_zeta)),
            "approx_samples": evaluated,
            "approx_samples_per_image": evaluated / count,
            "branch_counts": {b: sum(1 for r in records if r["branch"] == b) for b in (BRANCH_ZETA, BRANCH_DIRECT)},
        }
        if radii_list:
            block["certified_accuracy_at_radii"] = {
                f"{radius:g}": sum(1 for r in records if r["correct"] and r["certified"][j]) / count
                for j, radius in enumerate(radii_list)
            }
        return {**certify_metrics(records), "incremental_sequential": block}, round(evaluated / count)

    return run_dataset(
        "certify-incremental-sequential",
        worker,
        (images, labels, indices),
        out_dir,
        params,
        summarize,
        postfix=mean_postfix("f' samples/image", "evaluated", 0),
        **_options(identity, arguments, provenance, progress, resume),
    )


@dataclass
class IncrementalSequentialImage(ImageWorker):
    """Worker side of ``certify_dataset_incremental_sequential``: sequential IRS of one ``(index, image, label)``."""

    store: CacheStore
    sigma: float
    n_p_max: int
    radii: list[float] | None
    gamma: float
    alpha_zeta: float
    disparity: str
    settings: SequentialSettings
    input_shape: Sequence[int] | None = None
    channels_last: bool = False

    def __call__(self, item: Item) -> dict[str, Any]:
        index, image, label = item
        check_cached_image(self.store, index, image)
        cert = certify_incremental_sequential(
            self.model,
            self.store.entry(index),
            image,
            self.sigma,
            self.n_p_max,
            self.radii,
            self.gamma,
            self.alpha_zeta,
            self.disparity,
            self.settings,
            self.input_shape,
        )
        fields = ("branch", "zeta", "n_d", "n_used", "evaluated", "certified", "decided_at", "stopped_by")
        record = certificate_record(index, label, cert, *fields, "base_pa_lower")
        record["zeta"] = None if math.isnan(cert.zeta) else cert.zeta  # the direct branch has none
        return record
