"""The exact probability that IRS (SPEC §3) returns a wrong certificate for a pair of linear classifiers, computed by
enumerating every outcome of the counts it looks at (importable like ``linear_models``).

f(x) = [w.x + b > 0] and f'(x) = [w'.x + b' > 0] with ||w|| = ||w'|| and angle theta between w and w'. Under
e ~ N(0, sigma^2 I) the pair (f(x + e), f'(x + e)) takes its four values with probabilities given by the bivariate
normal with correlation cos(theta), so every count IRS uses is multinomial / binomial:

- selection: c_A = 1 when class 1 is strictly more frequent among the n0 selection samples (ties go to class 0,
  as ``argmax`` does);
- the first n_p estimation samples: counts (U, V, W, Z) of the cells {f = c_A, f' = c_A}, {f = c_A, f' != c_A},
  {f != c_A, f' = c_A} and neither; the other n - n_p: R ~ Binomial(n - n_p, P[f = c_A]);
- pA_lower = CP_lower(U + V + R, n, alpha); n_d = V + W (two-sided) or V (one-sided); n_a' = U + W;
- zeta branch (pA_lower < gamma): bound pA_lower - zeta(n_d, n_p); direct branch: CP_lower(n_a', n_p, beta).

The certificate is wrong when its bound exceeds 1/2 and P[f' = c_A] (for class 1: its radius exceeds the true radius
of f''s smoothed classifier; for class 0 while f''s smoothed class is 1: any certificate). For each (U, V, W) the
sum over R is a difference of binomial CDFs, since pA_lower grows with R.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.signal import fftconvolve
from scipy.stats import beta as beta_dist
from scipy.stats import binom, multivariate_normal, norm

ZetaRule = Callable[[np.ndarray, int], np.ndarray]  # (n_d values, n_p) -> zeta values


def cp_lower(k: np.ndarray, n: int, level: float) -> np.ndarray:
    """One-sided Clopper-Pearson lower bounds at 1 - level (SPEC §2), written here apart from the library's."""
    return np.where(k > 0, beta_dist.ppf(level, np.maximum(k, 1), n - k + 1), 0.0)


def cp_upper(k: np.ndarray, n: int, level: float) -> np.ndarray:
    """One-sided Clopper-Pearson upper bounds at 1 - level (SPEC §3's zeta)."""
    return np.where(k < n, beta_dist.ppf(1.0 - level, k + 1, np.maximum(n - k, 1)), 1.0)


def clopper_pearson_zeta(alpha_zeta: float) -> ZetaRule:
    """The library's zeta: one-sided Clopper-Pearson upper bound at level 1 - alpha_zeta (0.5: a median-like zeta
    with no real confidence)."""
    return lambda n_d, n_p: cp_upper(n_d, n_p, alpha_zeta)


def point_estimate_zeta(n_d: np.ndarray, n_p: int) -> np.ndarray:
    """zeta = n_d / n_p: no confidence at all."""
    return n_d / n_p


def cell_probabilities(p: float, p_prime: float, theta: float) -> tuple[float, float, float, float]:
    """(q11, q10, q01, q00): P[f = i, f' = j] for P[f = 1] = p, P[f' = 1] = p_prime, normals theta apart."""
    if theta == 0.0:
        q11 = min(p, p_prime)
    else:
        cov = [[1.0, np.cos(theta)], [np.cos(theta), 1.0]]
        q11 = float(multivariate_normal(mean=[0.0, 0.0], cov=cov).cdf([norm.ppf(p), norm.ppf(p_prime)]))
    return q11, p - q11, p_prime - q11, 1.0 - p - p_prime + q11


def pair_counts(n_p: int, steps: dict[tuple[int, int], float]) -> np.ndarray:
    """The joint pmf of (X, Y) = the sum of n_p i.i.d. steps, each (dx, dy) in {0, 1}^2 with the given probability:
    ``pmf[x, y]``, the n_p-fold convolution of the one-sample law (by squaring; FFT rounding ~1e-16)."""
    step = np.zeros((2, 2))
    for (dx, dy), q in steps.items():
        step[dx, dy] += q
    pmf, power, k = np.ones((1, 1)), step, n_p
    while k:
        if k & 1:
            pmf = fftconvolve(pmf, power)
        k >>= 1
        if k:
            power = fftconvolve(power, power)
    return np.clip(pmf, 0.0, None)


def violation_probability(
    p: float,
    p_prime: float,
    theta: float,
    *,
    gamma: float,
    n_p: int,
    n0: int,
    n: int,
    alpha: float,
    beta: float,
    zeta: ZetaRule,
    disparity: str,
) -> float:
    """P[IRS's certificate of f' is wrong] for f' whose smoothed class is 1 (p_prime > 1/2). ``beta``: the direct
    branch's level (the library uses alpha); ``zeta``: the rule turning n_d of n_p into the disparity bound.

    Each branch's error depends on two counts of the first n_p samples (and on R): the zeta branch on
    (S = U + V, n_d), the direct branch on (S, n_a' = U + W); the two probabilities add, as the branches are disjoint.
    """
    assert p_prime > 0.5
    q11, q10, q01, q00 = cell_probabilities(p, p_prime, theta)
    select_1 = float(binom.sf(n0 // 2, n0, p))  # class 1 strictly more frequent among n0 (ties go to class 0)
    lower_n = cp_lower(np.arange(n + 1), n, alpha)  # pA_lower by count
    k_gamma = int(np.searchsorted(lower_n, gamma, side="left"))  # smallest count with pA_lower >= gamma
    direct_n_p = cp_lower(np.arange(n_p + 1), n_p, beta)
    zetas = zeta(np.arange(n_p + 1), n_p)
    s = np.arange(n_p + 1)[:, None]  # S, the count of f = c_A among the first n_p
    total = 0.0
    for c_a, weight in ((1, select_1), (0, 1.0 - select_1)):
        # cells relative to c_A: both c_A (u), only f (v), only f' (w), neither (z)
        u, v, w, z = (q11, q10, q01, q00) if c_a == 1 else (q00, q01, q10, q11)
        threshold = max(0.5, u + w)  # a bound above max(1/2, P[f' = c_A]) is a wrong certificate
        rest = binom.cdf(np.arange(-1, n - n_p + 1), n - n_p, u + v)  # rest[j] = P[R <= j - 1]

        def below(bound: np.ndarray | int, rest: np.ndarray = rest) -> np.ndarray:  # P[S + R < bound], per S
            return rest[np.clip(bound - s, 0, n - n_p + 1)]

        # zeta branch: (S, n_d); wrong when k_min(n_d) <= S + R < k_gamma
        v_d = (
            {(1, 0): u, (1, 1): v, (0, 1): w, (0, 0): z}
            if disparity == "two-sided"
            else {(1, 0): u, (1, 1): v, (0, 0): w + z}
        )
        k_min = np.searchsorted(lower_n, threshold + zetas, side="right")[None, :]  # per n_d (columns)
        zeta_wrong = np.clip(below(k_gamma) - below(k_min), 0.0, None)
        # direct branch: (S, n_a'); wrong when S + R >= k_gamma and the direct bound exceeds the threshold
        direct_wrong = (direct_n_p > threshold)[None, :] * (1.0 - below(k_gamma))
        v_a = {(1, 1): u, (1, 0): v, (0, 1): w, (0, 0): z}
        total += weight * float(
            (pair_counts(n_p, v_d) * zeta_wrong).sum() + (pair_counts(n_p, v_a) * direct_wrong).sum()
        )
    return total
