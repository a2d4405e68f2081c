"""Clopper-Pearson bounds against exact values: closed forms, and values computed independently with mpmath by
bisection on the exact binomial tail (50 digits)."""

from __future__ import annotations

import math

import pytest

from certquant.smoothing import certified_radius, clopper_pearson_lower, clopper_pearson_upper
from certquant.utils.errors import CertquantError

# (k, n, alpha, lower, upper): lower solves P[Bin(n, p) >= k] = alpha, upper solves P[Bin(n, p) <= k] = alpha
REFERENCE = [
    (50, 100, 0.05, 0.41362171463091176, 0.58637828536908824),
    (90, 100, 0.001, 0.77532988016777493, 0.96945809471124566),
    (7, 20, 0.01, 0.12917878429650656, 0.63093915582511812),
    (990, 1000, 0.001, 0.97603618715531137, 0.99703049906950414),
    (1, 10, 0.1, 0.010480741793785608, 0.33684772330672475),
]


@pytest.mark.parametrize("k,n,alpha,lower,upper", REFERENCE)
def test_matches_independent_reference(k, n, alpha, lower, upper):
    assert math.isclose(clopper_pearson_lower(k, n, alpha), lower, rel_tol=1e-12)
    assert math.isclose(clopper_pearson_upper(k, n, alpha), upper, rel_tol=1e-12)


@pytest.mark.parametrize("n", [1, 10, 100, 10_000])
@pytest.mark.parametrize("alpha", [0.001, 0.05])
def test_closed_forms(n, alpha):
    # k = n: P[all n successes] = p^n = alpha;  k = 0: (1 - p)^n = alpha
    assert math.isclose(clopper_pearson_lower(n, n, alpha), alpha ** (1 / n), rel_tol=1e-12)
    assert math.isclose(clopper_pearson_upper(0, n, alpha), 1 - alpha ** (1 / n), rel_tol=1e-10)
    # k = 1: P[X >= 1] = 1 - (1 - p)^n = alpha;  k = n - 1: P[X <= n - 1] = 1 - p^n = alpha
    assert math.isclose(clopper_pearson_lower(1, n, alpha), 1 - (1 - alpha) ** (1 / n), rel_tol=1e-9)
    if n > 1:
        assert math.isclose(clopper_pearson_upper(n - 1, n, alpha), (1 - alpha) ** (1 / n), rel_tol=1e-12)


def test_edges_and_spec_floor():
    assert clopper_pearson_lower(0, 50, 0.01) == 0.0
    assert clopper_pearson_upper(50, 50, 0.01) == 1.0
    # SPEC §3: zero disagreements leave zeta >= 1 - alpha^(1/n_p): 0.0069 at n_p = 1000, 0.067 at n_p = 100
    assert round(clopper_pearson_upper(0, 1000, 0.001), 4) == 0.0069
    assert round(clopper_pearson_upper(0, 100, 0.001), 3) == 0.067


def test_radius():
    assert certified_radius(0.5, 0.25) == 0.0 and certified_radius(0.3, 1.0) == 0.0
    assert math.isclose(certified_radius(0.8413447460685429, 0.5), 0.5, rel_tol=1e-9)  # Phi(1) = 0.8413...


@pytest.mark.parametrize("args", [(5, 4, 0.1), (-1, 4, 0.1), (1, 0, 0.1), (1, 4, 0.0), (1, 4, 1.0)])
def test_bad_arguments(args):
    with pytest.raises(CertquantError):
        clopper_pearson_lower(*args)
    with pytest.raises(CertquantError):
        clopper_pearson_upper(*args)
