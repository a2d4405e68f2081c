"""Layers in forward order and the cost model (SPEC §4), checked against hand-computed MACs."""

import pytest
import torch

from certquant.models import build
from certquant.quant import Policy, bitops, bitops_fraction, fp32_bitops, model_size_bits, quantizable_layers
from certquant.utils.errors import CertquantError


def resnet20_expected(cin: int) -> list[tuple[str, int]]:
    """(name, MACs) of ResNet-20 at cin x 32 x 32, written out from the architecture (He et al. 2016, Sec. 4.2)."""
    rows = [("1.conv1", cin * 16 * 3 * 3 * 32 * 32)]
    block = 0
    for stage, (width, side) in enumerate(((16, 32), (32, 16), (64, 8))):
        for i in range(3):
            cin_block = width // 2 if stage > 0 and i == 0 else width
            rows.append((f"1.layers.{block}.conv1", cin_block * width * 9 * side * side))
            rows.append((f"1.layers.{block}.conv2", width * width * 9 * side * side))
            block += 1
    rows.append(("1.fc", 64 * 10))
    return rows


@pytest.mark.parametrize("cin", [1, 3])
def test_resnet20_macs_match_spec_formula(cin):
    layers = quantizable_layers(build("resnet20", in_channels=cin), (cin, 32, 32))
    assert [(l.name, l.macs) for l in layers] == resnet20_expected(cin)
    assert [l.index for l in layers] == list(range(20))
    for layer in layers:  # the SPEC formula from the recorded shapes
        kh, kw = layer.kernel_size
        formula = layer.in_channels * layer.out_channels * kh * kw * layer.out_hw[0] * layer.out_hw[1] // layer.groups
        assert layer.macs == formula
    assert layers[7].stride == (2, 2) and layers[7].in_hw == (32, 32) and layers[7].out_hw == (16, 16)
    assert layers[-1].kind == "linear" and layers[-1].kernel_size == (1, 1) and layers[-1].params == 640


@pytest.mark.parametrize("cin", [1, 3])
def test_uniform_w4a4_is_exactly_16_over_1024(cin):
    layers = quantizable_layers(build("resnet20", in_channels=cin), (cin, 32, 32))
    policy = Policy.uniform(layers, 4, 4)
    assert bitops_fraction(layers, policy) == 16 / 1024 == 0.015625
    assert bitops(layers, policy) * 64 == fp32_bitops(layers)
    assert isinstance(bitops(layers, policy), int)


def test_small_cnn_cost_and_model_size():
    layers = quantizable_layers(build("small-cnn"), (1, 28, 28))
    assert [l.macs for l in layers] == [1 * 32 * 9 * 784, 32 * 64 * 9 * 196, 3136 * 128, 128 * 10]
    assert sum(l.macs for l in layers) == 4_241_152  # SPEC: 4.2M MACs at 28x28
    policy = Policy.from_lists(layers, [8, 4, 2, 32], [8, 4, 4, 6])
    assert bitops(layers, policy) == 225792 * 64 + 3612672 * 16 + 401408 * 8 + 1280 * 192
    assert model_size_bits(layers, policy) == 288 * 8 + 18432 * 4 + 401408 * 2 + 1280 * 32


def test_depthwise_and_forward_order_on_mobilenet():
    layers = quantizable_layers(build("mobilenetv2", num_classes=10), (3, 32, 32))
    depthwise = [l for l in layers if l.is_depthwise]
    assert len(depthwise) == 17 and all(l.groups == l.in_channels == l.out_channels for l in depthwise)
    assert depthwise[0].macs == 32 * 32 * 9 * 16 * 16 // 32
    assert layers[0].in_hw == (32, 32) and layers[-1].kind == "linear"


def test_hooks_leave_model_as_it_was():
    model = build("resnet20", in_channels=1).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    quantizable_layers(model, (1, 1, 32, 32))
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN running stats untouched


def test_wrong_input_shape_is_one_line_error():
    with pytest.raises(CertquantError, match="does not run on input shape"):
        quantizable_layers(build("small-cnn"), (3, 28, 28))
    with pytest.raises(CertquantError, match="input shape must be"):
        quantizable_layers(build("small-cnn"), (28, 28))
