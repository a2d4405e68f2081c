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

At 32 bits a quantizer is the identity (the layer stays unquantized).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from certquant.quant.ops import fake_quant_signed, mse_clip, round_ste, scale_for, sign_ste, signed_qmax, unsigned_qmax
from certquant.quant.policy import FULL_PRECISION

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
        out: torch.Tensor = F.linear(self.input_quantizer(x), self.weight_quantizer(self.weight), self.bias)
        return out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {_quant_extra(self)}"


QUANT_MODULES = (QuantConv2d, QuantLinear)
