"""Quantizers as small modules over the pure ops (SPEC §4), and the quantized Conv2d / Linear that use them.

- ``WeightQuantizer``: symmetric, per output channel, scale = c / (2^(b-1) - 1); c = max|w| per channel, or the MSE
  choice below ``WEIGHT_CLIP_SEARCH_BELOW`` bits. The scale is a buffer fixed at calibration, so quantizing an already
  quantized weight changes nothing.
- ``ActQuantizer``: the layer's INPUT, one range per layer from calibration data (which must carry the certification
  noise); unsigned (scale = c_a / (2^b - 1)) when the calibrated input is never negative (after a ReLU), signed
  (scale = c_a / (2^(b-1) - 1)) otherwise (e.g. the first layer sees normalized pixels).
- ``QuantConv2d`` / ``QuantLinear`` subclass ``nn.Conv2d`` / ``nn.Linear`` and keep the same module names, so
  ``quantizable_layers`` and policies apply to quantized models too; the float weights stay the trainable parameters
  and gradients reach them through the rounding with the straight-through estimator.

Integer evaluation. Without a gradient to carry (certification, prediction, calibration of later layers), a layer
whose weights and input are both quantized computes ``conv(k_a, k_w) * m + bias`` with k_a, k_w the integer levels
(as floats), m = float32(s_a * s_w) per output channel: the same real number as conv(k_a * s_a, k_w * s_w) + bias, but
the accumulation over integers is exact (every partial sum stays below 2^24; otherwise it runs in float64), so the
result no longer depends on the conv kernel's summation order. Every op after it is one IEEE-rounded elementwise op
(``AffineBatchNorm2d`` computes batch norm as x * a + b), so an exported model that runs ConvInteger / MatMulInteger
and the same elementwise ops (``certquant.deploy.export``) reproduces every integer level of this model bit for bit.
Before, one ulp of float summation order moved a ResNet-20 level at a rounding tie, and the difference spread through
the residual blocks (deploy agreement 99.77%, see docs/deploy.md).

At 32 bits a quantizer is the identity (the layer stays unquantized).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from certquant.quant.ops import fake_quant_signed, mse_clip, round_ste, scale_for, sign_ste, signed_qmax, unsigned_qmax
from certquant.quant.policy import FULL_PRECISION

EXACT_SUM_LIMIT = float(1 << 24)  # float32 holds every integer below 2^24: sums of integer products below it are exact

# Weights below this many bits: MSE clip search instead of max|w|. Measured (small CNNs at sigma 0.25 / 0.5 and
# ResNet-20, noisy test images): at 3 and 4 bits max|w| disagrees less with the FP32 model (W4A4: 0.036 vs 0.052 of
# noisy samples at sigma 0.5) and is more accurate; only at 2 bits does the MSE clip win (W2A2: 0.59 vs 0.42 noisy
# accuracy). Minimizing ||w_q - w||^2 clips the few large weights that carry the decision.
WEIGHT_CLIP_SEARCH_BELOW = 3
ACT_CLIP_SEARCH_BELOW = 8  # activations below this many bits: MSE clip search instead of the calibrated maximum
ACT_CLIP_METHODS = ("auto", "max", "mse", "percentile")
ACT_PERCENTILE = 0.9999


class WeightQuantizer(nn.Module):
    """Per-output-channel symmetric fake quantization of a weight tensor (dim 0 = output channels)."""

    scale: torch.Tensor  # buffer

    def __init__(self, bits: int, out_channels: int):
        super().__init__()
        self.bits = int(bits)
        self.register_buffer("scale", torch.ones(out_channels))  # per channel, c / (2^(b-1) - 1)

    @property
    def enabled(self) -> bool:
        return self.bits < FULL_PRECISION

    @torch.no_grad()
    def calibrate(self, weight: torch.Tensor, method: str = "auto") -> None:
        """Set the scales from ``weight``: method 'max' (c = max|w|), 'mse', or 'auto' (mse at 2 bits and below)."""
        if not self.enabled:
            return
        if method == "auto":
            method = "mse" if self.bits < WEIGHT_CLIP_SEARCH_BELOW else "max"
        rows = weight.detach().reshape(weight.shape[0], -1).float()
        clip = mse_clip(rows, self.bits, signed=True) if method == "mse" else rows.abs().amax(dim=1)
        self.scale.copy_(scale_for(clip, self.bits, signed=True))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return weight
        return fake_quant_signed(weight, self.scale.view(-1, *([1] * (weight.dim() - 1))), self.bits)

    @torch.no_grad()
    def levels(self, weight: torch.Tensor) -> torch.Tensor:
        """The integer levels k (as floats) with forward(weight) = k * scale: clamp(round(w / s), -q, q), or +-1 at
        1 bit."""
        scale = self.scale.view(-1, *([1] * (weight.dim() - 1)))
        if self.bits == 1:
            return torch.where(weight / scale >= 0, 1.0, -1.0).to(weight.dtype)
        qmax = signed_qmax(self.bits)
        return torch.clamp(torch.round(weight / scale), -qmax, qmax)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, per_channel=True, symmetric=True"


class ActQuantizer(nn.Module):
    """Per-tensor fake quantization of a layer's input with a calibrated range. The levels are buffers
    (qmin = -(2^(b-1) - 1) or 0, qmax), so signedness travels in the state_dict and forward needs no host sync."""

    scale: torch.Tensor  # buffers
    qmin: torch.Tensor
    qmax: torch.Tensor

    def __init__(self, bits: int):
        super().__init__()
        self.bits = int(bits)
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("qmin", torch.tensor(0.0))
        self.register_buffer("qmax", torch.tensor(float(unsigned_qmax(min(self.bits, 24)))))

    @property
    def enabled(self) -> bool:
        return self.bits < FULL_PRECISION

    @property
    def signed(self) -> bool:
        return bool(self.qmin.item() < 0)

    @property
    def clip(self) -> float:
        """The calibrated range c_a (inputs beyond +-c_a, or outside [0, c_a] when unsigned, are clipped)."""
        return float(self.scale.item() * self.qmax.item())

    @torch.no_grad()
    def set_range(self, clip: float, signed: bool) -> None:
        """Fix the range: levels -q..q (signed) or 0..2^b-1 (unsigned), scale = c_a / q_max."""
        if not self.enabled:
            return
        qmax = signed_qmax(self.bits) if signed else unsigned_qmax(self.bits)
        self.qmin.fill_(-float(qmax) if signed else 0.0)
        self.qmax.fill_(float(qmax))
        self.scale.copy_(scale_for(torch.tensor(float(clip)), self.bits, signed))

    @torch.no_grad()
    def levels(self, x: torch.Tensor) -> torch.Tensor:
        """The integer levels (as floats) with forward(x) = levels * scale: clamp(round(x / s), qmin, qmax); +-1 for
        signed 1 bit. x / s is a division, as in ONNX's QuantizeLinear (onnxruntime divides too)."""
        u = x / self.scale
        if self.bits == 1 and self.signed:
            return torch.where(u >= 0, 1.0, -1.0).to(u.dtype)
        return torch.clamp(torch.round(u), self.qmin, self.qmax)

    @property
    def max_level(self) -> float:
        return float(max(abs(self.qmin.item()), self.qmax.item()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        u = x / self.scale
        out = torch.clamp(round_ste(u), self.qmin, self.qmax) * self.scale
        if self.bits == 1:  # signed 1 bit is binary (+-c_a), not ternary
            out = torch.where(self.qmin < 0, sign_ste(u) * self.scale, out)
        return out

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


class RangeObserver:
    """Collects what calibration needs about one layer's input: the exact min and max over all batches and a seeded
    random sample of values (at most ``max_samples``) for the MSE or percentile choice of c_a."""

    def __init__(self, per_batch: int = 1 << 16, max_samples: int = 1 << 20, seed: int = 0):
        self.per_batch, self.max_samples = per_batch, max_samples
        self.generator = torch.Generator().manual_seed(seed)
        self.min, self.max = float("inf"), float("-inf")
        self.samples: list[torch.Tensor] = []

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        """Record one batch; the sample stays on x's device (the clip search runs there: on a GPU, moving it to the
        CPU made calibration most of a search candidate's cost)."""
        flat = x.detach().reshape(-1).float()
        low, high = (float(v) for v in torch.stack(torch.aminmax(flat)).tolist())
        self.min, self.max = min(self.min, low), max(self.max, high)
        if flat.numel() > self.per_batch:
            picks = torch.randint(flat.numel(), (self.per_batch,), generator=self.generator)
            flat = flat[picks.to(flat.device)]
        self.samples.append(flat)

    @property
    def signed(self) -> bool:
        return self.min < 0

    @torch.no_grad()
    def choose_clip(self, bits: int, method: str = "auto") -> float:
        """c_a: 'max' (calibrated max |x|), 'percentile' (99.99th of |x|), 'mse', or 'auto' (mse below 8 bits)."""
        if method not in ACT_CLIP_METHODS:
            raise ValueError(f"unknown activation clip method {method!r}")
        top = max(abs(self.min), abs(self.max))
        if method == "auto":
            method = "mse" if bits < ACT_CLIP_SEARCH_BELOW else "max"
        if method == "max" or top == 0.0:
            return top
        sample = torch.cat(self.samples)
        if sample.numel() > self.max_samples:
            picks = torch.randint(sample.numel(), (self.max_samples,), generator=self.generator)
            sample = sample[picks.to(sample.device)]
        if method == "percentile":
            return float(torch.quantile(sample.abs(), ACT_PERCENTILE))
        # MSE search over c = r * top, with top the exact max over all batches (the sample's own max may be lower)
        return float(mse_clip(sample, bits, self.signed, top=torch.tensor([top]))[0])


def output_scale(layer: QuantConv2d | QuantLinear) -> torch.Tensor:
    """m = float32(s_a * s_w) per output channel: one float32 product, so the exporter stores the same numbers."""
    return layer.input_quantizer.scale.float() * layer.weight_quantizer.scale.float()


def integer_mode(layer: QuantConv2d | QuantLinear, x: torch.Tensor) -> bool:
    """Evaluate ``layer`` on integer levels: weights and input quantized, and no gradient to carry."""
    if not (layer.weight_quantizer.enabled and layer.input_quantizer.enabled):
        return False
    return not (torch.is_grad_enabled() and (x.requires_grad or layer.weight.requires_grad))


def integer_forward(layer: QuantConv2d | QuantLinear, x: torch.Tensor, op: Any) -> torch.Tensor:
    """op(k_a, k_w) * m + bias: the accumulation over integer levels is exact (float32 when every partial sum stays
    below 2^24: max |k_a| * max over channels of sum |k_w|; float64 otherwise, then rounded to float32 like
    onnxruntime's Cast of its int32 accumulator), then one multiply and one add, each rounded once."""
    codes = layer.input_quantizer.levels(x)
    k = layer.weight_quantizer.levels(layer.weight)
    bound = layer.input_quantizer.max_level * float(k.abs().reshape(k.shape[0], -1).sum(dim=1).max())
    acc: torch.Tensor
    if bound < EXACT_SUM_LIMIT:
        acc = op(codes, k)
    else:
        acc = op(codes.double(), k.double()).float()
    shape = (1, -1) + (1,) * (acc.dim() - 2)
    out = acc * output_scale(layer).view(shape)
    if layer.bias is not None:
        out = out + layer.bias.view(shape)
    return out


class AffineBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose inference forward is x * a + b, two IEEE-rounded ops with a, b from ``scale_shift()``
    (PyTorch's own kernel fuses them differently, one ulp off on ~40% of values, so an exported graph could not
    reproduce it). Training mode is plain batch norm; the state_dict is batch norm's. ``prepare`` turns the batch
    norms of a quantized model into this class in place (``dequantize`` turns them back)."""

    def scale_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, b) per channel, float32: a = gamma / sqrt(var + eps), b = beta - mean * a."""
        assert self.running_mean is not None and self.running_var is not None
        a = torch.ones_like(self.running_var) / torch.sqrt(self.running_var + self.eps)
        if self.weight is not None:
            a = a * self.weight.detach()
        b = -self.running_mean * a
        if self.bias is not None:
            b = b + self.bias.detach()
        return a.float(), b.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or self.running_mean is None or x.dim() != 4:
            return super().forward(x)
        a, b = self.scale_shift()
        return x * a.view(1, -1, 1, 1) + b.view(1, -1, 1, 1)


class SumGlobalAvgPool2d(nn.AdaptiveAvgPool2d):
    """Global average pooling computed as float64 sum / count, rounded to float32 once: a float32 sum depends on the
    kernel's order (PyTorch's and onnxruntime's differ by an ulp on ~40% of values, which moved a level of the next
    layer's input); the float64 sum of float32 values is exact in practice, so any order gives the same result.
    ``prepare`` turns a quantized model's ``AdaptiveAvgPool2d(1)`` into this class in place."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.dtype != torch.float32 or x.device.type == "mps":  # mps has no float64
            return super().forward(x)
        total = x.double().sum(dim=(2, 3), keepdim=True)
        return (total / float(x.shape[2] * x.shape[3])).float()


def _quant_extra(module: QuantConv2d | QuantLinear) -> str:
    return f"w_bits={module.weight_quantizer.bits}, a_bits={module.input_quantizer.bits}"


def _geometry(conv: nn.Conv2d) -> dict[str, Any]:
    """The constructor arguments that give ``conv``'s twin its geometry (torch types the stored attributes wider than
    its constructor accepts)."""
    return {
        "kernel_size": conv.kernel_size,
        "stride": conv.stride,
        "padding": conv.padding,
        "dilation": conv.dilation,
        "groups": conv.groups,
        "padding_mode": conv.padding_mode,
    }


class QuantConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose input and weight pass through fake quantizers."""

    weight_quantizer: WeightQuantizer
    input_quantizer: ActQuantizer

    @classmethod
    def from_float(cls, conv: nn.Conv2d, w_bits: int, a_bits: int) -> QuantConv2d:
        """Wrap ``conv`` (its weight and bias Parameters are shared, not copied)."""
        q = cls(conv.in_channels, conv.out_channels, bias=conv.bias is not None, device="meta", **_geometry(conv))
        q.weight, q.bias = conv.weight, conv.bias
        q.weight_quantizer = WeightQuantizer(w_bits, conv.out_channels).to(conv.weight.device)
        q.input_quantizer = ActQuantizer(a_bits).to(conv.weight.device)
        q.train(conv.training)
        return q

    def to_float(self) -> nn.Conv2d:
        """The plain Conv2d with the same (latent float) weight and bias Parameters."""
        conv = nn.Conv2d(
            self.in_channels, self.out_channels, bias=self.bias is not None, device="meta", **_geometry(self)
        )
        conv.weight, conv.bias = self.weight, self.bias
        conv.train(self.training)
        return conv

    @torch.no_grad()
    def quantized_weight(self) -> torch.Tensor:
        weight: torch.Tensor = self.weight_quantizer(self.weight)
        return weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if integer_mode(self, x):
            return integer_forward(self, x, lambda a, k: self._conv_forward(a, k, None))
        out: torch.Tensor = self._conv_forward(self.input_quantizer(x), self.weight_quantizer(self.weight), self.bias)
        return out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {_quant_extra(self)}"  # type: ignore[no-untyped-call]


class QuantLinear(nn.Linear):
    """``nn.Linear`` whose input and weight pass through fake quantizers."""

    weight_quantizer: WeightQuantizer
    input_quantizer: ActQuantizer

    @classmethod
    def from_float(cls, linear: nn.Linear, w_bits: int, a_bits: int) -> QuantLinear:
        q = cls(linear.in_features, linear.out_features, linear.bias is not None, device="meta")
        q.weight, q.bias = linear.weight, linear.bias
        q.weight_quantizer = WeightQuantizer(w_bits, linear.out_features).to(linear.weight.device)
        q.input_quantizer = ActQuantizer(a_bits).to(linear.weight.device)
        q.train(linear.training)
        return q

    def to_float(self) -> nn.Linear:
        linear = nn.Linear(self.in_features, self.out_features, self.bias is not None, device="meta")
        linear.weight, linear.bias = self.weight, self.bias
        linear.train(self.training)
        return linear

    @torch.no_grad()
    def quantized_weight(self) -> torch.Tensor:
        weight: torch.Tensor = self.weight_quantizer(self.weight)
        return weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if integer_mode(self, x):
            return integer_forward(self, x, lambda a, k: F.linear(a, k))
        out: torch.Tensor = F.linear(self.input_quantizer(x), self.weight_quantizer(self.weight), self.bias)
        return out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {_quant_extra(self)}"


QUANT_MODULES = (QuantConv2d, QuantLinear)
