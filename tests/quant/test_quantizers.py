"""Fake-quantization ops and quantizer modules: levels, error vs bits, STE gradients, idempotence."""

import pytest
import torch

from certquant.quant.ops import fake_quant_signed, fake_quant_unsigned, mse_clip, round_ste, scale_for
from certquant.quant.quantizers import ActQuantizer, QuantConv2d, QuantLinear, RangeObserver, WeightQuantizer


def _weight(seed=0, shape=(16, 8, 3, 3)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_worked_examples():
    s = scale_for(torch.tensor(1.0), 4, signed=True)
    assert torch.allclose(s, torch.tensor(1 / 7))
    assert torch.allclose(fake_quant_signed(torch.tensor([0.3, 1.4, -2.0]), s, 4), torch.tensor([2 / 7, 1.0, -1.0]))
    su = scale_for(torch.tensor(1.5), 4, signed=False)
    assert torch.allclose(su, torch.tensor(0.1))
    assert torch.allclose(fake_quant_unsigned(torch.tensor([0.26, -0.2, 9.0]), su, 4), torch.tensor([0.3, 0.0, 1.5]))


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
def test_weight_channel_takes_at_most_2b_minus_1_values(bits):
    w = _weight(shape=(8, 64, 5, 5))
    quantizer = WeightQuantizer(bits, 8)
    quantizer.calibrate(w)
    wq = quantizer(w)
    for channel in range(8):
        levels = torch.unique(wq[channel])
        assert len(levels) <= 2**bits - 1
        # every value is an integer multiple of the channel's scale within +-(2^(b-1) - 1)
        k = levels / quantizer.scale[channel]
        assert torch.allclose(k, k.round(), atol=1e-4) and k.abs().max() <= 2 ** (bits - 1) - 1 + 1e-4


def test_one_bit_weights_are_binary():
    w = _weight()
    quantizer = WeightQuantizer(1, 16)
    quantizer.calibrate(w)
    assert all(len(torch.unique(quantizer(w)[c])) == 2 for c in range(16))


def test_error_falls_as_bits_grow():
    w = _weight(shape=(32, 16, 3, 3))
    x = torch.relu(torch.randn(20000, generator=torch.Generator().manual_seed(1))) ** 1.5
    w_err, a_err = [], []
    for bits in (2, 3, 4, 5, 6, 8, 12, 16):
        wq = WeightQuantizer(bits, 32)
        wq.calibrate(w)
        w_err.append((wq(w) - w).pow(2).mean().item())
        observer = RangeObserver()
        observer.observe(x)
        aq = ActQuantizer(bits)
        aq.set_range(observer.choose_clip(bits), observer.signed)
        a_err.append((aq(x) - x).pow(2).mean().item())
    assert all(a > b for a, b in zip(w_err, w_err[1:])), w_err
    assert all(a > b for a, b in zip(a_err, a_err[1:])), a_err
    assert w_err[-1] < 1e-8


def test_mse_clip_beats_max_at_low_bits():
    w = _weight(shape=(16, 256))
    for bits in (2, 3, 4):
        clip = mse_clip(w, bits, signed=True)
        top = w.abs().amax(dim=1)
        assert (clip <= top).all() and (clip < top).any()

        def err(c):
            return (fake_quant_signed(w, scale_for(c, bits, True).unsqueeze(1), bits) - w).pow(2).sum()

        assert err(clip) < err(top)


def test_signedness_from_calibration():
    observer = RangeObserver()
    observer.observe(torch.relu(torch.randn(1000)))
    assert not observer.signed
    aq = ActQuantizer(4)
    aq.set_range(observer.choose_clip(4), observer.signed)
    assert aq.qmin.item() == 0 and aq.qmax.item() == 15
    assert (aq(torch.tensor([-1.0, 0.0])) == 0).all()  # negatives clip to 0 when unsigned
    observer.observe(-torch.rand(10))
    assert observer.signed
    aq.set_range(observer.choose_clip(4), observer.signed)
    assert aq.qmin.item() == -7 and aq.qmax.item() == 7 and aq(torch.tensor([-0.5])) < 0


def test_gradients_reach_weights_through_rounding():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3)
    q = QuantConv2d.from_float(conv, 3, 4)
    x = torch.rand(2, 3, 8, 8)
    q.weight_quantizer.calibrate(q.weight, "max")
    q.input_quantizer.set_range(1.0, signed=False)
    q(x).sum().backward()
    assert q.weight.grad is not None and q.weight.grad.abs().sum() > 0
    # with c = max|w| nothing is clipped, so the STE gradient equals that of the conv at the quantized weight
    xq = q.input_quantizer(x).detach()
    wq = q.quantized_weight().detach().requires_grad_(True)
    torch.nn.functional.conv2d(xq, wq, conv.bias).sum().backward()
    assert torch.allclose(q.weight.grad, wq.grad, atol=1e-5)
    assert round_ste(torch.tensor(0.4, requires_grad=True)).item() == 0.0


def test_input_gradient_is_zero_outside_the_clip_range():
    aq = ActQuantizer(4)
    aq.set_range(1.0, signed=False)
    x = torch.tensor([-0.5, 0.5, 2.0], requires_grad=True)
    aq(x).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 0.0]


def test_quantizing_weights_twice_changes_nothing():
    for bits in (2, 3, 4, 8):
        w = _weight(seed=bits)
        quantizer = WeightQuantizer(bits, 16)
        quantizer.calibrate(w)
        once = quantizer(w)
        assert torch.equal(quantizer(once), once)
        recalibrated = WeightQuantizer(bits, 16)
        recalibrated.calibrate(once)  # calibrating on already-quantized weights finds the same grid
        assert torch.equal(recalibrated(once), once)


def test_32_bits_is_identity_and_modules_keep_their_type():
    linear = torch.nn.Linear(5, 3)
    q = QuantLinear.from_float(linear, 32, 32)
    x = torch.randn(4, 5)
    assert torch.equal(q(x), linear(x))
    assert isinstance(q, torch.nn.Linear) and q.weight is linear.weight
    assert isinstance(q.to_float(), torch.nn.Linear) and type(q.to_float()) is torch.nn.Linear


def test_round_without_gradient_equals_the_straight_through_values():
    """The no-grad fast path (plain round) gives bit-identical values to x + (round(x) - x) of the STE path."""
    x = torch.randn(200_000, generator=torch.Generator().manual_seed(0)) * 300
    x = torch.cat([x, torch.arange(-40, 40) / 2.0, torch.tensor([0.49999997, -0.49999997, 2.5, -1.5])])
    with_grad = round_ste(x.clone().requires_grad_(True)).detach()
    with torch.no_grad():
        plain = round_ste(x)
    assert torch.equal(plain, with_grad) and torch.equal(plain, torch.round(x))
