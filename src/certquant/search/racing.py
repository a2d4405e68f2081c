"""Racing: score a candidate batch of search images by batch and stop once it cannot beat the incumbent.

Most candidates of a search are clearly worse than the best so far; certifying all K search images of such a
candidate buys nothing. ARQ's reward is a mean over the K search images of per-image terms:

    R = lambda * [(ACR_q - ACR_fp32) + w (clean_q - clean_fp32)] = lambda * (mean_k q_k - mean_k q_fp,k),
    q_k = r_k * 1[correct_k] + w * 1[correct_k]  in [0, b],  b = r_max + w

(r_max: the largest radius the ACR estimator can return, ``ACREstimator.max_radius``). FP32's terms are known on
all K images, so the candidate beats an incumbent of reward R_inc iff mu = mean_k q_k > tau = R_inc / lambda +
mean_k q_fp,k (the runner keeps a candidate only when its reward is strictly larger).

Stopping rule. The images are scored in a uniformly random order (drawn per candidate); after t of them the scored
q's are a sample without replacement from the fixed population {q_1..q_K}. Serfling's inequality (Ann. Statist.
1974) bounds the population mean from above: for every t < K and eps > 0,

    P[mu - mean_t >= eps] <= exp(-2 t eps^2 / ((1 - (t - 1) / K) b^2)),

so U_t = mean_t + b * sqrt((1 - (t - 1) / K) log(J / delta) / (2 t)) is an upper bound on mu at level
1 - delta / J. The race checks after every ``batch`` images, J = ceil(K / batch) - 1 times (after all K images mu is
known exactly), and stops at the first check with U_t < tau. A union bound over the J checks gives the guarantee:

    for a candidate with mu >= tau (one that would have beaten, or tied, the incumbent),
    P[the race stops it] <= sum_j delta / J = delta,

over the random order, whatever the population (the checks look at the same images repeatedly, so each level is
delta / J, not delta: SPEC §8). A stopped candidate's partial terms (over its t scored images) give a reward below
the incumbent's, since mean_t <= U_t < tau. Serfling's bound uses only the range b, so the race stops candidates
that are clearly worse (by about b * sqrt(log(J / delta) / (2 t)) in mean q at t images), and keeps scoring close
ones: racing saves cost, and never changes which candidate is best except with probability delta per candidate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from certquant.utils.errors import CertquantError


def serfling_upper(mean: float, t: int, population: int, value_range: float, delta: float) -> float:
    """Upper confidence bound (level 1 - delta) on a population's mean after ``t`` draws without replacement whose
    mean is ``mean``; values in an interval of width ``value_range``. Exact (``mean``) when t = population."""
    if not 1 <= t <= population:
        raise CertquantError(f"need 1 <= t <= population, got t={t}, population={population}")
    if t == population:
        return mean
    return mean + value_range * math.sqrt((1 - (t - 1) / population) * math.log(1 / delta) / (2 * t))


def checks(population: int, batch: int) -> int:
    """J: the stopping checks of a race over ``population`` images scored ``batch`` at a time (none after the last)."""
    return max(0, math.ceil(population / batch) - 1)


@dataclass
class RaceResult:
    """The per-image values scored (by position in the order), whether the race stopped early, its last bound."""

    values: dict[int, float] = field(default_factory=dict)
    stopped: bool = False
    upper: float = math.inf
    checks_made: int = 0


def race(
    score: Callable[[list[int]], Sequence[float]],
    order: Sequence[int],
    batch: int,
    target: float,
    value_range: float,
    delta: float,
) -> RaceResult:
    """Score ``order``'s items ``batch`` at a time with ``score(items) -> values`` (each in an interval of width
    ``value_range``) and stop at the first check whose Serfling bound U_t (level 1 - delta / J) is below ``target``
    (see the module docstring). Returns every value scored."""
    if batch < 1 or not 0 < delta < 1 or not value_range > 0 or not math.isfinite(value_range):
        raise CertquantError(
            f"racing needs batch >= 1, delta in (0, 1) and a finite range > 0, got {batch}, {delta}, {value_range}"
        )
    population = len(order)
    level = delta / max(1, checks(population, batch))
    result, total = RaceResult(), 0.0
    for start in range(0, population, batch):
        items = list(order[start : start + batch])
        for item, value in zip(items, score(items)):
            result.values[item] = float(value)
            total += float(value)
        t = len(result.values)
        if t < population:
            result.checks_made += 1
            result.upper = serfling_upper(total / t, t, population, value_range, level)
            if result.upper < target:
                result.stopped = True
                return result
    result.upper = total / population
    return result
