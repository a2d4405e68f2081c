"""Statistical validity of CERTIFY on a linear classifier, whose smoothed probability and true radius are known:
P[f(x + e) = 1] = Phi((w.x + b) / (sigma ||w||)), true radius |w.x + b| / ||w||."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binom

from certquant.smoothing import certify, clopper_pearson_lower

ALPHA, N0, N, TRIALS = 0.1, 20, 200, 200  # a large alpha so a broken bound shows within a few hundred trials


def _exact_violation_probability(p1: float) -> float:
    """P[certificate wrong]: c_A = 1 and pA_lower > p1, or c_A = 0 and class 0 certified at all (pA_lower > 1/2)."""
    p_select_1 = binom.sf(N0 // 2, N0, p1)  # class 1 strictly more frequent among n0 (ties go to class 0)
    lower = np.array([clopper_pearson_lower(k, N, ALPHA) for k in range(N + 1)])
    pmf1, pmf0 = binom.pmf(np.arange(N + 1), N, p1), binom.pmf(np.arange(N + 1), N, 1 - p1)
    return p_select_1 * pmf1[lower > p1].sum() + (1 - p_select_1) * pmf0[lower > 0.5].sum()


@pytest.mark.slow
@pytest.mark.parametrize("p1", [0.6, 0.75, 0.9])
def test_certified_radius_exceeds_true_radius_at_most_alpha(linear_case, p1):
    case = linear_case(p1)
    violations = 0
    for seed in range(TRIALS):
        cert = certify(case.model, case.x, case.sigma, n0=N0, n=N, alpha=ALPHA, batch_size=N, seed=seed)
        if cert.label != -1 and (cert.label != 1 or cert.radius > case.true_radius + 1e-9):
            violations += 1
    q = _exact_violation_probability(p1)
    assert q <= ALPHA  # the guarantee itself, computed exactly for this n
    # the observed count is Binomial(TRIALS, q): bounded above by alpha (the guarantee) and consistent with q
    assert violations <= binom.ppf(1 - 1e-4, TRIALS, ALPHA)
    assert binom.ppf(1e-4, TRIALS, q) <= violations <= binom.ppf(1 - 1e-4, TRIALS, q)


def test_large_n_radius_close_to_true(linear_case):
    case = linear_case(0.8)
    certs = [
        certify(case.model, case.x, case.sigma, n0=100, n=100_000, alpha=0.001, batch_size=25_000, seed=s)
        for s in range(3)
    ]
    for cert in certs:
        assert cert.label == 1
        assert abs(cert.counts[1] / 100_000 - 0.8) < 5 * (0.8 * 0.2 / 100_000) ** 0.5
        assert cert.radius <= case.true_radius
    mean = sum(c.radius for c in certs) / len(certs)
    # pA_lower sits ~3 standard errors below pA at alpha = 0.001: about 1.6% below the true radius at n = 1e5
    assert abs(mean - case.true_radius) < 0.04 * case.true_radius
