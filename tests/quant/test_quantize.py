"""quantize(): a calibrated fake-quantized deep copy that behaves like a normal model."""

import copy

import pytest
import torch

from certquant.models import build
from certquant.quant import (
    Policy,
    QuantConv2d,
    QuantLinear,
    activation_ranges,
    noisy_calibration_batch,
    prepare,
    quantizable_layers,
    quantize,
    quantized_policy,
)
from certquant.utils.errors import CertquantError


def test_noisy_calibration_batch_is_seeded_and_noisy(synthetic):
    images, _ = synthetic
    a = noisy_calibration_batch(images, 0.5, 64, seed=3)
    assert torch.equal(a, noisy_calibration_batch(images, 0.5, 64, seed=3))
    assert not torch.equal(a, noisy_calibration_batch(images, 0.5, 64, seed=4))
    assert a.shape == (64, 1, 28, 28) and a.min() < -0.5 and a.max() > 1.5  # noise is not clipped to [0, 1]
    assert noisy_calibration_batch(images[:10], 0.1, 25).shape[0] == 25  # cycles when count > images
    clean = noisy_calibration_batch(images, 0.0, 64, seed=3)
    assert 0.4 < (a - clean).std().item() < 0.6
    with pytest.raises(CertquantError):
        noisy_calibration_batch(images, -0.1, 8)


def test_original_untouched_and_structure(synthetic, make_cnn):
    model = make_cnn()
    before = copy.deepcopy(model.state_dict())
    layers = quantizable_layers(model, (1, 28, 28))
    q = quantize(model, Policy.uniform(layers, 4), noisy_calibration_batch(synthetic[0], 0.25, 64))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert type(model[1][0]) is torch.nn.Conv2d
    assert isinstance(q[1][0], QuantConv2d) and isinstance(q[1][9], QuantLinear) and not q.training
    assert quantizable_layers(q, (1, 28, 28)) == layers  # same names, shapes and costs
    assert quantized_policy(q) == Policy.uniform(layers, 4)
    keys = q.state_dict().keys()
    assert {"1.0.weight_quantizer.scale", "1.0.input_quantizer.scale", "1.0.input_quantizer.qmin"} <= set(keys)


def test_first_layer_signed_after_relu_unsigned(synthetic, make_cnn):
    model = make_cnn()
    q = quantize(
        model,
        Policy.uniform(quantizable_layers(model, (1, 28, 28)), 8),
        noisy_calibration_batch(synthetic[0], 0.25, 64),
    )
    ranges = activation_ranges(q)
    assert ranges["1.0"]["a_signed"] is True  # normalized noisy pixels can be negative
    assert ranges["1.3"]["a_signed"] is False and ranges["1.7"]["a_signed"] is False  # after ReLU
    assert ranges["1.0"]["a_clip"] > 0


def test_quantize_twice_changes_nothing(synthetic, make_cnn):
    model = make_cnn()
    layers = quantizable_layers(model, (1, 28, 28))
    calib = noisy_calibration_batch(synthetic[0], 0.25, 64)
    x = noisy_calibration_batch(synthetic[0], 0.25, 32, seed=9)
    for bits in (3, 8):
        q1 = quantize(model, Policy.uniform(layers, bits), calib)
        q2 = quantize(q1, Policy.uniform(layers, bits), calib)
        assert torch.equal(q1(x), q2(x))
        for (k, v1), v2 in zip(q1.state_dict().items(), q2.state_dict().values()):
            assert torch.equal(v1, v2), k


def test_error_vs_full_precision_falls_with_bits(synthetic, make_cnn):
    model = make_cnn()
    layers = quantizable_layers(model, (1, 28, 28))
    calib = noisy_calibration_batch(synthetic[0], 0.25, 128)
    x = noisy_calibration_batch(synthetic[0], 0.25, 64, seed=5)
    ref = model(x)
    errors = [
        (quantize(model, Policy.uniform(layers, b), calib)(x) - ref).pow(2).mean().item() for b in (2, 4, 6, 8, 16)
    ]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    full = quantize(model, Policy.uniform(layers, 32), calib)
    assert torch.equal(full(x), ref)  # 32 bits everywhere = unquantized


def test_mixed_policy_and_resnet(synthetic):
    model = build("resnet20", in_channels=1).eval()
    layers = quantizable_layers(model, (1, 32, 32))
    policy = Policy.from_lists(layers, [8] + [4] * 18 + [32], [8] + [3] * 18 + [32])
    calib = torch.randn(16, 1, 32, 32) * 0.25 + 0.5
    q = quantize(model, policy, calib)
    assert q[1].layers[3].conv1.weight_quantizer.bits == 4 and q[1].layers[3].conv1.input_quantizer.bits == 3
    assert not q[1].fc.weight_quantizer.enabled
    assert torch.isfinite(q(calib)).all()


def test_state_dict_round_trip_through_prepare(synthetic, make_cnn):
    model = make_cnn()
    layers = quantizable_layers(model, (1, 28, 28))
    policy = Policy.from_lists(layers, [8, 3, 4, 8], [8, 2, 4, 8])
    q = quantize(model, policy, noisy_calibration_batch(synthetic[0], 0.25, 64))
    fresh = prepare(make_cnn(seed=1), policy)
    fresh.load_state_dict(q.state_dict())
    x = noisy_calibration_batch(synthetic[0], 0.25, 16, seed=2)
    assert torch.equal(fresh.eval()(x), q(x))


def test_bad_policy_or_data_refused(synthetic, make_cnn):
    model = make_cnn()
    layers = quantizable_layers(model, (1, 28, 28))
    calib = noisy_calibration_batch(synthetic[0], 0.25, 8)
    with pytest.raises(CertquantError, match="does not have"):
        quantize(model, Policy({**{l.name: (4, 4) for l in layers}, "1.99": (4, 4)}), calib)
    with pytest.raises(CertquantError, match="made for architecture 'resnet20'"):
        quantize(model, Policy.uniform(layers, 4, arch="resnet20"), calib, arch="small-cnn")
    with pytest.raises(CertquantError, match="empty"):
        quantize(model, Policy.uniform(layers, 4), calib[:0])
    with pytest.raises(CertquantError, match="activation clipping"):
        quantize(model, Policy.uniform(layers, 4), calib, act_clip="kl")
