"""One-sided Clopper-Pearson bounds on a binomial proportion, and the certified L2 radius (Cohen et al. 2019)."""

from __future__ import annotations

from scipy.stats import beta, norm

from certquant.utils.errors import CertquantError


def _check(k: float, n: int, alpha: float) -> None:
    if n < 1 or not 0 <= k <= n:
        raise CertquantError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    if not 0.0 < alpha < 1.0:
        raise CertquantError(f"alpha must be in (0, 1), got {alpha}")


def clopper_pearson_lower(k: float, n: int, alpha: float) -> float:
    """Lower bound p_low with P[p >= p_low] >= 1 - alpha after k successes in n trials: Beta(k, n-k+1) quantile at alpha.
    (A real-valued k, e.g. a predicted count, interpolates: the Beta quantile is continuous in k.)

    Used for pA_lower, the lower confidence bound on the top-class probability (0 when k = 0).
    """
    _check(k, n, alpha)
    return 0.0 if k == 0 else float(beta.ppf(alpha, k, n - k + 1))


def clopper_pearson_upper(k: int, n: int, alpha: float) -> float:
    """Upper bound p_up with P[p <= p_up] >= 1 - alpha: Beta(k+1, n-k) quantile at 1 - alpha (1 when k = n).

    Used by IRS for zeta, the upper bound on the disagreement probability of f and f'.
    """
    _check(k, n, alpha)
    return 1.0 if k == n else float(beta.ppf(1.0 - alpha, k + 1, n - k))


def certified_radius(pa_lower: float, sigma: float) -> float:
    """R = sigma * Phi^-1(pA_lower) when pA_lower > 1/2 (certified), else 0 (abstain)."""
    return float(sigma * norm.ppf(pa_lower)) if pa_lower > 0.5 else 0.0
