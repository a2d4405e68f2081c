"""Candidate evaluation: quantize + noisy calibration, score on the search set, every reward term logged."""

from __future__ import annotations

import pytest
import torch

from certquant.quant import Policy, quantizable_layers
from certquant.search.evaluators import (
    ESTIMATORS,
    ACREstimator,
    EvalConfig,
    PolicyEvaluator,
    arq_reward,
    haq_reward,
    register_estimator,
)
from certquant.smoothing import certify
from certquant.smoothing.config import CertifyConfig
from certquant.utils.errors import CertquantError

SIGMA = 0.25  # the noise the search fixtures' CNN was trained with (tests/search/conftest.py)

TINY = dict(estimator="scratch", n_p=100, calib_images=64)  # scratch: this file tests it (paired: test_paired.py)
CERTIFY = CertifyConfig(n0=20, batch=120)


def evaluator(model, search_set, reward="arq", **kwargs) -> PolicyEvaluator:
    images, labels, idx = search_set
    return PolicyEvaluator(
        model,
        SIGMA,
        images,
        labels,
        idx,
        EvalConfig(**{**TINY, **kwargs}),
        reward=reward,
        certify_config=CERTIFY,
        arch="small-cnn",
    )


def test_rewards_are_the_documented_formulas():
    """R_arq = lambda [(ACR_q - ACR_fp) + w (acc_q - acc_fp)], R_haq = lambda (top1_q - top1_fp): exact values."""
    assert arq_reward(0.50, 0.80, 0.55, 0.90) == pytest.approx(0.1 * (-0.05 - 0.10))
    assert arq_reward(0.50, 0.80, 0.55, 0.90, lam=1.0, clean_weight=0.0) == pytest.approx(-0.05)
    assert arq_reward(0.60, 0.95, 0.55, 0.90, lam=0.5, clean_weight=2.0) == pytest.approx(0.5 * (0.05 + 0.10))
    assert haq_reward(0.70, 0.75) == pytest.approx(-0.005)
    assert haq_reward(0.70, 0.60, lam=2.0) == pytest.approx(0.2)


def test_arq_reward_terms_and_determinism(trained_cnn, search_set):
    ev = evaluator(trained_cnn, search_set)
    layers = ev.layers
    ref = ev.reference()
    assert ref["acr"] > 0.3 and ref["clean_accuracy"] > 0.8  # the trained CNN certifies the easy synthetic images
    w8 = ev(Policy.uniform(layers, 8, arch="small-cnn"))
    w2 = ev(Policy.uniform(layers, 2, arch="small-cnn"))
    for key in (
        "reward",
        "acr",
        "acr_fp32",
        "clean_accuracy",
        "clean_accuracy_fp32",
        "abstain_rate",
        "lambda",
        "bitops_fraction",
        "seconds_quantize",
        "seconds_score",
    ):
        assert key in w8
    assert w8["reward"] == pytest.approx(
        0.1 * ((w8["acr"] - ref["acr"]) + (w8["clean_accuracy"] - ref["clean_accuracy"]))
    )
    assert w2["clean_accuracy"] != ref["clean_accuracy"]  # the clean term is exercised, not tied away
    assert abs(w8["acr"] - ref["acr"]) < 0.1  # 8 bits with noisy calibration barely changes the certificates
    assert w2["reward"] < w8["reward"]  # 2-bit everything hurts
    again = ev(Policy.uniform(layers, 8, arch="small-cnn"))
    assert {k: v for k, v in again.items() if not k.startswith("seconds")} == {
        k: v for k, v in w8.items() if not k.startswith("seconds")
    }


def test_haq_reward_and_clean_term(trained_cnn, search_set):
    ev = evaluator(trained_cnn, search_set, "haq", noise_copies=4)
    layers = ev.layers
    terms = ev(Policy.uniform(layers, 2, arch="small-cnn"))
    assert terms["reward"] == pytest.approx(0.1 * (terms["noisy_accuracy"] - terms["noisy_accuracy_fp32"]))
    assert "acr" not in terms

    ev = evaluator(trained_cnn, search_set, clean_weight=0.5)
    terms = ev(Policy.uniform(layers, 3, arch="small-cnn"))
    expected = 0.1 * (
        (terms["acr"] - terms["acr_fp32"]) + 0.5 * (terms["clean_accuracy"] - terms["clean_accuracy_fp32"])
    )
    assert terms["reward"] == pytest.approx(expected)


def test_finetune_steps_run(trained_cnn, search_set):
    ev = evaluator(trained_cnn, search_set, "haq", noise_copies=2, finetune_steps=2, finetune_batch=8)
    before = [p.clone() for p in trained_cnn.parameters()]
    terms = ev(Policy.uniform(ev.layers, 4, arch="small-cnn"))
    assert 0 <= terms["noisy_accuracy"] <= 1
    assert all(torch.equal(a, b) for a, b in zip(before, trained_cnn.parameters()))  # the base model is untouched


def test_estimator_is_a_strategy(trained_cnn, search_set):
    calls = []

    @register_estimator
    class Counting(ACREstimator):  # only certify_image: the base class loops over the search images
        name = "counting-test"

        def certify_image(self, model, k, x, seed):
            calls.append(k)
            c = self.certify_config
            cert = certify(model, x, self.sigma, c.n0, self.config.n_p, c.alpha, seed=seed)
            return cert.label, cert.radius

    try:
        ev = evaluator(trained_cnn, search_set, estimator="counting-test")
        ev(Policy.uniform(ev.layers, 8, arch="small-cnn"))
        assert len(calls) == 2 * len(search_set[0])  # FP32 reference, then the candidate
    finally:
        ESTIMATORS.pop("counting-test")


def test_scratch_batches_search_images_without_changing_certificates(trained_cnn, search_set):
    """The scratch estimator certifies all search images at once (certify_many): the same as one by one."""
    ev = evaluator(trained_cnn, search_set, max_forward=5000)
    qmodel = ev.quantized(Policy.uniform(ev.layers, 4, arch="small-cnn"))
    seeds = ev.search.seeds
    one_by_one = [ev.scorer.certify_image(qmodel, k, ev.images[k], seeds[k]) for k in range(len(ev.images))]
    assert ev.scorer.certify_all(qmodel, ev.images, seeds) == one_by_one


def test_bad_evaluator_settings(trained_cnn, search_set):
    with pytest.raises(CertquantError, match="unknown reward"):
        evaluator(trained_cnn, search_set, "accuracy")
    with pytest.raises(CertquantError, match="unknown ACR estimator"):
        evaluator(trained_cnn, search_set, estimator="magic")
    with pytest.raises(CertquantError, match="n_p = 100 must be <= n_fp = 50"):
        evaluator(trained_cnn, search_set, estimator="irs", n_fp=50)  # IRS reuses n_p of the n_fp FP32 samples
    images, labels, idx = search_set
    with pytest.raises(CertquantError, match="search set"):
        PolicyEvaluator(trained_cnn, SIGMA, images, labels[:3], idx, EvalConfig(**TINY), certify_config=CERTIFY)
    layers = quantizable_layers(trained_cnn, (1, 28, 28))
    with pytest.raises(CertquantError):
        evaluator(trained_cnn, search_set)(Policy.uniform(layers[:2], 4))  # a policy for other layers
