"""Incremental randomized smoothing (SPEC §3): soundness on closed-form models, the zeta floor, branches, one-sided
vs two-sided disparity, bit-identical regeneration and one-line errors."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from scipy.stats import binom, norm

from certquant.models import build
from certquant.smoothing import (
    ABSTAIN,
    DISPARITIES,
    certify,
    certify_incremental,
    clopper_pearson_lower,
    disparity_bound,
    incremental_certificate,
    samples_to_evaluate,
)
from certquant.smoothing.incremental import BRANCH_DIRECT, BRANCH_ZETA, count_disagreements
from certquant.utils.errors import CertquantError
from linear_models import LinearTwoClass

SIGMA, SHAPE = 0.5, (1, 4, 4)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield


def _direction(seed: int) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))


def linear_with(direction: torch.Tensor, p1: float, x: torch.Tensor) -> tuple[LinearTwoClass, float]:
    """f(x) = [w.x + b > 0] with P[f(x + e) = 1] = p1 exactly; its smoothed classifier's true radius at x."""
    norm_w = float(direction.norm())
    margin = float(norm.ppf(p1)) * SIGMA * norm_w
    return LinearTwoClass(direction, margin - float((direction * x).sum())), abs(margin) / norm_w


def closed_form_pair(p: float, p_prime: float, theta: float) -> tuple[LinearTwoClass, LinearTwoClass, torch.Tensor, float]:
    """Base f (P[f = 1] = p) and approximation f' (P[f' = 1] = p_prime, normal rotated by theta from f's), the image
    x, and the true radius of f''s smoothed classifier (class 1 when p_prime > 1/2). theta > 0 makes f and f'
    disagree both ways, so the one-sided disparity is smaller than the two-sided one."""
    x = torch.full(SHAPE, 0.5)
    w = _direction(7)
    v = _direction(8)
    v = v - (v * w).sum() / w.norm() ** 2 * w
    w_prime = math.cos(theta) * w + math.sin(theta) * float(w.norm()) * v / v.norm()
    f, _ = linear_with(w, p, x)
    f_prime, radius = linear_with(w_prime, p_prime, x)
    return f, f_prime, x, radius


CASES = [  # (p, p', theta, gamma, n_p, branches taken): zeta branch with f' inside f (tight), with disagreements
    # both ways, direct branch, and p straddling gamma so both branches occur
    pytest.param(0.8, 0.75, 0.0, 0.99, 400, {BRANCH_ZETA}, id="zeta-nested"),
    pytest.param(0.8, 0.78, 0.3, 0.99, 400, {BRANCH_ZETA}, id="zeta-rotated"),
    pytest.param(0.995, 0.97, 0.2, 0.9, 400, {BRANCH_DIRECT}, id="direct"),
    pytest.param(0.993, 0.98, 0.1, 0.99, 400, {BRANCH_ZETA, BRANCH_DIRECT}, id="both-branches"),
]
ALPHA, ALPHA_ZETA, N0, N, TRIALS = 0.05, 0.05, 50, 1000, 500  # large alphas so a broken bound shows


@pytest.mark.slow
@pytest.mark.parametrize("p, p_prime, theta, gamma, n_p, branches", CASES)
def test_irs_radius_exceeds_true_radius_at_most_alpha_plus_alpha_zeta(p, p_prime, theta, gamma, n_p, branches):
    f, f_prime, x, true_radius = closed_form_pair(p, p_prime, theta)
    violations = {d: 0 for d in DISPARITIES}
    radii = {d: 0.0 for d in DISPARITIES}
    taken = set()
    for seed in range(TRIALS):
        cache = certify(f, x, SIGMA, n0=N0, n=N, alpha=ALPHA, batch_size=250, seed=seed, keep_cache=True).cache
        certs = {d: certify_incremental(f_prime, cache, x, SIGMA, n_p, gamma, ALPHA_ZETA, d) for d in DISPARITIES}
        for d, cert in certs.items():
            wrong = cert.label != ABSTAIN and (cert.label != 1 or cert.radius > true_radius + 1e-9)
            violations[d] += wrong
            radii[d] += cert.radius / TRIALS
            taken.add(cert.branch)
        assert certs["one-sided"].radius >= certs["two-sided"].radius  # never looser, sample by sample
    assert taken == branches
    limit = binom.ppf(1 - 1e-4, TRIALS, ALPHA + ALPHA_ZETA)  # the count is at most Binomial(TRIALS, alpha + alpha_z)
    for d in DISPARITIES:
        assert violations[d] <= limit, (d, violations[d], limit)
        assert radii[d] > 0.5 * true_radius, (d, radii[d], true_radius)  # and the bound is not vacuous


def test_one_sided_is_sound_where_two_sided_is_loose():
    """f' rotated: disagreements both ways; the one-sided bound ignores the f = 0, f' = 1 ones and is tighter."""
    f, f_prime, x, true_radius = closed_form_pair(0.8, 0.8, 0.4)
    cache = certify(f, x, SIGMA, n0=N0, n=4000, alpha=0.001, batch_size=1000, seed=1, keep_cache=True).cache
    two = certify_incremental(f_prime, cache, x, SIGMA, 4000, disparity="two-sided")
    one = certify_incremental(f_prime, cache, x, SIGMA, 4000, disparity="one-sided")
    assert one.n_d < 0.7 * two.n_d and one.zeta < two.zeta and one.radius > two.radius
    assert one.radius <= true_radius


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(0)
    return build("small-cnn").eval()


@pytest.fixture(scope="module")
def cnn_cert(cnn):
    x = torch.rand(1, 28, 28, generator=torch.Generator().manual_seed(1))
    return x, certify(cnn, x, 0.25, n0=10, n=300, alpha=0.001, batch_size=120, seed=4, keep_cache=True)


@pytest.mark.parametrize("n_p", [1, 100, 130, 300])
def test_zeta_is_the_zero_disagreement_floor_when_approx_is_base(cnn, cnn_cert, n_p):
    x, cert = cnn_cert
    for disparity in DISPARITIES:
        irs = certify_incremental(cnn, cert.cache, x, 0.25, n_p, alpha_zeta=0.001, disparity=disparity)
        assert irs.n_d == 0 and irs.n_p == n_p
        assert math.isclose(irs.zeta, 1 - 0.001 ** (1 / n_p), rel_tol=1e-9)
        mask = samples_to_evaluate(cert.cache, n_p, disparity=disparity)
        seen = cert.cache.predictions[:n_p] if mask is None else cert.cache.predictions[:n_p][mask]
        assert irs.evaluated == len(seen) and irs.counts == torch.bincount(seen.long(), minlength=10).tolist()


def test_one_sided_runs_f_prime_only_where_f_said_c_a(cnn, cnn_cert):
    """The one-sided zeta branch skips the samples f did not classify as c_A (they cannot count in n_d) and gives
    the certificate of running f' on all n_p samples; the two-sided disparity and the direct branch skip nothing."""
    x, cert = cnn_cert
    cache = cert.cache
    assert cache.pa_lower < 0.99  # an untrained CNN: the zeta branch
    torch.manual_seed(3)
    f_prime = build("small-cnn").eval()
    f_prime.load_state_dict(cnn.state_dict())
    with torch.no_grad():
        for param in f_prime.parameters():
            param.add_(0.05 * torch.randn_like(param))  # disagrees with f on some samples
    with torch.inference_mode():
        everywhere = torch.cat([f_prime(b).argmax(1) for b in cache.noisy_batches(x, limit=300)])
    mask = samples_to_evaluate(cache, 300, disparity="one-sided")
    assert mask is not None and 0 < int(mask.sum()) < 300
    assert torch.equal(mask, cache.predictions[:300].long() == cache.c_a)
    skipped = certify_incremental(f_prime, cache, x, 0.25, 300, disparity="one-sided")
    full = incremental_certificate(cache, everywhere, 10, disparity="one-sided")
    assert skipped.evaluated == int(mask.sum()) and full.evaluated == 300
    assert (skipped.label, skipped.radius, skipped.n_d, skipped.zeta) == (full.label, full.radius, full.n_d, full.zeta)
    assert skipped.n_d > 0
    assert samples_to_evaluate(cache, 300, disparity="two-sided") is None
    assert samples_to_evaluate(replace(cache, pa_lower=0.995), 300, disparity="one-sided") is None
    # a mask that leaves out a sample that counts (f said c_A there) is refused
    bad = mask.clone()
    bad[int(mask.nonzero()[0])] = False
    with pytest.raises(CertquantError, match="skipped samples that count"):
        incremental_certificate(cache, everywhere[bad], 10, disparity="one-sided", evaluated=bad)
    with pytest.raises(CertquantError, match="skipped samples that count"):
        incremental_certificate(cache, everywhere[mask], 10, disparity="two-sided", evaluated=mask)


def test_branches_follow_gamma_and_formulas(cnn, cnn_cert):
    x, cert = cnn_cert
    cache = cert.cache
    preds = cache.predictions[:200].clone()
    preds[:3] = (preds[:3].long() + 1).remainder(10).to(preds.dtype)  # three disagreements
    # zeta branch: pA_lower - zeta
    low = replace(cache, pa_lower=0.9)
    c = incremental_certificate(low, preds, 10, gamma=0.99, alpha_zeta=0.01)
    zeta = disparity_bound(3, 200, 0.01)
    assert c.branch == BRANCH_ZETA and c.n_d == 3 and c.zeta == zeta and c.pa_lower == pytest.approx(0.9 - zeta)
    assert c.label == cache.c_a and c.radius == pytest.approx(0.25 * norm.ppf(0.9 - zeta))
    # direct branch: Clopper-Pearson on f''s own counts at alpha + alpha_zeta
    high = replace(cache, pa_lower=0.995)
    c = incremental_certificate(high, preds, 10, gamma=0.99, alpha_zeta=0.01)
    n_a = int((preds.long() == cache.c_a).sum())
    p_low = clopper_pearson_lower(n_a, 200, cache.alpha + 0.01)
    assert c.branch == BRANCH_DIRECT and c.n_a == n_a and c.pa_lower == p_low
    assert c.radius == (0.25 * norm.ppf(p_low) if p_low > 0.5 else 0.0)
    # abstain when pA_lower - zeta <= 1/2
    c = incremental_certificate(replace(cache, pa_lower=0.51), preds, 10, gamma=0.99, alpha_zeta=0.01)
    assert c.label == ABSTAIN and c.radius == 0.0


def test_disagreement_counts():
    base = torch.tensor([1, 1, 1, 0, 2, 2], dtype=torch.uint8)
    approx = torch.tensor([1, 0, 2, 1, 2, 1], dtype=torch.uint8)
    assert count_disagreements(base, approx, 1, "two-sided") == 4
    assert count_disagreements(base, approx, 1, "one-sided") == 2  # f = 1 and f' != 1
    assert disparity_bound(6, 6, 0.01) == 1.0


def test_bad_inputs_one_line(cnn, cnn_cert):
    x, cert = cnn_cert
    cases = [
        (dict(disparity="three-sided"), "unknown disparity 'three-sided'"),
        (dict(n_p=301), "n_p = 301 exceeds the 300 cached"),
        (dict(n_p=0), "n_p must be an integer >= 1"),
        (dict(sigma=0.5), "the cache was made at sigma 0.25, not 0.5"),
        (dict(gamma=1.5), "gamma must be in (0, 1]"),
        (dict(alpha_zeta=0.0), "alpha_zeta must be in (0, 1)"),
    ]
    for kwargs, message in cases:
        args = dict(sigma=0.25, n_p=100) | kwargs
        with pytest.raises(CertquantError) as info:
            certify_incremental(cnn, cert.cache, x, **args)
        assert message in str(info.value) and "\n" not in str(info.value)
    torch.manual_seed(1)
    three_classes = build("small-cnn", num_classes=3).eval()
    with pytest.raises(CertquantError, match="made with another model"):
        certify_incremental(three_classes, replace(cert.cache, predictions=torch.full((300,), 9, dtype=torch.uint8)),
                            x, 0.25, 100)
    with pytest.raises(CertquantError, match="shape"):
        certify_incremental(cnn, cert.cache, x[:, :10], 0.25, 100, input_shape=(1, 28, 28))
