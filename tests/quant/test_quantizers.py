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


def _calibrated(layer, x, w_bits, a_bits, signed=True):
    layer.weight_quantizer.bits, layer.input_quantizer.bits = w_bits, a_bits
    layer.weight_quantizer.calibrate(layer.weight)
    layer.input_quantizer.set_range(float(x.abs().max()) * 0.8, signed)
    return layer


@pytest.mark.parametrize(("w_bits", "a_bits"), [(8, 8), (4, 4), (2, 3), (1, 2), (16, 16)])
def test_integer_evaluation_is_the_fake_quantized_layer(w_bits, a_bits):
    """Without a gradient a quantized layer evaluates conv(k_a, k_w) * float32(s_a * s_w) + bias: the same real
    number as conv(Q(x), Q(w)) + bias, with an exact accumulation (16 bits: past 2^24, so float64)."""
    torch.manual_seed(0)
    x = torch.randn(8, 8, 12, 12)
    conv = _calibrated(QuantConv2d.from_float(torch.nn.Conv2d(8, 16, 3, padding=1), w_bits, a_bits), x, w_bits, a_bits)
    linear = _calibrated(
        QuantLinear.from_float(torch.nn.Linear(32, 10), w_bits, a_bits), x[:, :4].flatten(1)[:, :32], w_bits, a_bits
    )
    for layer, inp in ((conv, x), (linear, x.flatten(1)[:, :32])):
        with torch.no_grad():
            integer = layer(inp)
        fake = layer(inp.clone().requires_grad_()).detach()  # the straight-through path
        q = layer.input_quantizer(inp).double()
        w = layer.weight_quantizer(layer.weight).detach().double()
        exact = (
            torch.nn.functional.conv2d(q, w, layer.bias.double(), padding=1)
            if isinstance(layer, QuantConv2d)
            else torch.nn.functional.linear(q, w, layer.bias.double())
        )
        scale = exact.abs().max()
        assert (integer.double() - exact).abs().max() <= 1e-6 * scale  # integer: exact sum, two roundings
        assert (fake.double() - exact).abs().max() <= 1e-5 * scale


def test_integer_levels_are_exact_integers_at_16_bits():
    """Past 2^24 the float32 sum would round: the layer accumulates in float64 (the bound is checked per call)."""
    torch.manual_seed(1)
    conv = QuantConv2d.from_float(torch.nn.Conv2d(64, 4, 3, padding=1, bias=False), 16, 16)
    x = torch.rand(2, 64, 6, 6)
    _calibrated(conv, x, 16, 16, signed=False)
    with torch.no_grad():
        out = conv(x)
    k_a, k_w = conv.input_quantizer.levels(x).double(), conv.weight_quantizer.levels(conv.weight).double()
    acc = torch.nn.functional.conv2d(k_a, k_w, padding=1)
    assert acc.abs().max() > 2**24  # the case float32 accumulation gets wrong
    from certquant.quant.quantizers import output_scale

    assert torch.equal(out, acc.float() * output_scale(conv).view(1, -1, 1, 1))


def test_prepare_makes_batch_norm_and_pooling_reproducible_and_dequantize_undoes_it():
    from certquant.models import build
    from certquant.quant import Policy, dequantize, prepare, quantizable_layers
    from certquant.quant.quantizers import AffineBatchNorm2d, SumGlobalAvgPool2d

    torch.manual_seed(0)
    model = build("resnet20", 10, 1, 28, (0.5,), (0.25,)).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    keys = list(model.state_dict())
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        before = model(x)
    prepare(model, Policy.uniform(quantizable_layers(model, (1, 28, 28)), 32, 32))  # full precision: only the ops
    kinds = {type(m) for m in model.modules()}
    assert AffineBatchNorm2d in kinds and SumGlobalAvgPool2d in kinds and torch.nn.BatchNorm2d not in kinds
    assert [k for k in model.state_dict() if "_quantizer." not in k] == keys  # batch norm keeps its keys
    with torch.no_grad():
        after = model(x)
    assert torch.allclose(after, before, atol=1e-5) and not torch.equal(after, before)  # same math, other rounding
    bn = next(m for m in model.modules() if isinstance(m, AffineBatchNorm2d))
    a, b = bn.scale_shift()
    y = torch.randn(2, bn.num_features, 5, 5)
    with torch.no_grad():
        assert torch.equal(bn(y), y * a.view(1, -1, 1, 1) + b.view(1, -1, 1, 1))
    dequantize(model)
    kinds = {type(m) for m in model.modules()}
    assert AffineBatchNorm2d not in kinds and SumGlobalAvgPool2d not in kinds
    with torch.no_grad():
        assert torch.equal(model(x), before)
