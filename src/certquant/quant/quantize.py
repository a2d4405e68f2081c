"""``quantize(model, policy, calibration_data)``: the one verb (as torchao's ``quantize_``) that turns a float model
into a fake-quantized copy following a per-layer policy (SPEC §4).

Calibration data MUST carry the same Gaussian noise as certification (SPEC §4, §8): the smoothed classifier only
ever sees x + N(0, sigma^2 I), whose range is far wider than that of clean images. Calibrated on clean images, a W8A8
Fashion-MNIST CNN at sigma 0.5 disagrees with full precision on about 10% of noisy samples; calibrated on noisy
images, about 1%. ``noisy_calibration_batch`` builds such a batch.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable
from typing import Any, Union

import torch
from torch import nn

from certquant.quant.layers import quantizable_layers
from certquant.quant.policy import Policy
from certquant.quant.quantizers import (
    ACT_CLIP_METHODS,
    QUANT_MODULES,
    AffineBatchNorm2d,
    QuantConv2d,
    QuantLinear,
    RangeObserver,
    SumGlobalAvgPool2d,
)
from certquant.utils.errors import CertquantError

CalibrationData = Union[torch.Tensor, Iterable[torch.Tensor], Iterable[tuple[torch.Tensor, ...]]]


def noisy_calibration_batch(images: torch.Tensor, sigma: float, count: int = 512, seed: int = 0) -> torch.Tensor:
    """``count`` images drawn without replacement (seeded; cycled when count > len(images)) plus N(0, sigma^2 I)
    noise in [0, 1] pixel units, not clipped: exactly what the smoothed classifier at noise level sigma feeds its
    base model. Use the certification sigma (SPEC §4): calibrating on clean images (sigma 0) underestimates ranges."""
    if sigma < 0:
        raise CertquantError(f"sigma must be >= 0, got {sigma}")
    if count < 1 or len(images) == 0:
        raise CertquantError(f"need count >= 1 and at least one image, got count {count} and {len(images)} images")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(images), generator=generator)
    idx = order.repeat((count + len(images) - 1) // len(images))[:count]
    x = images[idx].float()
    return x + sigma * torch.randn(x.shape, generator=generator).to(x.device)


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


def dequantize(model: nn.Module) -> nn.Module:
    """In place: replace every QuantConv2d / QuantLinear by the plain layer with the same latent float weights (and
    every AffineBatchNorm2d by the plain BatchNorm2d)."""
    for name, module in list(model.named_modules()):
        if isinstance(module, QUANT_MODULES):
            parent, child = _parent(model, name)
            setattr(parent, child, module.to_float())
        elif type(module) is AffineBatchNorm2d:
            module.__class__ = nn.BatchNorm2d  # type: ignore[assignment]  # the same module, plain forward
        elif type(module) is SumGlobalAvgPool2d:
            module.__class__ = nn.AdaptiveAvgPool2d  # type: ignore[assignment]
    return model


def prepare(model: nn.Module, policy: Policy) -> nn.Module:
    """In place: wrap every layer the policy names in QuantConv2d / QuantLinear with its bits, uncalibrated (the
    structure a quantized checkpoint's state_dict loads into). Layers already wrapped are unwrapped first."""
    dequantize(model)
    modules = dict(model.named_modules())
    for name, (w_bits, a_bits) in policy.items():
        module = modules.get(name)
        if isinstance(module, nn.Conv2d):
            wrapped: nn.Module = QuantConv2d.from_float(module, w_bits, a_bits)
        elif isinstance(module, nn.Linear):
            wrapped = QuantLinear.from_float(module, w_bits, a_bits)
        else:
            raise CertquantError(f"the policy names '{name}', which is not a Conv2d or Linear of this model")
        parent, child = _parent(model, name)
        setattr(parent, child, wrapped)
    for module in list(model.modules()):
        # ops an exported graph reproduces bit for bit (see certquant.quant.quantizers)
        if type(module) is nn.BatchNorm2d:
            module.__class__ = AffineBatchNorm2d
        elif type(module) is nn.AdaptiveAvgPool2d and module.output_size in (1, (1, 1)):
            module.__class__ = SumGlobalAvgPool2d
    return model


def _batches(data: CalibrationData, batch_size: int) -> Iterable[torch.Tensor]:
    if isinstance(data, torch.Tensor):
        for start in range(0, len(data), batch_size):
            yield data[start : start + batch_size]
        return
    for item in data:
        yield item[0] if isinstance(item, (tuple, list)) else item


def quantize(
    model: nn.Module,
    policy: Policy,
    calibration_data: CalibrationData,
    *,
    arch: str | None = None,
    act_clip: str = "auto",
    weight_clip: str = "auto",
    batch_size: int = 256,
) -> nn.Module:
    """A fake-quantized deep copy of ``model`` (the original is untouched), in eval mode.

    Weights: per output channel, symmetric, c = max|w| (MSE clip search at 2 bits and below). Activations (each layer's
    input): one range per layer from ``calibration_data`` (a tensor of NOISY images, or an iterable of batches or
    (x, y) pairs), unsigned when never negative, signed otherwise; c_a = the calibrated max at >= 8 bits, an MSE
    choice below (``act_clip``: auto, max, mse, percentile). Ranges are buffers, so they travel in the state_dict.
    Quantizing an already quantized model starts again from its float weights: same policy and data, same model.
    ``arch`` (when given) refuses a policy made for another architecture.
    """
    if act_clip not in ACT_CLIP_METHODS:
        raise CertquantError(f"unknown activation clipping '{act_clip}': use one of {', '.join(ACT_CLIP_METHODS)}")
    if weight_clip not in ("auto", "max", "mse"):
        raise CertquantError(f"unknown weight clipping '{weight_clip}': use auto, max or mse")
    qmodel = dequantize(copy.deepcopy(model))
    parameter = next(qmodel.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")

    batches = iter(_batches(calibration_data, batch_size))
    first = next(batches, None)
    if first is None or len(first) == 0:
        raise CertquantError("calibration data is empty: give noisy images (see noisy_calibration_batch)")
    layers = quantizable_layers(qmodel, tuple(first.shape[1:]))
    policy.validate(layers, arch)

    observers = {layer.name: RangeObserver(seed=layer.index) for layer in layers}
    modules = dict(qmodel.named_modules())
    handles = [
        modules[name].register_forward_pre_hook(lambda module, inputs, obs=obs: obs.observe(inputs[0]))
        for name, obs in observers.items()
    ]
    qmodel.eval()
    try:
        with torch.no_grad():
            for batch in itertools.chain([first], batches):
                qmodel(batch.to(device).float())
    finally:
        for handle in handles:
            handle.remove()

    prepare(qmodel, policy)
    for name, module in qmodel.named_modules():
        if isinstance(module, QUANT_MODULES):
            module.weight_quantizer.calibrate(module.weight, weight_clip)
            observer = observers[name]
            module.input_quantizer.set_range(
                observer.choose_clip(module.input_quantizer.bits, act_clip), observer.signed
            )
    return qmodel.eval()


def quantized_policy(model: nn.Module, arch: str | None = None) -> Policy:
    """The policy a quantized model carries (read from its QuantConv2d / QuantLinear modules)."""
    bits = {
        name: (m.weight_quantizer.bits, m.input_quantizer.bits)
        for name, m in model.named_modules()
        if isinstance(m, QUANT_MODULES)
    }
    if not bits:
        raise CertquantError("the model is not quantized (no QuantConv2d / QuantLinear layers)")
    return Policy(bits, arch=arch)


def activation_ranges(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Per quantized layer: the calibrated input range c_a, whether it is signed, and the bit-widths (for reports)."""
    return {
        name: {
            "w_bits": m.weight_quantizer.bits,
            "a_bits": m.input_quantizer.bits,
            "a_clip": m.input_quantizer.clip if m.input_quantizer.enabled else None,
            "a_signed": m.input_quantizer.signed if m.input_quantizer.enabled else None,
        }
        for name, m in model.named_modules()
        if isinstance(m, QUANT_MODULES)
    }
