"""Paired ACR estimators: a candidate f' (the quantized model) scored against the full-precision model f's cached
certification of every search image, on the same noise samples.

``prepare`` certifies f once per search image with n0 + n_fp samples and keeps the per-sample predictions (IRS's
cache, ``certify(..., keep_cache=True)``): c_A (f's top class), n_A (f's count of c_A among the n = n_fp estimation
samples) and f's class on every sample. A candidate runs only on the first m = n_p of those samples, regenerated
from their seeds. With A_j = 1[f(x + e_j) = c_A], B_j = 1[f'(x + e_j) = c_A],

    d1 = #{j <= m: f = c_A, f' != c_A},   d2 = #{j <= m: f != c_A, f' = c_A},   d1 - d2 = sum_{j <= m} (A_j - B_j),
    p'_hat = n_A / n - (d1 - d2) / m = mean_{j <= n} A_j - mean_{j <= m} A_j + mean_{j <= m} B_j,

an estimate of p' = P[f'(x + e) = c_A] (f's class: a candidate whose own top class differs has p' < 1/2 whenever f's
pA > 1/2 + disagreement, and abstains either way).

Bias: E[p'_hat] = pA - pA + p' = p': unbiased.
Variance: with D = B - A (per sample), the first m samples shared by both means,
    Var(p'_hat) = Var(D) (1/m - 1/n) + Var(B) / n,      Var(D) = P[A != B] - (p' - pA)^2,
against Var(B) / m from scratch with m samples: the candidate's sampling noise is replaced by the (small) variance of
its disagreement with f, plus f's own noise at n. Common to every candidate of a search, that last term does not
reorder candidates. (Derivation: Cov(mean_m D, mean_n A) = Cov(D, A) / n and Var(A) + 2 Cov(D, A) = Var(B) - Var(D).)

What the reward gets from p'_hat (each a registered estimator, ``search.estimator``):

- ``paired``: the radius CERTIFY would give at the search's own n_p, sigma * Phi^-1(CP_lower(p'_hat * n_p, n_p,
  alpha)), with the count p'_hat * n_p real-valued (the Beta quantile is continuous in it). Extrapolating to the final
  n (the throwaway prototype of issue 18) ranked worse: Phi^-1 is steep near pA ~ 1, where one disagreement in m moves
  the radius by about 0.1; at n_p the Clopper-Pearson bound saturates there (at most sigma * Phi^-1(alpha^(1/n_p))),
  as the search's from-scratch estimate does, with a smaller variance. Biased as any radius (concave transform of an
  unbiased p'_hat: Jensen), by the same shape for every candidate; to first order Var(r) ~ (dr/dp)^2 Var(p'_hat).
- ``paired-margin``: the disagreement itself, as the per-image term (p'_hat - 1/2)^+ on correct images: linear in
  d1 - d2, unbiased for (p' - 1/2) where p'_hat > 1/2, continuous at the abstain threshold; "ACR" is then a mean
  margin in probability units (the reward compares it with FP32's in the same units).

Cost per candidate and image: m forward samples (no selection samples: c_A is f's), against n0 + n_p from scratch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from certquant.search.evaluators import (
    ACREstimator,
    SearchSet,
    fp32_caches,
    register_estimator,
)
from certquant.smoothing import (
    ABSTAIN,
    certified_radius,
    clopper_pearson_lower,
    sample_counts,
)
from certquant.smoothing.core import _as_model_input, _evaluating, classify


@dataclass
class PairedEstimate:
    """p'_hat of one image and the counts behind it (see the module docstring)."""

    c_a: int
    p_hat: float  # n_A / n - (d1 - d2) / m, clipped to [0, 1]
    d1: int  # f = c_A, f' != c_A
    d2: int  # f != c_A, f' = c_A
    m: int
    n: int
    n_a: int


def paired_estimate(
    base_predictions: torch.Tensor, predictions: torch.Tensor, c_a: int, n_a: int, n: int
) -> PairedEstimate:
    """p'_hat from f's cached predictions of the first m samples, f''s predictions of the same m samples, f's c_A
    and n_A of its n estimation samples."""
    m = len(predictions)
    a = base_predictions[:m].long() == c_a
    b = predictions.long() == c_a
    d1, d2 = int((a & ~b).sum()), int((~a & b).sum())
    p_hat = min(1.0, max(0.0, n_a / n - (d1 - d2) / m))
    return PairedEstimate(c_a, p_hat, d1, d2, m, n, n_a)


class PairedEstimator(ACREstimator):
    """The shared part: f's caches (``prepare``) and p'_hat per image (``estimate``); subclasses map it to a term."""

    name = ""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.caches: list[Any] = []

    def prepare(self, fp_model: nn.Module, search: SearchSet) -> None:
        self.caches = fp32_caches(fp_model, search, self.sigma, self.certify_config, self.config.n_fp)

    def estimate(self, model: nn.Module, k: int, x: torch.Tensor) -> PairedEstimate:
        """p'_hat of search image ``k``: ``model`` on the first n_p of f's cached noise samples."""
        cache, m = self.caches[k], self.config.n_p
        x = _as_model_input(model, x)
        with _evaluating(model):
            _, predictions = sample_counts(
                model,
                x,
                cache.sigma,
                cache.n,
                cache.batch_size,
                cache.seed,
                cache.stage,
                keep_predictions=True,
                limit=m,
            )
        assert predictions is not None
        return paired_estimate(cache.predictions, predictions, cache.c_a, cache.n_a, cache.n)

    def estimate_many(self, model: nn.Module, search: SearchSet, indices: Sequence[int]) -> list[PairedEstimate]:
        """``estimate`` of every image in ``indices``, with the noise of several images packed into forward passes of
        at most ``max_forward`` samples (as the scratch estimator's ``certify_many``: a GPU is launch-bound under one
        small pass per image). The same noise samples, so the same estimates up to float effects of the batching."""
        m = self.config.n_p
        chunks: dict[int, list[torch.Tensor]] = {k: [] for k in indices}
        pending: list[torch.Tensor] = []
        owners: list[int] = []

        def flush() -> None:
            classes, _ = classify(model, torch.cat(pending))
            for owner, part in zip(owners, classes.split([len(p) for p in pending])):
                chunks[owner].append(part.cpu())
            pending.clear()
            owners.clear()

        with _evaluating(model):
            for k in indices:
                for batch in self.caches[k].noisy_batches(_as_model_input(model, search.images[k]), limit=m):
                    if pending and sum(len(p) for p in pending) + len(batch) > self.config.max_forward:
                        flush()
                    pending.append(batch)
                    owners.append(k)
            if pending:
                flush()
        return [
            paired_estimate(
                self.caches[k].predictions,
                torch.cat(chunks[k]),
                self.caches[k].c_a,
                self.caches[k].n_a,
                self.caches[k].n,
            )
            for k in indices
        ]

    def from_estimate(self, est: PairedEstimate) -> tuple[int, float]:
        """(c_A or ABSTAIN, the image's robustness term) from p'_hat."""
        raise NotImplementedError

    def certify_image(self, model: nn.Module, k: int, x: torch.Tensor, seed: int) -> tuple[int, float]:
        return self.from_estimate(self.estimate(model, k, x))

    def certify_indices(self, model: nn.Module, search: SearchSet, indices: Sequence[int]) -> list[tuple[int, float]]:
        return [self.from_estimate(est) for est in self.estimate_many(model, search, list(indices))]

    def score(self, model: nn.Module, search: SearchSet) -> dict[str, Any]:
        certificates = self.certify_indices(model, search, range(len(search.images)))
        return self.terms_of(certificates, search.labels.tolist())


@register_estimator
class PairedRadiusEstimator(PairedEstimator):
    """p'_hat turned into the radius CERTIFY would give at the search's n_p samples (level 1 - alpha)."""

    name = "paired"

    def from_estimate(self, est: PairedEstimate) -> tuple[int, float]:
        m = est.m
        pa_lower = clopper_pearson_lower(est.p_hat * m, m, self.certify_config.alpha) if est.p_hat > 0 else 0.0
        return (est.c_a, certified_radius(pa_lower, self.sigma)) if pa_lower > 0.5 else (ABSTAIN, 0.0)

    def max_radius(self) -> float:
        m = self.config.n_p
        return certified_radius(clopper_pearson_lower(m, m, self.certify_config.alpha), self.sigma)


@register_estimator
class PairedMarginEstimator(PairedEstimator):
    """The margin (p'_hat - 1/2)^+ as the image's robustness term: linear in the disagreement count d1 - d2."""

    name = "paired-margin"

    def from_estimate(self, est: PairedEstimate) -> tuple[int, float]:
        return (est.c_a, est.p_hat - 0.5) if est.p_hat > 0.5 else (ABSTAIN, 0.0)

    def max_radius(self) -> float:
        return 0.5
