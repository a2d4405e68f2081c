"""The IRS ACR estimators of the search (two-sided and one-sided disparity), wired to certify_incremental."""

from __future__ import annotations

import pytest

from certquant.quant import Policy
from certquant.search.evaluators import EvalConfig, PolicyEvaluator, arq_reward
from certquant.smoothing.config import CertifyConfig

SIGMA = 0.25  # the noise the search fixtures' CNN was trained with (tests/search/conftest.py)

TINY = dict(n_p=100, n_fp=400, calib_images=64)


def _evaluator(model, search_set, **kwargs) -> PolicyEvaluator:
    images, labels, idx = search_set
    return PolicyEvaluator(
        model,
        SIGMA,
        images,
        labels,
        idx,
        EvalConfig(**{**TINY, **kwargs}),
        certify_config=CertifyConfig(n0=20, batch=100),
        arch="small-cnn",
    )


def test_irs_estimators_score_candidates(trained_cnn, search_set):
    two = _evaluator(trained_cnn, search_set, estimator="irs")
    one = _evaluator(trained_cnn, search_set, estimator="irs-one-sided")
    w8 = Policy.uniform(two.layers, 8, arch="small-cnn")
    t8, o8 = two(w8), one(w8)
    assert t8["estimator"] == "irs" and o8["estimator"] == "irs-one-sided"
    assert t8["reward"] == pytest.approx(
        arq_reward(t8["acr"], t8["clean_accuracy"], t8["acr_fp32"], t8["clean_accuracy_fp32"])
    )
    assert t8["acr"] > 0 and o8["acr"] >= t8["acr"]  # one-sided is never looser (same samples, same cache)
    w2 = two(Policy.uniform(two.layers, 2, arch="small-cnn"))
    assert w2["acr"] < t8["acr"]
    assert two(w8)["acr"] == t8["acr"]  # deterministic: same cache, same regenerated noise
