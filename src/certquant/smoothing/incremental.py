"""Incremental randomized smoothing (IRS; Ugare, Singh, Misailovic et al., ICLR 2024), for one image.

Certify an approximation f' of a base classifier f (here: f quantized) by reusing f's certification instead of
certifying f' from scratch. Symbols are the paper's (SPEC §3):

    c_A, pA_lower  f's certificate at x (level 1 - alpha), read from the cache ``CertificationCache``
    n_p            how many of the cached estimation samples are reused: the first n_p, regenerated bit-identically
                   from their seeds through ``noise.noisy_batches`` (the generator certification itself used)
    n_d            disagreements of f' with f's cached predictions on those n_p samples
    zeta           one-sided Clopper-Pearson upper bound, level 1 - alpha_zeta, on the disparity of f and f'
    gamma          above this pA_lower, f' is certified directly with the n_p samples instead, at level 1 - alpha
                   (not the paper's 1 - (alpha + alpha_zeta): so the mixture of branches holds at 1 - (alpha +
                   alpha_zeta), see ``certify_incremental``)

``incremental_certificate`` is the algorithm (a pure function of the cache and f''s n_p predictions);
``certify_incremental`` regenerates the noise, runs only f' (with the one-sided disparity, only where it can matter:
``samples_to_evaluate``) and calls it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from certquant.smoothing.bounds import certified_radius, clopper_pearson_lower, clopper_pearson_upper
from certquant.smoothing.config import DISPARITIES, IRSConfig
from certquant.smoothing.core import (
    ABSTAIN,
    Certificate,
    CertificationCache,
    _check_image,
    _evaluating,
    model_device,
    sample_counts,
)
from certquant.utils.errors import CertquantError

TWO_SIDED, ONE_SIDED = DISPARITIES  # zeta bounds P[f != f'] (the paper), or P[f = c_A and f' != c_A] (never looser)
BRANCH_ZETA = "zeta"  # pA_lower < gamma: f' gets pA_lower - zeta
BRANCH_DIRECT = "direct"  # pA_lower >= gamma: f' is certified directly with the n_p samples
# the defaults are IRSConfig's (one-sided: chosen by the benchmark, benchmarks/results/irs.md)
DEFAULT_GAMMA, DEFAULT_ALPHA_ZETA, DEFAULT_DISPARITY = IRSConfig.gamma, IRSConfig.alpha_zeta, IRSConfig.disparity


@dataclass
class IncrementalCertificate(Certificate):
    """A ``Certificate`` of f' from IRS. ``pa_lower`` is the lower bound on P[f'(x+e) = c_A] behind ``radius``
    (pA_lower - zeta, or the direct bound), ``counts`` / ``n_a`` count f''s classes on the ``evaluated`` samples it
    ran on: all n_p, except in the one-sided zeta branch (only where f said c_A, see ``samples_to_evaluate``).
    The guarantee holds with probability >= 1 - (alpha + alpha_zeta), whichever branch is taken."""

    zeta: float = 1.0  # upper bound on the disparity (computed in both branches, used in the zeta branch)
    branch: str = ""  # BRANCH_ZETA or BRANCH_DIRECT
    n_p: int = 0
    n_d: int = 0  # disagreements counted by the chosen disparity
    disparity: str = DEFAULT_DISPARITY
    base_pa_lower: float = 0.0  # f's cached pA_lower
    evaluated: int = 0  # samples f' ran on (n_p, or fewer in the one-sided zeta branch)


def validate_incremental_args(n_p: int, gamma: float, alpha_zeta: float, disparity: str, alpha: float = 0.0) -> None:
    """One line for a bad n_p, gamma, alpha_zeta (alpha + alpha_zeta must stay below 1) or an unknown disparity:
    ``IRSConfig``'s rules, for callers that pass the numbers."""
    IRSConfig(n_p, gamma, alpha_zeta, disparity)
    if not alpha + alpha_zeta < 1.0:
        raise CertquantError(f"alpha_zeta must be in (0, 1) with alpha + alpha_zeta < 1 (e.g. 0.001), got {alpha_zeta}")


def count_disagreements(base: torch.Tensor, approx: torch.Tensor, c_a: int, disparity: str = DEFAULT_DISPARITY) -> int:
    """n_d over paired samples: f != f' (two-sided), or f = c_A and f' != c_A (one-sided)."""
    base, approx = base.long(), approx.long()
    if disparity == TWO_SIDED:
        return int((base != approx).sum())
    if disparity == ONE_SIDED:
        return int(((base == c_a) & (approx != c_a)).sum())
    raise CertquantError(f"unknown disparity '{disparity}': use {' or '.join(DISPARITIES)}")


def disparity_bound(n_d: int, n_p: int, alpha_zeta: float) -> float:
    """zeta = one-sided Clopper-Pearson upper bound at level 1 - alpha_zeta after n_d of n_p samples:
    ``beta.ppf(1 - alpha_zeta, n_d + 1, n_p - n_d)``, 1 when n_d = n_p. With n_d = 0: 1 - alpha_zeta^(1/n_p)."""
    return clopper_pearson_upper(n_d, n_p, alpha_zeta)


def samples_to_evaluate(
    cache: CertificationCache, n_p: int, gamma: float = DEFAULT_GAMMA, disparity: str = DEFAULT_DISPARITY
) -> torch.Tensor | None:
    """Which of the first n_p cached samples f' must run on (a boolean mask), or None for all of them.

    Only the one-sided zeta branch can skip samples: n_d counts {f = c_A and f' != c_A}, so a sample f did not
    classify as c_A adds nothing to n_d whatever f' says there, and f' runs only on the pA share of the samples
    where f said c_A. The noise of every sample is still regenerated, so the counted samples are the same ones."""
    if disparity != ONE_SIDED or cache.pa_lower >= gamma:
        return None
    mask = cache.predictions[:n_p].long() == cache.c_a
    return mask if bool(mask.any()) else None  # nothing to skip to: run f' everywhere (n_d = 0 either way)


def incremental_certificate(
    cache: CertificationCache,
    approx_predictions: torch.Tensor,
    num_classes: int,
    gamma: float = DEFAULT_GAMMA,
    alpha_zeta: float = DEFAULT_ALPHA_ZETA,
    disparity: str = DEFAULT_DISPARITY,
    evaluated: torch.Tensor | None = None,
) -> IncrementalCertificate:
    """THE IRS algorithm (SPEC §3), given f''s predictions on the first n_p cached estimation samples (or, with
    ``evaluated``, a boolean mask over those n_p from ``samples_to_evaluate``, on the samples it marks).

    if pA_lower < gamma:   zeta = CP upper bound (1 - alpha_zeta) on the disparity from n_d of n_p;
                           certify c_A with sigma * Phi^-1(pA_lower - zeta) if pA_lower - zeta > 1/2, else abstain
    else (>= gamma):       certify f' directly on the same n_p samples at level 1 - alpha (the base run's alpha),
                           selection class = the cached c_A
    """
    n_p = int(approx_predictions.numel() if evaluated is None else evaluated.numel())
    validate_incremental_args(n_p, gamma, alpha_zeta, disparity, cache.alpha)
    if n_p > cache.n:
        raise CertquantError(f"n_p = {n_p} exceeds the {cache.n} cached estimation samples: use n_p <= {cache.n}")
    c_a, pa_lower, sigma = cache.c_a, cache.pa_lower, cache.sigma
    base = cache.predictions[:n_p]
    if evaluated is not None:
        _check_evaluated(cache, evaluated, approx_predictions, gamma, disparity)
        base = base[evaluated]
    counts = torch.bincount(approx_predictions.long(), minlength=num_classes).tolist()
    n_a = int(counts[c_a]) if c_a < len(counts) else 0
    # n_d: disagreements of f' with the cached f on the same n_p samples (the union bound makes the reuse sound)
    n_d = count_disagreements(base, approx_predictions, c_a, disparity)
    zeta = disparity_bound(n_d, n_p, alpha_zeta)
    if pa_lower < gamma:
        branch, p_lower = BRANCH_ZETA, max(0.0, pa_lower - zeta)  # lower bound on P[f'(x+e) = c_A]
    else:
        # level 1 - alpha, not the paper's 1 - (alpha + alpha_zeta): the mixture then holds at 1 - (alpha + alpha_zeta)
        branch, p_lower = BRANCH_DIRECT, clopper_pearson_lower(n_a, n_p, cache.alpha)
    label = c_a if p_lower > 0.5 else ABSTAIN
    radius = certified_radius(p_lower, sigma) if label != ABSTAIN else 0.0
    return IncrementalCertificate(
        label=label,
        radius=radius,
        pa_lower=p_lower,
        counts=counts,
        seconds=0.0,
        c_a=c_a,
        n_a=n_a,
        seed=cache.seed,
        zeta=zeta,
        branch=branch,
        n_p=n_p,
        n_d=n_d,
        disparity=disparity,
        base_pa_lower=pa_lower,
        evaluated=int(approx_predictions.numel()),
    )


def _check_evaluated(
    cache: CertificationCache, evaluated: torch.Tensor, approx_predictions: torch.Tensor, gamma: float, disparity: str
) -> None:
    """A mask may only leave out samples that cannot count in n_d (see ``samples_to_evaluate``): refuse any other."""
    n_p = int(evaluated.numel())
    needed = samples_to_evaluate(cache, n_p, gamma, disparity)
    if needed is None or bool((needed & ~evaluated).any()):
        raise CertquantError(
            "f' skipped samples that count in the disparity: skip only where f did not say c_A, in "
            "the one-sided zeta branch (samples_to_evaluate)"
        )
    if int(evaluated.sum()) != int(approx_predictions.numel()):
        raise CertquantError(
            f"{int(approx_predictions.numel())} predictions of f' for {int(evaluated.sum())} "
            "evaluated samples: pass one prediction per marked sample"
        )


def certify_incremental(
    approx_model: nn.Module,
    cache_entry: CertificationCache,
    x: torch.Tensor,
    sigma: float,
    n_p: int,
    gamma: float = DEFAULT_GAMMA,
    alpha_zeta: float = DEFAULT_ALPHA_ZETA,
    disparity: str = DEFAULT_DISPARITY,
    input_shape: Sequence[int] | None = None,
) -> IncrementalCertificate:
    """IRS: certify ``approx_model`` (f') at ``x`` from the cache of f's certification at ``x``, running only f' on
    the first ``n_p`` cached noise samples. A returned (c_A, R) holds for f''s smoothed classifier with probability
    at least 1 - (alpha + alpha_zeta), alpha being the level f was certified at, for the mixture of both branches.

    Soundness. Fix the class c_A (chosen on f's n0 selection samples, independent of the n estimation samples; all
    probabilities below are given c_A). Let p = P[f(x+e) = c_A], p' = P[f'(x+e) = c_A] and D the disparity. On the
    estimation samples define three failure events:
      A = {pA_lower > p}       P[A] <= alpha       (Clopper-Pearson on f's n samples)
      Z = {zeta < D}           P[Z] <= alpha_zeta  (Clopper-Pearson on n_d ~ Binomial(n_p, D): the first n_p
                                                    samples are i.i.d. and the same for f and f', which is why
                                                    reusing them is fine)
      B = {p'_direct > p'}     P[B] <= alpha       (the direct branch's Clopper-Pearson lower bound at level
                                                    1 - alpha on f''s n_a of n_p, for the fixed c_A)
    Outside A and Z, pA_lower - zeta <= p - D <= p' for either disparity:
    - two-sided, D = P[f != f']: {f = c_A} is inside {f' = c_A} u {f != f'}, so p <= p' + D;
    - one-sided, D = P[f = c_A, f' != c_A]: {f = c_A} is the disjoint union of {f = c_A, f' = c_A} (inside
      {f' = c_A}) and {f = c_A, f' != c_A}, so p <= p' + D as well.
    A certificate is wrong only if its lower bound on p' exceeds p' (a bound <= p' that is > 1/2 makes c_A f''s
    smoothed prediction, and Cohen et al.'s theorem with p_B <= 1 - p_A gives the radius sigma * Phi^-1(bound)).
    The branch is chosen from pA_lower, computed on the same samples, so split on the (fixed, unknown) p:
    - p < gamma: the direct branch is taken only if pA_lower >= gamma > p, i.e. on A; the zeta branch errs only on
      A or Z. So P[wrong] <= P[A u Z] <= alpha + alpha_zeta.
    - p >= gamma: the zeta branch is taken only if pA_lower < gamma <= p, i.e. outside A, so it errs only on Z; the
      direct branch errs only on B. So P[wrong] <= P[Z u B] <= alpha_zeta + alpha.
    Either way P[wrong] <= alpha + alpha_zeta. The paper certifies the direct branch at 1 - (alpha + alpha_zeta),
    which gives alpha + 2 alpha_zeta in the second case (the union bound of SPEC §3); level 1 - alpha there makes
    the stated level exact without touching the zeta branch (the ACR this costs: ``benchmarks/results/irs-levels.md``).
    The one-sided bound is never looser: on the same samples its count {f = c_A, f' != c_A} is a subset of
    {f != f'}, so n_d(one) <= n_d(two), and the Clopper-Pearson upper bound grows with n_d, so zeta(one) <=
    zeta(two) and its radius is >= the two-sided one, sample by sample.

    Cost: in the one-sided zeta branch f' runs only on the samples f classified as c_A (``samples_to_evaluate``):
    the others cannot count in n_d, so n_d, zeta and the certificate are those of running f' on all n_p samples.

    Noise is regenerated on the device type the cache was made on (``cache_entry.device``); run ``approx_model``
    there. Errors (one line): unknown disparity, n_p above the cached samples, sigma other than the cache's, a
    model with fewer classes than the cache holds, an image that does not fit ``input_shape``.
    """
    started = time.perf_counter()
    validate_incremental_args(n_p, gamma, alpha_zeta, disparity, cache_entry.alpha)
    if not math.isclose(float(sigma), cache_entry.sigma, rel_tol=0.0, abs_tol=1e-12):
        raise CertquantError(
            f"the cache was made at sigma {cache_entry.sigma}, not {sigma}: certify at the cache's sigma "
            "or build a cache at this sigma"
        )
    if n_p > cache_entry.n:
        raise CertquantError(
            f"n_p = {n_p} exceeds the {cache_entry.n} cached estimation samples: use n_p <= "
            f"{cache_entry.n} or certify the base model with a larger n"
        )
    _check_image(x, input_shape)
    device = model_device(approx_model)
    if device.type != cache_entry.device:
        raise CertquantError(
            f"the cache's noise was drawn on {cache_entry.device}, the model is on {device.type}: "
            f"run the approximate model on {cache_entry.device} to regenerate it"
        )
    x = x.to(device)
    evaluated = samples_to_evaluate(cache_entry, n_p, gamma, disparity)
    with _evaluating(approx_model):
        # f' on the first n_p estimation samples (those that can count), regenerated bit-identically from the seeds
        counts, predictions = sample_counts(
            approx_model,
            x,
            cache_entry.sigma,
            cache_entry.n,
            cache_entry.batch_size,
            cache_entry.seed,
            cache_entry.stage,
            keep_predictions=True,
            limit=n_p,
            only=evaluated,
        )
    assert predictions is not None
    num_classes = int(counts.numel())
    largest = int(cache_entry.predictions[:n_p].max()) if n_p else 0
    if largest >= num_classes:
        raise CertquantError(
            f"the cache holds class {largest} but the model has {num_classes} classes: the cache was "
            "made with another model"
        )
    cert = incremental_certificate(cache_entry, predictions, num_classes, gamma, alpha_zeta, disparity, evaluated)
    cert.seconds = time.perf_counter() - started
    return cert
