"""The paired estimators (search/paired.py): exact counts, the stated bias and variance of p'_hat on closed-form
linear models, and their use as the search's ACR estimator."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import chi2, multivariate_normal, norm

from certquant.quant import Policy
from certquant.search import ESTIMATORS, EvalConfig, PolicyEvaluator, paired_estimate
from certquant.search.evaluators import SearchSet
from certquant.smoothing.config import CertifyConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "smoothing"))
from linear_models import LinearTwoClass

SIGMA = 0.25  # the search fixtures' CNN (tests/search/conftest.py)


def test_paired_estimate_counts_exactly():
    base = torch.tensor([1, 1, 1, 0, 2, 1, 1, 1], dtype=torch.uint8)  # f, first m = 6 are compared
    cand = torch.tensor([1, 0, 1, 1, 1, 2])  # f' on the same 6 samples
    est = paired_estimate(base, cand, c_a=1, n_a=900, n=1000)
    # d1: f = 1, f' != 1 at j = 1, 5; d2: f != 1, f' = 1 at j = 3, 4
    assert (est.d1, est.d2, est.m) == (2, 2, 6)
    assert est.p_hat == pytest.approx(0.9)
    est = paired_estimate(base, torch.tensor([0, 0, 1, 0, 2, 1]), c_a=1, n_a=900, n=1000)
    assert (est.d1, est.d2) == (2, 0) and est.p_hat == pytest.approx(0.9 - 2 / 6)


def _linear_pair():
    """f and a perturbed f' (2 classes, 1x4x4 inputs) with P[f = 1] ~ 0.93, P[f' = 1] ~ 0.93, P[f != f'] ~ 0.024 at
    sigma 0.5, all in closed form: z = w.(x + e) + b is normal; (z, z') bivariate normal with corr w.w' / |w||w'|."""
    x = torch.full((1, 4, 4), 0.5)
    w = torch.ones(1, 4, 4) / 4
    d = torch.zeros(1, 4, 4)
    d[0, 0, :], d[0, 1, :] = 0.08, -0.08
    f, g = LinearTwoClass(w, -1.25), LinearTwoClass(w + d, -1.25)
    sigma = 0.5
    a1 = float((w * x).sum() - 1.25) / (sigma * float(w.norm()))
    a2 = float(((w + d) * x).sum() - 1.25) / (sigma * float((w + d).norm()))
    rho = float((w * (w + d)).sum() / (w.norm() * (w + d).norm()))
    p_a, p_b = norm.cdf(a1), norm.cdf(a2)
    p_ab = multivariate_normal(mean=[0, 0], cov=[[1, rho], [rho, 1]]).cdf([a1, a2])
    return f, g, x, sigma, p_a, p_b, p_ab


def test_paired_estimate_is_unbiased_with_the_stated_variance():
    """T independent trials (one search 'image' per seed): mean within 4 standard errors of p' (a bias of 4 SE, 0.005
    here, fails with probability > 0.5), sample variance inside the chi-square 99.9% interval of the stated
    Var = Var(D)(1/m - 1/n) + Var(B)/n, and below from scratch's Var(B)/m."""
    f, g, x, sigma, p_a, p_b, p_ab = _linear_pair()
    trials, m, n = 400, 100, 2000
    estimator = ESTIMATORS["paired"](
        sigma, EvalConfig(estimator="paired", n_p=m, n_fp=n), CertifyConfig(n0=20, batch=500), 0, torch.device("cpu")
    )
    search = SearchSet(
        x.expand(trials, 1, 4, 4).clone(), torch.ones(trials, dtype=torch.long), [1000 + t for t in range(trials)]
    )
    estimator.prepare(f, search)
    p_hat = np.array([estimator.estimate(g, k, search.images[k]).p_hat for k in range(trials)])
    var_d = (p_a + p_b - 2 * p_ab) - (p_b - p_a) ** 2
    var_b = p_b * (1 - p_b)
    stated = var_d * (1 / m - 1 / n) + var_b / n
    assert abs(p_hat.mean() - p_b) < 4 * np.sqrt(stated / trials)
    ratio = (trials - 1) * p_hat.var(ddof=1) / stated
    assert chi2.ppf(0.0005, trials - 1) < ratio < chi2.ppf(0.9995, trials - 1)
    assert stated < 0.6 * var_b / m


def _evaluator(model, search_set, **kwargs) -> PolicyEvaluator:
    images, labels, idx = search_set
    cfg = EvalConfig(**{"n_p": 100, "n_fp": 400, "calib_images": 64, **kwargs})
    return PolicyEvaluator(
        model, SIGMA, images, labels, idx, cfg, certify_config=CertifyConfig(n0=20, batch=100), arch="small-cnn"
    )


@pytest.mark.parametrize("estimator", ["paired", "paired-margin"])
def test_paired_estimators_rank_and_repeat(trained_cnn, search_set, estimator):
    ev = _evaluator(trained_cnn, search_set, estimator=estimator)
    w8 = ev(Policy.uniform(ev.layers, 8, arch="small-cnn"))
    w2 = ev(Policy.uniform(ev.layers, 2, arch="small-cnn"))
    assert w8["estimator"] == estimator and w8["acr"] > w2["acr"]
    assert ev(Policy.uniform(ev.layers, 8, arch="small-cnn"))["acr"] == w8["acr"]  # same cache, same noise
    assert w8["forward_samples"] == 12 * 100  # n_p per image, no selection samples
    assert w8["images_scored"] == 12


def test_paired_radius_of_fp32_itself_is_the_cp_radius_at_n_p(trained_cnn, search_set):
    """f' = f: no disagreement, p'_hat = n_A / n_fp, the radius CERTIFY gives at n_p with that share of c_A."""
    from certquant.smoothing import certified_radius, clopper_pearson_lower

    ev = _evaluator(trained_cnn, search_set, estimator="paired")
    ev.reference()
    scorer = ev.scorer
    cache = scorer.caches[0]
    label, radius = scorer.certify_image(trained_cnn, 0, ev.search.images[0], ev.search.seeds[0])
    share = cache.n_a / cache.n
    expected = certified_radius(clopper_pearson_lower(share * 100, 100, 0.001), SIGMA)
    assert radius == pytest.approx(expected)
    assert (label == cache.c_a) == (radius > 0)


def test_packed_estimates_equal_one_image_at_a_time(trained_cnn, search_set):
    ev = _evaluator(trained_cnn, search_set, estimator="paired", max_forward=250)  # 2 images and a half per pass
    ev.reference()
    qmodel = ev.quantized(Policy.uniform(ev.layers, 3, arch="small-cnn"))
    packed = ev.scorer.estimate_many(qmodel, ev.search, list(range(12)))
    alone = [ev.scorer.estimate(qmodel, k, ev.search.images[k]) for k in range(12)]
    assert packed == alone
