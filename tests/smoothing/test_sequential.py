"""Sequential certification (smoothing/sequential.py, smoothing/incremental_sequential.py): the levels sum to alpha,
exact crossing probabilities of the confidence sequence, repeated trials on closed-form linear models with the true
pA exactly at a threshold, the naive "stop when the fixed-n bound crosses" rule failing, and bit-identical noise with
CERTIFY.

Power of the repeated-trial tests: each counts wrong decisions W ~ Binomial(TRIALS, q) and fails when W exceeds
binom.ppf(1 - 1e-4, TRIALS, level): a sound procedure (q <= level) fails with probability <= 1e-4 per check; the
naive rule's q is computed exactly below and the test asserts its detection probability before using it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from linear_models import LinearTwoClass
from scipy.stats import binom, norm

from certquant.smoothing import certify
from certquant.smoothing.bounds import clopper_pearson_lower
from certquant.smoothing.incremental import BRANCH_DIRECT, BRANCH_ZETA
from certquant.smoothing.incremental_sequential import (
    certify_incremental_sequential,
    direct_level,
    replay_incremental_sequential,
)
from certquant.smoothing.sequential import (
    SequentialSettings,
    certify_sequential,
    cp_lower,
    cp_upper,
    look_levels,
    look_schedule,
    replay_sequential,
)
from certquant.utils.errors import CertquantError

SIGMA, SHAPE = 0.5, (1, 4, 4)
ALPHA = 0.05  # large, so a broken bound shows within a few hundred trials
N_MAX = 1000
SETTINGS = SequentialSettings(first=20, growth=1.5, step=10)  # looks 20, 30, 50, 80, 120, ..., 1000
TRIALS = 400


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield


def linear(p1: float, x: torch.Tensor, shift: float = 0.0) -> LinearTwoClass:
    """f(x) = [w.x + b > 0] with P[f(x + e) = 1] = p1 exactly (true radius sigma * Phi^-1(p1) for p1 > 1/2)."""
    w = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7))
    margin = float(norm.ppf(p1)) * SIGMA * float(w.norm())
    return LinearTwoClass(w, margin - float((w * x).sum()) + shift)


def crossing_probability(p: float, looks: list[int], levels: np.ndarray) -> float:
    """Exact P[exists k: CP lower bound (level levels[k]) of S_k of n_k > p], S_k the successes of a Bernoulli(p)
    stream at look k: dynamic programming over the count, crossed paths removed at each look. This is the event the
    union bound controls; a sequential rule certifies wrongly (at a threshold <= p) only inside it."""
    mass = np.array([1.0])  # P[S = s, not crossed yet], s = 0..n
    previous, crossed = 0, 0.0
    for n, level in zip(looks, levels):
        mass = np.convolve(mass, binom.pmf(np.arange(n - previous + 1), n - previous, p))
        over = cp_lower(np.arange(n + 1), n, level) > p
        crossed += mass[over].sum()
        mass[over] = 0.0
        previous = n
    return float(crossed)


# -- the confidence sequence itself --------------------------------------------------------------------------------


def test_looks_and_levels():
    looks = look_schedule(100_000, SequentialSettings(growth=1.5))
    assert looks[0] == 200 and looks[-1] == 100_000
    assert all(b > a for a, b in zip(looks, looks[1:]))
    assert all(n % 200 == 0 for n in looks)
    assert all(b >= 1.5 * a for a, b in zip(looks[:-2], looks[1:-1]))
    default = look_schedule(100_000, SequentialSettings())  # growth 1.25
    assert default[0] == 200 and all(b >= 1.25 * a for a, b in zip(default[:-2], default[1:-1]))
    levels = look_levels(len(looks), 0.001, 0.5)
    assert math.isclose(levels.sum(), 0.001, rel_tol=1e-12)  # the union bound's total
    assert levels[-1] == 0.0005 and np.allclose(levels[:-1], 0.0005 / (len(looks) - 1))
    assert look_schedule(150, SequentialSettings()) == [150]  # n_max below the first look: fixed-n CERTIFY
    assert list(look_levels(1, 0.001, 0.5)) == [0.001]


@pytest.mark.parametrize("p", [0.5, float(norm.cdf(0.5)), float(norm.cdf(1.0)), 0.95, 0.99])
def test_crossing_probability_exact_at_most_alpha_naive_above(p):
    looks = look_schedule(N_MAX, SETTINGS)
    sound = crossing_probability(p, looks, look_levels(len(looks), ALPHA, SETTINGS.final_share))
    naive = crossing_probability(p, looks, np.full(len(looks), ALPHA))  # the fixed-n bound checked at every look
    assert sound <= ALPHA
    # repeated looks at the fixed-n level inflate the error: 0.18-0.20 at p <= 0.85, 0.12 at 0.95, 0.058 at 0.99
    # (few c_A misses are possible there at n <= 1000, so the discreteness of the bound hides part of it)
    assert naive > (3 * ALPHA if p < 0.9 else ALPHA)


def test_disparity_side_is_the_mirror_image():
    """zeta's upper bounds: P[exists k: CP upper bound of D_k < D] = the lower side's crossing at 1 - D."""
    looks = look_schedule(N_MAX, SETTINGS)
    levels = look_levels(len(looks), ALPHA, SETTINGS.final_share)
    for k, n in enumerate(looks):
        s = np.arange(n + 1)
        assert np.allclose(cp_upper(s, n, levels[k]), 1.0 - cp_lower(n - s, n, levels[k]))


# -- repeated trials of the real procedure ------------------------------------------------------------------------


def _naive(predictions: torch.Tensor, threshold: float, looks: list[int]) -> bool:
    """The naive rule: certify as soon as the fixed-n Clopper-Pearson bound at ALPHA crosses the threshold."""
    hits = np.cumsum(predictions.numpy() == 1)
    return any(clopper_pearson_lower(int(hits[n - 1]), n, ALPHA) > threshold for n in looks)


@pytest.mark.slow
def test_wrong_decisions_at_most_alpha_with_pa_at_a_threshold_and_naive_rule_fails():
    """True pA exactly Phi(r / sigma) at r = 0.25, so the smoothed classifier's true radius is exactly 0.25: certifying
    r = 0.25 (a radius above the true one) or r = 0.5 is wrong. Sequential: wrong rate <= alpha at every radius;
    the naive rule on the same noise: wrong far more often."""
    radii = [0.0, 0.25, 0.5]
    x = torch.full(SHAPE, 0.5)
    threshold = float(norm.cdf(0.25 / SIGMA))
    model = linear(threshold, x)
    looks = look_schedule(N_MAX, SETTINGS)
    wrong = np.zeros(len(radii), dtype=int)
    naive_wrong = 0
    for seed in range(TRIALS):
        cert = certify_sequential(
            model, x, SIGMA, radii, n0=20, n_max=N_MAX, alpha=ALPHA, batch_size=N_MAX, seed=seed, settings=SETTINGS
        )
        wrong += np.array([c and (r > 0 or cert.c_a != 1) for r, c in zip(radii, cert.certified)])
        full = certify(model, x, SIGMA, n0=20, n=N_MAX, alpha=ALPHA, batch_size=N_MAX, seed=seed, keep_cache=True)
        assert full.c_a == cert.c_a
        naive_wrong += full.c_a == 1 and _naive(full.cache.predictions, threshold, looks)
        if seed < 20:  # the replay of the stored predictions decides alike (the benchmark's shortcut)
            replay = replay_sequential(full.cache.predictions, full.c_a, N_MAX, ALPHA, SIGMA, radii, SETTINGS)
            assert (replay.certified, replay.n_used, replay.n_a) == (cert.certified, cert.n_used, cert.n_a)
    limit = binom.ppf(1 - 1e-4, TRIALS, ALPHA)
    assert all(w <= limit for w in wrong), (wrong, limit)
    exact = crossing_probability(threshold, looks, look_levels(len(looks), ALPHA, SETTINGS.final_share))
    assert wrong[1] <= binom.ppf(1 - 1e-4, TRIALS, exact)
    naive_q = crossing_probability(threshold, looks, np.full(len(looks), ALPHA))  # x P[c_A = 1] ~ 1 at n0 = 20
    power = binom.sf(limit, TRIALS, naive_q * binom.sf(10, 20, threshold))
    assert power > 0.99  # the check below detects the naive rule with this probability
    assert naive_wrong > limit, (naive_wrong, limit, naive_q)


@pytest.mark.slow
@pytest.mark.parametrize("branch", [BRANCH_ZETA, BRANCH_DIRECT])
def test_sequential_irs_wrong_decisions_at_most_alpha_plus_alpha_zeta(branch):
    """f' with P[f' = 1] exactly Phi(r / sigma) at r = 0.25 and one-sided disparity D = pA - pA' exactly (the same
    normal, shifted): every certificate of f' at r >= 0.25 is wrong; the rate stays <= alpha + alpha_zeta."""
    x = torch.full(SHAPE, 0.5)
    p_prime = float(norm.cdf(0.25 / SIGMA))
    f, f_prime = linear(0.9, x), linear(p_prime, x)
    gamma = 0.99 if branch == BRANCH_ZETA else 0.5  # 0.5: every base certificate takes the direct branch
    trials, wrong = 300, 0
    for seed in range(trials):
        cache = certify(f, x, SIGMA, n0=20, n=N_MAX, alpha=ALPHA, batch_size=N_MAX, seed=seed, keep_cache=True).cache
        if cache.c_a != 1:
            continue
        cert = certify_incremental_sequential(
            f_prime, cache, x, SIGMA, N_MAX, [0.25, 0.5], gamma, ALPHA, "one-sided", SETTINGS
        )
        assert cert.branch == branch
        wrong += any(cert.certified)
        if seed < 10:
            approx = certify(
                f_prime, x, SIGMA, n0=20, n=N_MAX, alpha=ALPHA, batch_size=N_MAX, seed=seed, keep_cache=True
            ).cache.predictions
            replay = replay_incremental_sequential(
                cache, approx, N_MAX, [0.25, 0.5], gamma, ALPHA, "one-sided", SETTINGS
            )
            assert (replay.certified, replay.n_used, replay.n_d) == (cert.certified, cert.n_used, cert.n_d)
    assert wrong <= binom.ppf(1 - 1e-4, trials, ALPHA + ALPHA), wrong


# -- noise shared with CERTIFY, determinism, modes ------------------------------------------------------------------


def test_shares_certify_noise_prefix_and_is_deterministic():
    x = torch.full(SHAPE, 0.5)
    model = linear(0.97, x)
    radii = [0.25, 0.5, 0.75]
    a = certify_sequential(model, x, SIGMA, radii, n0=50, n_max=5000, batch_size=700, seed=3)
    b = certify_sequential(model, x, SIGMA, radii, n0=50, n_max=5000, batch_size=700, seed=3)
    assert a == replace_seconds(b, a.seconds)
    full = certify(model, x, SIGMA, n0=50, n=5000, batch_size=700, seed=3, keep_cache=True)
    hits = int((full.cache.predictions[: a.n_used] == a.c_a).sum())
    assert a.c_a == full.c_a and a.n_a == hits  # the first n_used samples are CERTIFY's
    assert a.radius_bound_fixed_n >= full.radius  # the fixed-n radius on the same noise is at most the bound
    assert a.certified == [a.radius > r for r in radii]


def replace_seconds(cert, seconds):
    cert.seconds = seconds
    return cert


def test_acr_mode_stops_on_tolerance_or_abstain_and_keeps_level():
    x = torch.full(SHAPE, 0.5)
    settings = SequentialSettings(tolerance=0.05)
    cert = certify_sequential(linear(0.9, x), x, SIGMA, None, n_max=100_000, seed=1, settings=settings)
    assert cert.stopped_by == "tolerance" and cert.n_used < 100_000
    assert cert.radius <= SIGMA * norm.ppf(0.9)  # below the true radius (level 1 - alpha; this seed)
    # n0 = 1 picks class 1 (pA = 0.3) on some seeds: pA cannot exceed 1/2, an abstention decided within 1000 samples
    abstain = next(
        c
        for c in (
            certify_sequential(linear(0.3, x), x, SIGMA, None, n0=1, n_max=100_000, seed=s, settings=settings)
            for s in range(40)
        )
        if c.c_a == 1
    )
    assert abstain.label == -1 and abstain.stopped_by == "abstain" and abstain.n_used <= 1000


def test_radius_out_of_reach_is_given_up_at_the_first_look():
    """At sigma 0.5, r = 2 needs pA_lower > Phi(4) = 0.99997: n_max = 10,000 cannot get there even with every sample
    c_A, so r = 2 is decided (not certified) at the first look, and r = 0.25 decides the stop."""
    x = torch.full(SHAPE, 0.5)
    cert = certify_sequential(linear(0.999, x), x, SIGMA, [0.25, 2.0], n_max=10_000, seed=0)
    assert cert.decided_at[1] == 200 and cert.certified == [True, False]
    assert cert.n_used == 200 and cert.stopped_by == "decided"


def test_bad_settings_are_one_line_errors():
    for kwargs in (
        {"growth": 1.0},
        {"first": 0},
        {"step": 0},
        {"final_share": 0.0},
        {"futility": 1.5},
        {"tolerance": -1.0},
        {"curtail": 0.0},
        {"curtail": 0.5},
    ):
        with pytest.raises(CertquantError):
            SequentialSettings(**kwargs)
    x = torch.full(SHAPE, 0.5)
    with pytest.raises(CertquantError, match="radii"):
        certify_sequential(linear(0.9, x), x, SIGMA, [-0.5], n_max=100)
    with pytest.raises(CertquantError, match="n_max"):
        certify_sequential(linear(0.9, x), x, SIGMA, [0.5], n_max=0)


def test_direct_level_is_irs_level():
    assert direct_level(0.001, 0.001) == 0.001  # as incremental_certificate's direct branch (level 1 - alpha)


# -- curtailment: giving up a radius an optimistic projection cannot certify ----------------------------------------


def _replay_paths(p: float, settings: SequentialSettings, radii: list[float], trials: int, n_max: int = N_MAX):
    """Sequential replays of ``trials`` seeded Bernoulli(p) streams of c_A hits (class 0 = c_A)."""
    rng = np.random.default_rng(11)
    out = []
    for _ in range(trials):
        predictions = (rng.random(n_max) >= p).astype(np.uint8)  # 0 (= c_A) with probability p
        out.append(replay_sequential(predictions, 0, n_max, ALPHA, SIGMA, radii, settings))
    return out


def test_curtailment_only_gives_up_so_it_keeps_the_level():
    """With curtailment a path certifies a radius only where the same test without it certifies it too (the same
    bounds at the same looks; curtailment only stops earlier or gives up), so the wrong-decision rate, checked here
    by repeated trials with pA exactly at the threshold Phi(r / sigma), stays under alpha; and it saves samples."""
    radius = 0.5
    threshold = float(norm.cdf(radius / SIGMA))
    plain, curtailed = (
        _replay_paths(threshold, SequentialSettings(first=20, growth=1.5, step=10, curtail=eps), [radius], TRIALS)
        for eps in (None, 0.1)
    )
    for a, b in zip(plain, curtailed):
        assert not (b.certified[0] and not a.certified[0])
        assert b.n_used <= a.n_used
    wrong = sum(c.certified[0] for c in curtailed)
    assert wrong <= binom.ppf(1 - 1e-4, TRIALS, ALPHA)
    assert sum(c.n_used for c in curtailed) < sum(c.n_used for c in plain)


def test_curtailment_rarely_gives_up_a_radius_well_inside():
    """pA well above the threshold: the (1 - eps) upper bound of pA projects a certificate at n_max on nearly every
    path, so curtailment at eps = 0.05 gives up on few paths that fixed-n at n_max certifies; pA just above the
    threshold (where sequential testing is most expensive) is given up much more often: the trade the benchmark
    measures on validation images."""
    radius = 0.5
    settings = SequentialSettings(first=20, growth=1.5, step=10, curtail=0.05)
    inside = _replay_paths(0.985, settings, [radius], 200)  # threshold Phi(1) = 0.841
    assert sum(c.certified[0] for c in inside) >= 196
    near = _replay_paths(0.87, settings, [radius], 200)
    plain = _replay_paths(0.87, SequentialSettings(first=20, growth=1.5, step=10, curtail=None), [radius], 200)
    lost_near = sum(a.certified[0] and not b.certified[0] for a, b in zip(plain, near))
    assert lost_near > 200 - sum(c.certified[0] for c in inside)
    assert sum(c.n_used for c in near) < 0.9 * sum(c.n_used for c in plain)
