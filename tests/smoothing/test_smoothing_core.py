"""CERTIFY and PREDICT on one image: determinism, the IRS cache, abstention, eval mode and input validation."""

from __future__ import annotations

import pytest
import torch

from certquant.models import build
from certquant.smoothing import ABSTAIN, ESTIMATION, batch_seed, certify, certify_many, predict, sample_counts
from certquant.smoothing.core import _evaluating
from certquant.utils.errors import CertquantError


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(0)
    return build("small-cnn")


def test_same_seed_same_certificate_other_seed_other_noise(linear_case):
    case = linear_case(0.7)
    a = certify(case.model, case.x, case.sigma, n0=20, n=1000, alpha=0.01, batch_size=300, seed=5)
    b = certify(case.model, case.x, case.sigma, n0=20, n=1000, alpha=0.01, batch_size=300, seed=5)
    c = certify(case.model, case.x, case.sigma, n0=20, n=1000, alpha=0.01, batch_size=300, seed=6)
    assert (a.label, a.radius, a.pa_lower, a.counts) == (b.label, b.radius, b.pa_lower, b.counts)
    assert a.counts != c.counts
    assert sum(a.counts) == 1000 and a.n_a == a.counts[a.c_a] and a.label == 1 and a.radius > 0


def test_cache_regenerates_estimation_samples_bit_identically(cnn):
    x = torch.rand(1, 28, 28, generator=torch.Generator().manual_seed(1))
    cert = certify(cnn, x, 0.5, n0=10, n=250, alpha=0.01, batch_size=100, seed=11, keep_cache=True)
    cache = cert.cache
    assert cache is not None and cache.predictions.dtype == torch.uint8 and cache.predictions.shape == (250,)
    assert (cache.c_a, cache.n_a, cache.pa_lower) == (cert.c_a, cert.n_a, cert.pa_lower)
    assert cache.batch_seeds == [batch_seed(11, ESTIMATION, b) for b in range(3)] and cache.device == "cpu"
    assert torch.bincount(cache.predictions.long(), minlength=10).tolist() == cert.counts
    n_p = 130  # a prefix cutting through batch 1
    with torch.inference_mode():
        again = torch.cat([cnn(batch).argmax(1) for batch in cache.noisy_batches(x, limit=n_p)])
    assert torch.equal(again.to(torch.uint8), cache.predictions[:n_p])
    # the library sampler with limit gives the same predictions
    with _evaluating(cnn):
        counts, preds = sample_counts(cnn, x, 0.5, 250, 100, 11, ESTIMATION, keep_predictions=True, limit=n_p)
    assert torch.equal(preds, cache.predictions[:n_p]) and int(counts.sum()) == n_p
    # a mask classifies only the samples it marks, each with the noise it has without the mask
    only = torch.arange(n_p) % 3 == 1
    with _evaluating(cnn):
        counts, preds = sample_counts(
            cnn, x, 0.5, 250, 100, 11, ESTIMATION, keep_predictions=True, limit=n_p, only=only
        )
    assert torch.equal(preds, cache.predictions[:n_p][only]) and int(counts.sum()) == int(only.sum())


def test_abstains_when_classes_tie(linear_case):
    case = linear_case(0.5)
    cert = certify(case.model, case.x, case.sigma, n0=50, n=2000, alpha=0.001, batch_size=1000)
    assert cert.label == ABSTAIN and cert.radius == 0.0 and cert.pa_lower < 0.5
    assert predict(case.model, case.x, case.sigma, n=2000, alpha=0.001, batch_size=1000, seed=0) == ABSTAIN


def test_predict_confident_class(linear_case):
    for p1, expected in ((0.99, 1), (0.01, 0)):
        case = linear_case(p1)
        assert predict(case.model, case.x, case.sigma, n=500, alpha=0.001, batch_size=250, seed=1) == expected


def test_eval_mode_restored_and_grad_free(cnn):
    cnn.train()
    certify(cnn, torch.rand(1, 28, 28), 0.25, n0=5, n=10, batch_size=10)
    assert cnn.training
    cnn.eval()


def test_bad_inputs_raise_one_line_errors(cnn, linear_case):
    x = torch.rand(1, 28, 28)
    bad_calls = [
        (dict(sigma=0.0), "sigma must be > 0"),
        (dict(sigma=-1.0), "sigma must be > 0"),
        (dict(alpha=0.0), "alpha must be in (0, 1)"),
        (dict(alpha=1.0), "alpha must be in (0, 1)"),
        (dict(n0=0), "n0 must be >= 1"),
        (dict(n=0), "n must be >= 1"),
        (dict(batch_size=0), "batch size must be >= 1"),
        (dict(seed=-3), "seed must be >= 0"),
    ]
    for kwargs, message in bad_calls:
        args = dict(sigma=0.25, n0=5, n=10, alpha=0.01, batch_size=10)
        args.update(kwargs)
        with pytest.raises(CertquantError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
            certify(cnn, x, **args)
        assert "\n" not in str(info.value)
    with pytest.raises(CertquantError, match="shape \\(C, H, W\\)"):
        certify(cnn, x[None], 0.25, n0=5, n=10)
    with pytest.raises(CertquantError, match="does not fit the model's input"):
        certify(cnn, torch.rand(3, 32, 32), 0.25, n0=5, n=10, input_shape=(1, 28, 28))
    with pytest.raises(CertquantError, match="does not fit the model") as info:  # found by the failing forward pass
        certify(cnn, torch.rand(3, 32, 32), 0.25, n0=5, n=10)
    assert "\n" not in str(info.value)
    with pytest.raises(CertquantError, match="outside \\[0, 1\\]"):
        certify(cnn, x * 4 - 2, 0.25, n0=5, n=10)
    with pytest.raises(CertquantError, match="n must be >= 1"):
        predict(cnn, x, 0.25, n=0, alpha=0.01, batch_size=10, seed=0)


@pytest.mark.parametrize("max_forward", [1, 250, 5000])
def test_certify_many_equals_certify_per_image(cnn, max_forward):
    """Packing several images' noise into one forward pass draws the same noise: the same certificates as certify."""
    images = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    seeds = [11, 12, 13, 14, 15]
    many = certify_many(
        cnn, list(images), 0.25, n0=30, n=240, alpha=0.001, batch_size=100, seeds=seeds, max_forward=max_forward
    )
    for x, seed, got in zip(images, seeds, many):
        want = certify(cnn, x, 0.25, n0=30, n=240, alpha=0.001, batch_size=100, seed=seed)
        assert (got.label, got.c_a, got.n_a, got.counts, got.pa_lower, got.radius, got.seed) == (
            want.label,
            want.c_a,
            want.n_a,
            want.counts,
            want.pa_lower,
            want.radius,
            want.seed,
        )


def test_certify_many_bad_input(cnn):
    images = list(torch.rand(2, 1, 28, 28))
    with pytest.raises(CertquantError, match="seeds"):
        certify_many(cnn, images, 0.25, n0=10, n=20, seeds=[1])
    with pytest.raises(CertquantError, match="sigma"):
        certify_many(cnn, images, 0.0, n0=10, n=20, seeds=[1, 2])
    with pytest.raises(CertquantError, match="batch"):
        certify_many(cnn, [torch.rand(2, 1, 28, 28)], 0.25, n0=10, n=20, seeds=[1])
    assert certify_many(cnn, [], 0.25, seeds=[]) == []


def test_cpu_forward_chunks_do_not_change_certificates(cnn, monkeypatch):
    """On a CPU each noise batch is classified in passes of CPU_FORWARD_CHUNK samples: same noise, same counts."""
    import certquant.smoothing.core as core

    x = torch.rand(1, 28, 28, generator=torch.Generator().manual_seed(4))
    monkeypatch.setattr(core, "CPU_FORWARD_CHUNK", 64)  # several passes per batch of 300
    chunked = certify(cnn, x, 0.5, n0=30, n=700, batch_size=300, seed=9, keep_cache=True)
    monkeypatch.setattr(core, "CPU_FORWARD_CHUNK", 10**9)
    whole = certify(cnn, x, 0.5, n0=30, n=700, batch_size=300, seed=9, keep_cache=True)
    assert chunked.counts == whole.counts and len(set(chunked.counts)) > 2
    assert torch.equal(chunked.cache.predictions, whole.cache.predictions)
