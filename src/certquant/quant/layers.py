"""The quantizable layers of a model (every Conv2d and Linear, SPEC §4) in forward order, with the shapes the cost
model and the search state need.

Shapes are measured with forward hooks on one real forward pass, so any architecture works (residual blocks, option-A
shortcuts, global pooling) without parsing its code. A module that runs twice in one forward pass (weight sharing) is
listed once, at its first call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from certquant.utils.errors import CertquantError, short_reason


@dataclass(frozen=True)
class LayerInfo:
    """One quantizable layer: where it is, its shape, and its cost (SPEC §4: MACs of a conv = C_in*C_out*K_h*K_w*
    H_out*W_out/groups, of a linear = in*out)."""

    index: int  # position in forward order
    name: str  # qualified module name in the model (model.named_modules())
    kind: str  # "conv" or "linear"
    in_channels: int  # C_in (in_features for linear)
    out_channels: int  # C_out (out_features)
    kernel_size: tuple[int, int]  # (1, 1) for linear
    stride: tuple[int, int]  # (1, 1) for linear
    groups: int  # 1 for linear
    in_hw: tuple[int, int]  # input feature-map size, (1, 1) for linear
    out_hw: tuple[int, int]
    params: int  # weight.numel()
    macs: int  # conv: C_in*C_out*Kh*Kw*Hout*Wout/groups; linear: in*out

    @property
    def is_depthwise(self) -> bool:
        """A depthwise conv: one group per input channel (MobileNet), so each filter sees one channel."""
        return self.kind == "conv" and self.groups > 1 and self.groups == self.in_channels


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    return (int(value[0]), int(value[1]))


def _describe(index: int, name: str, module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> LayerInfo:
    if isinstance(module, nn.Conv2d):
        kh, kw = _pair(module.kernel_size)
        out_hw = (int(y.shape[-2]), int(y.shape[-1]))
        macs = module.in_channels * module.out_channels * kh * kw * out_hw[0] * out_hw[1] // module.groups
        return LayerInfo(
            index,
            name,
            "conv",
            module.in_channels,
            module.out_channels,
            (kh, kw),
            _pair(module.stride),
            module.groups,
            (int(x.shape[-2]), int(x.shape[-1])),
            out_hw,
            module.weight.numel(),
            macs,
        )
    linear = module
    assert isinstance(linear, nn.Linear)
    return LayerInfo(
        index,
        name,
        "linear",
        linear.in_features,
        linear.out_features,
        (1, 1),
        (1, 1),
        1,
        (1, 1),
        (1, 1),
        linear.weight.numel(),
        linear.in_features * linear.out_features,
    )


def quantizable_layers(model: nn.Module, input_shape: Sequence[int]) -> list[LayerInfo]:
    """Every Conv2d and Linear that runs in ``model``'s forward pass on a zero input of ``input_shape`` ((C, H, W) or
    (N, C, H, W)), in the order they run. The model's train/eval mode and weights are left as they were."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 3:
        shape = (1,) + shape
    if len(shape) != 4 or min(shape) < 1:
        raise CertquantError(
            f"input shape must be (C, H, W) or (N, C, H, W) with positive sizes, got {tuple(input_shape)}"
        )
    names = {module: name for name, module in model.named_modules()}
    found: dict[str, LayerInfo] = {}
    handles = []

    def hook(module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        name = names[module]
        if name not in found:
            found[name] = _describe(len(found), name, module, inputs[0], output)

    for module in names:
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            handles.append(module.register_forward_hook(hook))
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(shape, device=device))
    except RuntimeError as exc:
        first = short_reason(exc, 160)
        raise CertquantError(
            f"the model does not run on input shape {shape[1:]} ({first}): give the shape it was built for"
        ) from None
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if not found:
        raise CertquantError(
            "the model has no Conv2d or Linear layer that runs in its forward pass: nothing to quantize"
        )
    return list(found.values())
