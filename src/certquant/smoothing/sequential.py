"""Sequential CERTIFY: stop drawing noise as soon as every requested radius is decided, with a bound that stays valid
under optional stopping (the idea of Voracek, NeurIPS 2024, and Horvath et al., ICLR 2022; SPEC §7-8).

CERTIFY (``core.certify``) draws the same n samples for every image; most images are decided long before. Here the
n0 selection samples pick c_A exactly as CERTIFY does; then the estimation samples (the same noise as CERTIFY with
n = n_max: batch b of stage ESTIMATION from its own seeded generator, so a sequential run consumes a prefix of a
fixed-n run's noise) are classified pass by pass, and at the looks n_1 < n_2 < ... < n_K = n_max the counts are
tested.

Confidence sequence (Clopper-Pearson at geometric looks with a union bound). Look k has level alpha_k:

    alpha_K = final_share * alpha                         (the last look, n_K = n_max)
    alpha_k = (1 - final_share) * alpha / (K - 1)         (each of the K - 1 earlier looks)
    sum_k alpha_k = final_share * alpha + (K - 1) * (1 - final_share) * alpha / (K - 1) = alpha

(K = 1: alpha_1 = alpha, i.e. fixed-n CERTIFY). L_k = CP lower bound of n_A(n_k) of n_k at level alpha_k. For any
stopping rule, P[exists k: L_k > pA] <= sum_k P[L_k > pA] <= sum_k alpha_k = alpha, so every bound the procedure
looks at holds simultaneously with probability >= 1 - alpha; so does their running maximum, which is the reported
pA_lower. A certificate (c_A, sigma * Phi^-1(pA_lower)) is therefore valid at level 1 - alpha, and per image the
probability that ANY certified radius is wrong (pA <= Phi(r / sigma) but certified at r) is at most alpha.

Giving up (never an error: "not certified" claims nothing) uses the upper bounds U_k (CP upper at level beta_k, the
same split of beta = ``futility``) and a deterministic check:

- U_k <= Phi(r / sigma): pA <= Phi(r / sigma) with probability >= 1 - beta (all looks together), so the radius r is
  missed only with probability <= beta; U_k <= 1/2 gives up every radius (pA cannot exceed 1/2: abstain);
- unreachable: even if every remaining sample were c_A, no later look's L_j could exceed Phi(r / sigma);
- curtailed (``curtail`` = eps; 0.1 in the default settings): even if the remaining samples hit c_A at p~ = the
  (1 - eps) upper Clopper-Pearson bound of pA from the samples so far (an optimistic rate: p~ >= pA with probability
  >= 1 - eps), no later look's L_j would exceed Phi(r / sigma). This is where sequential testing spends most: an image whose pA sits
  just above a threshold needs tens of thousands of samples to be told apart from it. Giving up claims nothing, so
  soundness is untouched; what it costs is power: a radius fixed-n CERTIFY at n_max would certify may be given up
  (measured, not bounded: the benchmark chooses eps on validation images against the certified accuracy lost).

Radii mode (``radii`` given): certified at r as soon as pA_lower > Phi(r / sigma); stop when every radius is decided
(or at n_max). ACR mode (``radii`` None): stop when the abstention is decided (above), or when the radius can no
longer grow by more than ``tolerance``: sigma * Phi^-1(min(U_k, best reachable L_j)) - sigma * Phi^-1(pA_lower)
<= tolerance; then, with probability >= 1 - (alpha + beta), the reported radius is at most ``tolerance`` below
min(true radius sigma * Phi^-1(pA), the largest radius n_max samples can certify), and at level 1 - alpha it is a
valid certificate either way.

``SequentialTest`` is the decision procedure on a stream of counts (no model: tests drive it with simulated
binomial paths, the benchmark with stored predictions); ``certify_sequential`` runs it on a model.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import beta as beta_dist
from scipy.stats import norm
from torch import nn

from certquant.smoothing.core import (
    ABSTAIN,
    CPU_FORWARD_CHUNK,
    _as_model_input,
    _check_image,
    _evaluating,
    classified_samples,
    sample_counts,
    validate_smoothing_args,
)
from certquant.smoothing.metrics import certify_metrics
from certquant.smoothing.noise import ESTIMATION, SELECTION, image_seed
from certquant.smoothing.runner import ImageWorker, Item, _options, certificate_record, mean_postfix, run_dataset
from certquant.utils.errors import CertquantError

PROPORTION = "proportion"  # the tested quantity is the success rate itself (pA, or f''s rate in IRS's direct branch)
DISPARITY = "disparity"  # the tested quantity is base - D, D the rate of the stream (IRS's zeta branch)


@dataclass(frozen=True)
class SequentialSettings:
    """The looks, the split of the levels and the curtailment. The defaults were chosen on 100 held-out validation
    images of the small CNN at sigma 0.25, n_max = 100,000, radii 0.25-1.0 (``benchmarks/bench_sequential.py
    --validation 100``: the fewest samples within 0.01 certified accuracy of fixed-n CERTIFY at every radius, out of
    growth 1.25 / 1.5 / 2, final share 0.25-0.9, curtailment off / 0.01-0.2); the first look after one CPU forward
    pass (200 samples)."""

    first: int = CPU_FORWARD_CHUNK  # n_1: samples before the first look
    growth: float = 1.25  # n_{k+1} >= growth * n_k (geometric looks, so K grows like log(n_max / n_1))
    step: int = CPU_FORWARD_CHUNK  # looks at multiples of this (a CPU pass: stops fall between passes)
    final_share: float = 0.25  # share of alpha (and of beta) spent at the last look n_max
    futility: float | None = None  # beta, the total level of the upper bounds used to give up (default: alpha)
    tolerance: float = 0.05  # ACR mode: stop when the radius cannot grow by more than this (L2, pixel units)
    curtail: float | None = 0.1  # radii mode: give up a radius an optimistic projection cannot certify (None: off)

    def __post_init__(self) -> None:
        if isinstance(self.first, bool) or not isinstance(self.first, int) or self.first < 1:
            raise CertquantError(f"first look must be an integer >= 1 (samples), got {self.first!r}")
        if isinstance(self.step, bool) or not isinstance(self.step, int) or self.step < 1:
            raise CertquantError(f"look step must be an integer >= 1 (samples), got {self.step!r}")
        if not self.growth > 1.0:
            raise CertquantError(f"growth of the looks must be > 1 (e.g. 1.5), got {self.growth}")
        if not 0.0 < self.final_share <= 1.0:
            raise CertquantError(f"final_share must be in (0, 1] (share of alpha at n_max), got {self.final_share}")
        if self.futility is not None and not 0.0 < self.futility < 1.0:
            raise CertquantError(f"futility (beta) must be in (0, 1), e.g. 0.001, got {self.futility}")
        if not self.tolerance >= 0.0:
            raise CertquantError(f"tolerance must be >= 0 (a radius), got {self.tolerance}")
        if self.curtail is not None and not 0.0 < self.curtail < 0.5:
            raise CertquantError(f"curtail must be in (0, 0.5) (the optimism of the projection), got {self.curtail}")


def look_schedule(n_max: int, settings: SequentialSettings) -> list[int]:
    """n_1 < ... < n_K = n_max: n_1 = ``first``, then n_{k+1} = the multiple of ``step`` at or above growth * n_k."""
    if n_max < 1:
        raise CertquantError(f"n_max must be >= 1 (estimation samples), got {n_max}")
    looks, n = [], settings.first
    while n < n_max:
        looks.append(n)
        n = max(n + 1, math.ceil(settings.growth * n / settings.step) * settings.step)
    return looks + [n_max]


def look_levels(count: int, total: float, final_share: float) -> np.ndarray:
    """The levels of ``count`` looks, summing to ``total``: final_share * total at the last look, the rest split
    evenly over the earlier ones (all of it at the last look when there is one)."""
    if count == 1:
        return np.array([total])
    early = (1.0 - final_share) * total / (count - 1)
    return np.array([early] * (count - 1) + [final_share * total])


def cp_lower(k: np.ndarray | int, n: np.ndarray | int, level: np.ndarray | float) -> np.ndarray:
    """Vectorized ``bounds.clopper_pearson_lower``: Beta(k, n-k+1) quantile at ``level``, 0 where k = 0."""
    k, n = np.asarray(k, dtype=float), np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore"):
        out = beta_dist.ppf(level, np.maximum(k, 1), n - k + 1)
    return np.where(k > 0, out, 0.0)


def cp_upper(k: np.ndarray | int, n: np.ndarray | int, level: np.ndarray | float) -> np.ndarray:
    """Vectorized ``bounds.clopper_pearson_upper``: Beta(k+1, n-k) quantile at 1 - ``level``, 1 where k = n."""
    k, n = np.asarray(k, dtype=float), np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore"):
        out = beta_dist.ppf(1.0 - np.asarray(level), k + 1, np.maximum(n - k, 1))
    return np.where(k < n, out, 1.0)


def radius_of(p_lower: float, sigma: float) -> float:
    """sigma * Phi^-1(p_lower) when p_lower > 1/2, else 0 (as ``bounds.certified_radius``; inf at p_lower = 1)."""
    return float(sigma * norm.ppf(p_lower)) if p_lower > 0.5 else 0.0


def thresholds_of(radii: Sequence[float], sigma: float) -> np.ndarray:
    """Phi(r / sigma): pA must exceed this for a certificate of radius r (1/2 at r = 0)."""
    thresholds: np.ndarray = norm.cdf(np.asarray(radii, dtype=float) / sigma)
    return thresholds


@dataclass
class SequentialTest:
    """The sequential decision on a Bernoulli stream observed at the looks ``looks`` (see the module docstring).

    ``kind`` PROPORTION: the stream's successes are the c_A hits and the tested quantity q is their rate pA.
    ``kind`` DISPARITY: the successes are disagreements (rate D) and q = ``base`` - D (IRS's zeta branch: f''s lower
    bound pA_lower - zeta); lower bounds of q use upper bounds of D and vice versa.
    Feed it with ``look(k, successes)`` for k = 0, 1, ... until it returns True (done); the last look always ends it.
    """

    looks: list[int]
    alpha: float  # total level of the lower bounds on q (sum of the looks' levels)
    beta: float  # total level of the upper bounds on q used to give up
    sigma: float
    radii: list[float] | None  # None: ACR mode
    final_share: float = 0.5
    tolerance: float = 0.05
    kind: str = PROPORTION
    base: float = 1.0  # DISPARITY: q = base - D
    curtail: float | None = None  # radii mode: the optimism eps of the curtailment projection (None: off)
    # state
    alphas: np.ndarray = field(init=False, repr=False)
    betas: np.ndarray = field(init=False, repr=False)
    thresholds: np.ndarray = field(init=False, repr=False)  # Phi(r / sigma) per radius
    q_lower: float = field(init=False, default=0.0)  # running max of the lower bounds: valid at 1 - alpha
    q_upper: float = field(init=False, default=1.0)  # running min of the upper bounds: valid at 1 - beta
    certified: list[bool] = field(init=False, default_factory=list)
    decided_at: list[int | None] = field(init=False, default_factory=list)  # samples when each radius was decided
    n_used: int = field(init=False, default=0)  # samples at the look that ended the test
    done: bool = field(init=False, default=False)
    stopped_by: str = field(init=False, default="")  # "decided", "tolerance", "abstain" or "n_max"

    def __post_init__(self) -> None:
        if self.kind not in (PROPORTION, DISPARITY):
            raise CertquantError(f"unknown sequential test kind '{self.kind}'")
        self.alphas = look_levels(len(self.looks), self.alpha, self.final_share)
        self.betas = look_levels(len(self.looks), self.beta, self.final_share)
        count = len(self.radii) if self.radii is not None else 0
        self.thresholds = thresholds_of(self.radii or [], self.sigma)
        self.certified = [False] * count
        self.decided_at = [None] * count

    def _bounds(self, k: int, s: int) -> tuple[float, float]:
        """(lower bound of q at level alpha_k, upper bound of q at level beta_k) after s successes of looks[k]."""
        n = self.looks[k]
        if self.kind == PROPORTION:
            return float(cp_lower(s, n, self.alphas[k])), float(cp_upper(s, n, self.betas[k]))
        return self.base - float(cp_upper(s, n, self.alphas[k])), self.base - float(cp_lower(s, n, self.betas[k]))

    def _best_later(self, k: int, s: int, rate: float) -> float:
        """The largest lower bound on q a later look would give if the samples after look k succeeded at ``rate``
        (c_A hits, or for a disparity disagreements); -inf after the last look."""
        later = np.asarray(self.looks[k + 1 :], dtype=float)
        if not len(later):
            return -math.inf
        successes = s + rate * (later - self.looks[k])
        if self.kind == PROPORTION:
            return float(cp_lower(successes, later, self.alphas[k + 1 :]).max())
        return float((self.base - cp_upper(successes, later, self.alphas[k + 1 :])).max())

    def _reachable(self, k: int, s: int) -> float:
        """The best any later look could give: every remaining sample a c_A hit (a disparity: an agreement)."""
        return self._best_later(k, s, 1.0 if self.kind == PROPORTION else 0.0)

    def _projected(self, k: int, s: int) -> float:
        """What a later look would give at the optimistic rate: the (1 - curtail) upper bound of pA (a disparity:
        the lower bound of D) from the samples so far; inf without curtailment (never given up on a projection)."""
        if self.curtail is None:
            return math.inf
        n = self.looks[k]
        rate = cp_upper(s, n, self.curtail) if self.kind == PROPORTION else cp_lower(s, n, self.curtail)
        return self._best_later(k, s, float(rate))

    def look(self, k: int, successes: int) -> bool:
        """Test the counts of look k (``successes`` of ``looks[k]`` samples); return True when the test is over."""
        if self.done:
            return True
        lower, upper = self._bounds(k, successes)
        self.q_lower, self.q_upper = max(self.q_lower, lower), min(self.q_upper, upper)
        n, last = self.looks[k], k == len(self.looks) - 1
        reachable = max(self.q_lower, self._reachable(k, successes))  # the best pA_lower this test can still report
        if self.radii is None:
            hopeless = self.q_upper <= 0.5 or reachable <= 0.5
            grow = radius_of(min(self.q_upper, reachable), self.sigma) - radius_of(self.q_lower, self.sigma)
            stop = (
                "n_max"
                if last
                else "abstain"
                if hopeless and self.q_lower <= 0.5
                else ("tolerance" if self.q_lower > 0.5 and grow <= self.tolerance else "")
            )
        else:
            projected = max(self.q_lower, self._projected(k, successes))
            for i, threshold in enumerate(self.thresholds):
                if self.decided_at[i] is not None:
                    continue
                if self.q_lower > threshold:
                    self.certified[i], self.decided_at[i] = True, n
                elif last or self.q_upper <= threshold or reachable <= threshold or projected <= threshold:
                    self.decided_at[i] = n
            stop = "n_max" if last else "decided" if all(d is not None for d in self.decided_at) else ""
        if stop:
            self.done, self.n_used, self.stopped_by = True, n, stop
        return self.done


@dataclass
class SequentialCertificate:
    """Sequential CERTIFY of one image. ``label`` = c_A or -1 (abstain); ``radius`` = sigma * Phi^-1(pa_lower), a
    certificate at level 1 - alpha; ``certified[i]``: radius ``radii[i]`` certified (radii mode); ``n_used``:
    estimation samples drawn; ``radius_bound_fixed_n``: the largest radius CERTIFY with n = n_max could give on the
    same noise (its first n_used samples are these, the rest at best all c_A)."""

    label: int
    radius: float
    pa_lower: float
    pa_upper: float  # running min of the upper bounds (level 1 - beta)
    c_a: int
    n_a: int  # c_A hits among the n_used estimation samples
    n_used: int
    n_max: int
    radii: list[float] | None
    certified: list[bool]
    decided_at: list[int | None]
    stopped_by: str
    radius_bound_fixed_n: float
    seconds: float
    seed: int = 0
    looks: int = 0  # looks made


def fixed_n_radius_bound(n_a: int, n_used: int, n_max: int, alpha: float, sigma: float) -> float:
    """The radius CERTIFY with n = n_max at level alpha gives when the n_max - n_used samples not drawn are all c_A:
    an upper bound on its radius on the same noise (a sequential run draws a prefix of it)."""
    return radius_of(float(cp_lower(n_a + n_max - n_used, n_max, alpha)), sigma)


def certify_sequential(
    model: nn.Module,
    x: torch.Tensor,
    sigma: float,
    radii: Sequence[float] | None = None,
    n0: int = 100,
    n_max: int = 100_000,
    alpha: float = 0.001,
    batch_size: int = 1000,
    seed: int = 0,
    settings: SequentialSettings = SequentialSettings(),
    input_shape: Sequence[int] | None = None,
) -> SequentialCertificate:
    """Sequential CERTIFY of one image (C, H, W) in [0, 1]: at the given ``radii`` (stop when each is decided) or,
    without them, in ACR mode (stop when the radius cannot grow by more than ``settings.tolerance``). With probability
    >= 1 - alpha over the noise, every certified radius (and the reported radius) is one the smoothed classifier
    keeps c_A on, whatever the stopping (module docstring). Noise: CERTIFY's with n = n_max (same prefix)."""
    validate_smoothing_args(sigma, alpha, batch_size, seed, n0=n0, n_max=n_max)
    radii_list = validate_radii(radii)
    _check_image(x, input_shape)
    started = time.perf_counter()
    x = _as_model_input(model, x)
    test = new_test(n_max, alpha, sigma, radii_list, settings)
    with _evaluating(model):
        counts0, _ = sample_counts(model, x, sigma, n0, batch_size, seed, SELECTION)
        c_a = int(counts0.argmax().item())  # as CERTIFY: the most frequent class of the n0 selection samples
        pieces = (
            (len(classes), _hit_counter(classes, c_a))
            for _, classes, _, _ in classified_samples(model, x, sigma, n_max, batch_size, seed, ESTIMATION)
        )
        n_a, _, looks = run_test(test, pieces)
    return _sequential_certificate(test, c_a, n_a, n_max, alpha, sigma, seed, time.perf_counter() - started, looks)


def new_test(
    n_max: int, alpha: float, sigma: float, radii: list[float] | None, settings: SequentialSettings
) -> SequentialTest:
    """The ``SequentialTest`` of a sequential CERTIFY (shared by the model path and by replays of stored counts)."""
    return SequentialTest(
        look_schedule(n_max, settings),
        alpha,
        settings.futility if settings.futility is not None else alpha,
        sigma,
        radii,
        settings.final_share,
        settings.tolerance,
        curtail=settings.curtail,
    )


def replay_sequential(
    predictions: torch.Tensor | np.ndarray,
    c_a: int,
    n_max: int,
    alpha: float,
    sigma: float,
    radii: Sequence[float] | None,
    settings: SequentialSettings = SequentialSettings(),
    seed: int = 0,
) -> SequentialCertificate:
    """The certificate ``certify_sequential`` gives, from f's stored predictions on the first (up to n_max) estimation
    samples of a fixed-n run on the same seeds (e.g. an IRS cache) and its c_A: the benchmark's shortcut. The same
    decisions as running the model, as long as its forward passes classify every sample alike (same device, passes)."""
    hits = np.asarray(predictions[:n_max]) == c_a
    if len(hits) < n_max:
        raise CertquantError(f"{len(hits)} stored predictions for n_max = {n_max}: store at least n_max")
    test = new_test(n_max, alpha, sigma, validate_radii(radii), settings)
    cumulative = np.concatenate([[0], np.cumsum(hits)])
    n_a, _, looks = run_test(test, [(n_max, lambda cut: int(cumulative[cut]))])
    return _sequential_certificate(test, c_a, n_a, n_max, alpha, sigma, seed, 0.0, looks)


def _hit_counter(classes: torch.Tensor, c_a: int) -> Callable[[int], int]:
    """c_A hits among the first ``cut`` samples of a forward pass."""
    hits = classes == c_a
    return lambda cut: int(hits[:cut].sum())


def run_test(
    test: SequentialTest, pieces: Iterable[tuple[int, Callable[[int], int]]], needed: Callable[[int], int] | None = None
) -> tuple[int, int, int]:
    """Feed ``test`` from consecutive pieces of the evaluated samples until it is done; return (successes at the
    stopping look, evaluated samples drawn, looks made). A piece is (length, count) with count(cut) = successes among
    its first ``cut`` samples; a look inside a piece counts that prefix exactly. ``needed(n)``: how many evaluated
    samples lie before position n (default n; IRS's one-sided branch skips samples that cannot count)."""
    need = needed or (lambda n: n)
    total, drawn, k = 0, 0, 0
    for length, count in pieces:
        while k < len(test.looks) and need(test.looks[k]) <= drawn + length:
            successes = total + count(need(test.looks[k]) - drawn)
            if test.look(k, successes):
                return successes, drawn + length, k + 1
            k += 1
        total += count(length)
        drawn += length
    while k < len(test.looks):  # looks after the last evaluated sample (every later sample skipped)
        if test.look(k, total):
            return total, drawn, k + 1
        k += 1
    raise CertquantError(f"the samples ended before the last look ({test.looks[-1]}): draw n_max samples")


def _sequential_certificate(
    test: SequentialTest,
    c_a: int,
    n_a: int,
    n_max: int,
    alpha: float,
    sigma: float,
    seed: int,
    seconds: float,
    looks: int,
) -> SequentialCertificate:
    label = c_a if test.q_lower > 0.5 else ABSTAIN
    return SequentialCertificate(
        label=label,
        radius=radius_of(test.q_lower, sigma) if label != ABSTAIN else 0.0,
        pa_lower=test.q_lower,
        pa_upper=test.q_upper,
        c_a=c_a,
        n_a=n_a,
        n_used=test.n_used,
        n_max=n_max,
        radii=test.radii,
        certified=list(test.certified),
        decided_at=list(test.decided_at),
        stopped_by=test.stopped_by,
        radius_bound_fixed_n=fixed_n_radius_bound(n_a, test.n_used, n_max, alpha, sigma),
        seconds=seconds,
        seed=seed,
        looks=looks,
    )


def validate_radii(radii: Sequence[float] | None) -> list[float] | None:
    """Sorted distinct radii >= 0, or None (ACR mode); one line for a bad list."""
    if radii is None:
        return None
    values = [float(r) for r in radii]
    if not values:
        raise CertquantError("no radii given: pass e.g. 0.25,0.5,0.75,1.0, or none for ACR mode")
    if any(not math.isfinite(r) or r < 0 for r in values):
        raise CertquantError(f"radii must be finite and >= 0, got {values}")
    return sorted(set(values))


def certify_dataset_sequential(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    indices: Sequence[int],
    out_dir: str | Path,
    sigma: float,
    radii: Sequence[float] | None = None,
    n0: int = 100,
    n_max: int = 100_000,
    alpha: float = 0.001,
    batch_size: int = 1000,
    seed: int = 0,
    settings: SequentialSettings = SequentialSettings(),
    identity: dict[str, Any] | None = None,
    arguments: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
    input_shape: Sequence[int] | None = None,
    progress: bool = True,
    channels_last: bool = False,
    resume: bool = False,
) -> dict[str, Any]:
    """``certify_sequential`` of ``images[i]`` for every i in ``indices`` (image seeds as ``runner.certify_dataset``,
    so the noise is a prefix of a fixed-n run's with n = n_max); the run folder of ``runner.certify_dataset`` with
    per-image decisions, and a summary with certified accuracy at each radius and the samples used."""
    validate_smoothing_args(sigma, alpha, batch_size, seed, n0=n0, n_max=n_max)
    radii_list = validate_radii(radii)
    params = {
        "sigma": float(sigma),
        "n0": n0,
        "n_max": n_max,
        "alpha": float(alpha),
        "batch_size": batch_size,
        "seed": seed,
        "channels_last": channels_last,
        "radii": radii_list,
        **asdict(settings),
    }
    worker = SequentialImage(
        model, float(sigma), radii_list, n0, n_max, float(alpha), batch_size, seed, settings, input_shape, channels_last
    )

    def summarize(records: list[dict[str, Any]]) -> tuple[dict[str, Any], float]:
        block = sequential_summary(records, radii_list, n0, n_max, alpha, settings)
        return {**certify_metrics(records), "sequential": block}, round(block["samples_per_image"])

    return run_dataset(
        "certify-sequential",
        worker,
        (images, labels, indices),
        out_dir,
        params,
        summarize,
        postfix=mean_postfix("samples/image", "n_used", 0),
        **_options(identity, arguments, provenance, progress, resume),
    )


@dataclass
class SequentialImage(ImageWorker):
    """Worker side of ``certify_dataset_sequential``: ``certify_sequential`` of one ``(index, image, label)`` item."""

    sigma: float
    radii: list[float] | None
    n0: int
    n_max: int
    alpha: float
    batch_size: int
    seed: int
    settings: SequentialSettings
    input_shape: Sequence[int] | None = None
    channels_last: bool = False

    def __call__(self, item: Item) -> dict[str, Any]:
        index, image, label = item
        cert = certify_sequential(
            self.model,
            image,
            self.sigma,
            self.radii,
            self.n0,
            self.n_max,
            self.alpha,
            self.batch_size,
            image_seed(self.seed, index),
            self.settings,
            self.input_shape,
        )
        fields = ("n_a", "n_used", "certified", "decided_at", "stopped_by", "radius_bound_fixed_n")
        return certificate_record(index, label, cert, *fields)


def sequential_summary(
    records: Sequence[dict[str, Any]],
    radii: list[float] | None,
    n0: int,
    n_max: int,
    alpha: float,
    settings: SequentialSettings,
) -> dict[str, Any]:
    """Certified accuracy at each requested radius (decided sequentially), the samples used against fixed-n CERTIFY
    at n_max, where the runs stopped, and the confidence statement."""
    count = max(1, len(records))
    samples = sum(n0 + int(r["n_used"]) for r in records)
    out: dict[str, Any] = {
        "radii": radii,
        "n_max": n_max,
        "looks": look_schedule(n_max, settings),
        "confidence": f"every certified radius holds with probability >= {1 - alpha:g} per image (levels summing to "
        f"alpha = {alpha:g} over the looks)",
        "samples": samples,
        "samples_per_image": samples / count,
        "fixed_n_samples": (n0 + n_max) * len(records),
        "fewer_samples_than_fixed_n": (n0 + n_max) * len(records) / max(1, samples),
        "stopped_by": {
            k: sum(1 for r in records if r["stopped_by"] == k) for k in ("decided", "tolerance", "abstain", "n_max")
        },
    }
    if radii is not None:
        out["certified_accuracy_at_radii"] = {
            f"{radius:g}": sum(1 for r in records if r["correct"] and r["certified"][j]) / count
            for j, radius in enumerate(radii)
        }
    return out
