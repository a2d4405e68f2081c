"""ONNX export of a certquant model: the file computes what the fake-quantized PyTorch model computes.

Per quantized layer (``QuantConv2d`` / ``QuantLinear``, SPEC §4) with weights and input of at most 8 bits (the
default, ``integer_kernels=True``), the graph is the model's integer evaluation (``certquant.quant.quantizers``):

- the input passes ``[Clip] -> QuantizeLinear`` with the layer's calibrated scale s_a and zero point 0: unsigned
  levels 0..2^b - 1 (uint8) after a ReLU, signed levels -(2^(b-1) - 1)..2^(b-1) - 1 (int8) otherwise. The Clip to
  [q_min * s_a, q_max * s_a] is there whenever the storage type holds more levels than b bits (b < 8, or any signed
  width: int8 saturates at -128, the symmetric grid stops at -127), so the levels are exactly the b-bit ones;
- the weight is the integer levels k = clamp(round(w / s_w), -q, q) (per output channel, symmetric), stored with a
  zero point as k + 8 in uint4 at opset 21 when b <= 4 (packed two per byte; a Cast to uint8, folded at load, feeds
  the kernel), else as k + 128 in uint8 (onnxruntime's u8u8 integer kernels are the fast ones on x86);
- ``ConvInteger`` / ``MatMulInteger`` accumulate k_a * k_w in int32 (exact), then ``Cast`` to float, ``Mul`` by
  m = float32(s_a * s_w) per output channel and ``Add`` the float bias: the same IEEE operations, in the same order,
  as the PyTorch model's integer evaluation, so every later level is the same bit for bit. Batch norm stays a
  separate ``Mul`` and ``Add`` with ``AffineBatchNorm2d.scale_shift()``'s numbers, and global average pooling a
  float64 sum over H, W divided by H * W (``SumGlobalAvgPool2d``): what the PyTorch model computes.

With ``integer_kernels=False``, and for layers of more than 8 bits or with an unquantized input, the layer is QDQ on
floats instead: ``[Clip] -> QuantizeLinear -> DequantizeLinear`` on the input, the integer weight restored by
``DequantizeLinear`` (axis 0, per-channel scales; a BatchNorm right after a conv folded into the per-channel weight
scale, s_w * |a|, k * sign(a)), and a float conv / Gemm with its bias moved into a float Add (so onnxruntime fuses
no QLinearConv, whose int32 bias and requantization differ from the model). That computes the same real numbers
in another float summation order, so a level at a rounding tie can differ (measured: 0.1% of ResNet-20's noisy
predictions at W8A8, against 0 with the integer layers).

Everything else (normalization, ReLU, pooling, residual adds, option-A shortcuts) is exported as plain float ops, so
the file takes [0, 1] pixels. Where it is exact, the next layer's QuantizeLinear is moved above a ReLU (an unsigned
grid starts at 0, so the ReLU is implied), a max-pool or a flatten (both commute with a monotone quantizer). Which
layers onnxruntime runs in integers is reported by ``certquant.deploy.runtime.integer_kernels``. The model is traced
with torch.fx, so any architecture built from the supported modules exports; an unsupported op is refused by name.
"""

from __future__ import annotations

import json
import operator
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from certquant.deploy.deps import require
from certquant.models.layers import Normalize
from certquant.models.resnet_cifar import PadShortcut
from certquant.quant.ops import signed_qmax
from certquant.quant.policy import FULL_PRECISION
from certquant.quant.quantizers import (
    QUANT_MODULES,
    ActQuantizer,
    AffineBatchNorm2d,
    SumGlobalAvgPool2d,
    output_scale,
)
from certquant.utils.errors import CertquantError
from certquant.utils.io import atomic_write_bytes

MIN_OPSET, MAX_OPSET = 13, 21  # 13: per-axis DequantizeLinear; 21: int4 / uint4 / int16 Q and DQ
INT4_OPSET = 21
INFO_KEY = "certquant.info"  # metadata: the checkpoint info (dataset, sigma, normalization, policy, ...)
INPUT_NAME, OUTPUT_NAME = "pixels", "logits"
FORMATS = ("onnx",)

_LEAVES = (
    nn.Conv2d,
    nn.Linear,
    nn.BatchNorm2d,
    Normalize,
    nn.ReLU,
    nn.ReLU6,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.Flatten,
    nn.Dropout,
    nn.Identity,
    PadShortcut,
)
_RELU_FUNCS = (F.relu, torch.relu)
_ADD_FUNCS = (operator.add, operator.iadd, torch.add)
_FLATTEN_METHODS = ("view", "reshape", "flatten")


@dataclass(frozen=True)
class ExportConfig:
    """``export`` of a run config: export each final model, certify the exported file beside the PyTorch model."""

    format: Optional[str] = None
    """onnx: export each final model as a QDQ ONNX file and certify it as onnxruntime runs it; null: no export
    (``export: onnx`` is short for ``export: {format: onnx}``)."""
    opset: int = INT4_OPSET
    """ONNX opset, 13..21; 21 stores weights of <= 4 bits as packed int4."""
    integer_kernels: bool = True
    """Layers of <= 8 bits as ConvInteger / MatMulInteger on the integer levels, bit-exact with the fake-quantized
    model; false: QDQ with float kernels on the dequantized levels (same real numbers, other float rounding)."""
    certify: bool = True
    """Certify the exported file on the test subset and write its certificate card (false: export only)."""
    agreement_samples: int = 10_000
    """Noisy test samples on which the exported file's and the PyTorch model's predictions are compared."""

    def __post_init__(self) -> None:
        if self.format is not None and self.format not in FORMATS:
            raise CertquantError(f"export format '{self.format}' is not supported: use onnx (or null: no export)")
        check_opset(self.opset)
        if self.agreement_samples < 1:
            raise CertquantError(f"export.agreement_samples must be >= 1, got {self.agreement_samples}")

    @property
    def enabled(self) -> bool:
        return self.format is not None


@dataclass
class LayerExport:
    """How one quantizable layer was stored: its bits, storage types and whether a Clip restricts the levels."""

    name: str
    w_bits: int
    a_bits: int
    weight: str  # "int4", "int8", "int16" or "float" (full precision or no integer type)
    activation: str  # "uint8", "int8", "uint4", ... or "float" (unquantized input)
    clip: bool  # a Clip restricts the input to the b-bit levels before QuantizeLinear
    bn_folded: bool = False
    kernel: str = "float"  # "ConvInteger" / "MatMulInteger" (integer levels, exact) or "float" (QDQ, float kernel)


@dataclass
class ExportResult:
    path: Path
    opset: int
    layers: list[LayerExport] = field(default_factory=list)


def check_opset(opset: int) -> int:
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise CertquantError(
            f"opset {opset} is not supported: use {MIN_OPSET}..{MAX_OPSET} (13 for per-channel "
            f"DequantizeLinear, {INT4_OPSET} for int4 weights)"
        )
    return opset


def _int_type(bits: int, signed: bool, opset: int, packed: bool = True) -> tuple[str, int, int] | None:
    """(type name, lowest, highest value) of the narrowest ONNX integer type holding b-bit levels, or None;
    ``packed`` False skips int4 / uint4 (activations: nothing is stored, and onnxruntime 1.32's Clip-before-Q fusion
    fails on a 4-bit zero point)."""
    if bits <= 4 and opset >= INT4_OPSET and packed:
        return ("int4", -8, 7) if signed else ("uint4", 0, 15)
    if bits <= 8:
        return ("int8", -128, 127) if signed else ("uint8", 0, 255)
    if bits <= 16 and opset >= INT4_OPSET:
        return ("int16", -(1 << 15), (1 << 15) - 1) if signed else ("uint16", 0, (1 << 16) - 1)
    return None


class _Tracer(fx.Tracer):
    """Stops at the modules the exporter converts as a whole (quantized layers included)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, _LEAVES + QUANT_MODULES) or super().is_leaf_module(m, qualname)


class _Graph:
    """The ONNX graph under construction: unique names, initializers, nodes."""

    def __init__(self, onnx_module: Any):
        self.onnx = onnx_module
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._used: set[str] = {INPUT_NAME, OUTPUT_NAME}

    def name(self, hint: str) -> str:
        base = hint.replace("/", ".") or "v"
        name, k = base, 1
        while name in self._used:
            k += 1
            name = f"{base}_{k}"
        self._used.add(name)
        return name

    def const(self, hint: str, array: Any) -> str:
        name = self.name(hint)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.asarray(array), name))
        return name

    def int_const(self, hint: str, type_name: str, values: np.ndarray) -> str:
        """An integer initializer of an ONNX type (int4/uint4 are packed two per byte by onnx)."""
        name = self.name(hint)
        values = np.asarray(values)
        if type_name in ("int4", "uint4"):
            ml_dtypes = require("ml_dtypes")  # onnx's own dependency: numpy int4 arrays, packed into raw_data
            values = values.astype(getattr(ml_dtypes, type_name))
        else:
            values = values.astype(np.dtype(type_name))
        tensor = self.onnx.numpy_helper.from_array(values, name)
        self.initializers.append(tensor)
        return name

    def add(self, op: str, inputs: Sequence[str], hint: str, output: str | None = None, **attrs: Any) -> str:
        out = output or self.name(hint)
        self.nodes.append(self.onnx.helper.make_node(op, list(inputs), [out], name=self.name(f"{hint}.{op}"), **attrs))
        return out

    def prune(self, outputs: Sequence[str]) -> None:
        """Drop nodes whose outputs nothing uses (e.g. a ReLU the quantizer made redundant) and unused initializers."""
        needed, kept = set(outputs), []
        for node in reversed(self.nodes):
            if any(o in needed for o in node.output):
                kept.append(node)
                needed.update(i for i in node.input if i)
        self.nodes = kept[::-1]
        self.initializers = [t for t in self.initializers if t.name in needed]


class _Exporter:
    def __init__(self, model: nn.Module, opset: int, integer_kernels: bool = True):
        self.onnx = require("onnx")
        self.model, self.opset, self.integer_kernels = model, opset, integer_kernels
        try:
            self.fx_graph = _Tracer().trace(model)
        except Exception as exc:  # noqa: BLE001 - fx raises many kinds on untraceable code
            first = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
            raise CertquantError(
                f"the model cannot be traced for export ({first}): build it from standard modules"
            ) from None
        self.modules = dict(model.named_modules())
        self.g = _Graph(self.onnx)
        self.values: dict[fx.Node, str | None] = {}
        self.folded: set[fx.Node] = set()
        self.quantized: dict[tuple, str] = {}
        self.layers: list[LayerExport] = []
        self.biases: dict[str, np.ndarray] = {}  # float biases of convs and Gemms (see split_biases)
        self.levels: dict[str, tuple[str, str]] = {}  # DequantizeLinear output -> (its integer levels, zero point)

    # -- the walk ------------------------------------------------------------------------------------------------

    def run(self) -> str:
        for node in self.fx_graph.nodes:
            if node.op == "placeholder":
                if self.values:
                    raise CertquantError("the model takes more than one input: a classifier takes one image batch")
                self.values[node] = INPUT_NAME
            elif node.op == "output":
                result = node.args[0]
                if not isinstance(result, fx.Node):
                    raise CertquantError("the model must return one logits tensor")
                self.g.add("Identity", [self.value(result)], "output", output=OUTPUT_NAME)
            elif node in self.folded:
                continue
            elif node.op == "call_module":
                self.values[node] = self.module_node(node, self.modules[node.target])
            elif node.op == "call_function":
                self.values[node] = self.function_node(node)
            elif node.op == "call_method":
                self.values[node] = self.method_node(node)
            else:
                raise CertquantError(f"cannot export '{node.op}' node {node.target} to ONNX")
        self.g.prune([OUTPUT_NAME])  # first: a dead ReLU must not count as a consumer in split_biases
        self.split_biases()
        self.g.prune([OUTPUT_NAME])
        return OUTPUT_NAME

    def split_biases(self) -> None:
        """Move each float conv / Gemm bias into an Add after it. ONNX Runtime would otherwise round the bias of a
        layer with dequantized inputs to int32 at scale s_x * s_w (its WeightBiasQuantization pass) and fuse
        ``DQ -> Conv -> Q`` into a QLinearConv whose requantization is not the model's arithmetic (after a 4-bit input
        that rounding moved logits by up to 1.2 on the small CNN; at W8A8 it flipped 0.23% of ResNet-20's noisy
        predictions). Layers meant to run in integers are ConvInteger / MatMulInteger (``integer_layer``)."""
        nodes = []
        for node in self.g.nodes:
            nodes.append(node)
            if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3 or node.input[2] not in self.biases:
                continue
            bias_name, out = node.input[2], node.output[0]
            del node.input[2]
            node.output[0] = self.g.name(f"{out}.nobias")
            shape = (1, -1, 1, 1) if node.op_type == "Conv" else (1, -1)
            bias = self.g.const(f"{bias_name}.add", self.biases[bias_name].reshape(shape))
            nodes.append(
                self.onnx.helper.make_node("Add", [node.output[0], bias], [out], name=self.g.name(f"{out}.bias_add"))
            )
        self.g.nodes = nodes

    def value(self, node: Any) -> str:
        if not isinstance(node, fx.Node) or self.values.get(node) is None:
            raise CertquantError(f"cannot export the argument {node!r} (expected a tensor computed by the model)")
        return self.values[node]  # type: ignore[return-value]

    def unsupported(self, what: str) -> CertquantError:
        return CertquantError(
            f"cannot export {what} to ONNX: supported are Conv2d, Linear, BatchNorm2d, ReLU, ReLU6, "
            "max/avg/global pooling, flatten, residual add, Dropout, Identity and certquant's "
            "Normalize, option-A shortcut and quantized layers"
        )

    # -- modules ---------------------------------------------------------------------------------------------------

    def module_node(self, node: fx.Node, m: nn.Module) -> str | None:
        name = str(node.target)
        if isinstance(m, QUANT_MODULES) or isinstance(m, (nn.Conv2d, nn.Linear)):
            return self.layer(node, m)
        x = self.value(node.args[0])
        if isinstance(m, Normalize):
            mean = m.mean.detach().cpu().numpy().astype(np.float32)
            std = m.std.detach().cpu().numpy().astype(np.float32)
            centered = self.g.add("Sub", [x, self.g.const(f"{name}.mean", mean)], name)
            return self.g.add("Div", [centered, self.g.const(f"{name}.std", std)], name)
        if isinstance(m, nn.BatchNorm2d):
            a, b = _bn_affine(m)
            shape = (1, -1, 1, 1)
            scaled = self.g.add("Mul", [x, self.g.const(f"{name}.a", a.reshape(shape))], name)
            return self.g.add("Add", [scaled, self.g.const(f"{name}.b", b.reshape(shape))], name)
        if isinstance(m, (nn.Dropout, nn.Identity)):
            return x
        if isinstance(m, PadShortcut):
            return self.pad_shortcut(name, x, m)
        if isinstance(m, (nn.ReLU, nn.ReLU6, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten)):
            return self.unary(node, x)
        raise self.unsupported(f"module {type(m).__name__} ('{name}')")

    def unary(self, node: fx.Node, x: str) -> str:
        """A one-input op (activation, pooling, flatten) of ``node`` applied to value ``x``."""
        hint = str(node.target) if node.op == "call_module" else node.name
        m = self.modules.get(node.target) if node.op == "call_module" else None
        if isinstance(m, nn.ReLU) or node.target in _RELU_FUNCS:
            return self.g.add("Relu", [x], hint)
        if isinstance(m, nn.ReLU6):
            return self.g.add(
                "Clip", [x, self.g.const(f"{hint}.lo", np.float32(0)), self.g.const(f"{hint}.hi", np.float32(6))], hint
            )
        if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            if isinstance(m, nn.MaxPool2d) and m.return_indices:
                raise self.unsupported("MaxPool2d with return_indices")
            if isinstance(m, nn.AvgPool2d) and m.divisor_override is not None:
                raise self.unsupported("AvgPool2d with divisor_override")
            (kh, kw), (ph, pw) = _pair(m.kernel_size), _pair(m.padding)
            strides = list(_pair(m.stride if m.stride is not None else m.kernel_size))
            pool: dict[str, Any] = dict(
                kernel_shape=[kh, kw], strides=strides, pads=[ph, pw, ph, pw], ceil_mode=int(m.ceil_mode)
            )
            if isinstance(m, nn.MaxPool2d):
                return self.g.add("MaxPool", [x], hint, dilations=list(_pair(m.dilation)), **pool)
            return self.g.add("AveragePool", [x], hint, count_include_pad=int(m.count_include_pad), **pool)
        if isinstance(m, nn.AdaptiveAvgPool2d):
            if _pair(m.output_size) != (1, 1):
                raise self.unsupported(f"AdaptiveAvgPool2d to {m.output_size} (only global pooling, output 1)")
            if isinstance(m, SumGlobalAvgPool2d):
                return self.sum_pool(hint, x)
            return self.g.add("GlobalAveragePool", [x], hint)
        if isinstance(m, nn.Flatten) or self.is_flatten(node):
            start = m.start_dim if isinstance(m, nn.Flatten) else self.flatten_start(node)
            end = m.end_dim if isinstance(m, nn.Flatten) else -1
            if start != 1 or end != -1:
                raise self.unsupported("a flatten other than (batch, features)")
            return self.g.add("Flatten", [x], hint, axis=1)
        raise self.unsupported(f"'{node.target}'")

    def sum_pool(self, hint: str, x: str) -> str:
        """SumGlobalAvgPool2d: float64 ReduceSum over H, W divided by H * W (read from the shape), Cast to float."""
        onnx_type = self.onnx.TensorProto
        wide = self.g.add("Cast", [x], f"{hint}.double", to=onnx_type.DOUBLE)
        axes = self.g.const(f"{hint}.axes", np.array([2, 3], np.int64))
        total = self.g.add("ReduceSum", [wide, axes], hint, keepdims=1)
        dims = self.g.add("Shape", [x], hint, start=2, end=4)
        count = self.g.add("ReduceProd", [dims], hint, keepdims=0)
        count = self.g.add("Cast", [count], f"{hint}.count", to=onnx_type.DOUBLE)
        mean = self.g.add("Div", [total, count], hint)
        return self.g.add("Cast", [mean], hint, to=onnx_type.FLOAT)

    def pad_shortcut(self, name: str, x: str, m: PadShortcut) -> str:
        """Option A: x[:, :, ::2, ::2] padded with zero channels (pad // 2 before, the rest after)."""
        starts = self.g.const(f"{name}.starts", np.array([0, 0], np.int64))
        ends = self.g.const(f"{name}.ends", np.array([np.iinfo(np.int64).max] * 2, np.int64))
        axes = self.g.const(f"{name}.axes", np.array([2, 3], np.int64))
        steps = self.g.const(f"{name}.steps", np.array([2, 2], np.int64))
        sub = self.g.add("Slice", [x, starts, ends, axes, steps], name)
        pads = np.array([0, m.pad // 2, 0, 0, 0, m.pad - m.pad // 2, 0, 0], np.int64)
        return self.g.add("Pad", [sub, self.g.const(f"{name}.pads", pads)], name, mode="constant")

    # -- functions and methods -------------------------------------------------------------------------------------

    def function_node(self, node: fx.Node) -> str | None:
        if node.target in _ADD_FUNCS and len(node.args) == 2 and all(isinstance(a, fx.Node) for a in node.args):
            if node.kwargs.get("alpha", 1) != 1:
                raise self.unsupported("torch.add with alpha")
            return self.g.add("Add", [self.value(node.args[0]), self.value(node.args[1])], node.name)
        if node.target in _RELU_FUNCS or self.is_flatten(node):
            return self.unary(node, self.value(node.args[0]))
        raise self.unsupported(f"function {getattr(node.target, '__name__', node.target)}")

    def method_node(self, node: fx.Node) -> str | None:
        if node.target == "size":
            return None  # only feeds a flatten's shape
        if self.is_flatten(node):
            return self.unary(node, self.value(node.args[0]))
        if node.target == "relu":
            return self.g.add("Relu", [self.value(node.args[0])], node.name)
        raise self.unsupported(f"tensor method .{node.target}()")

    @staticmethod
    def flatten_start(node: fx.Node) -> int:
        if node.target in ("view", "reshape"):
            return 1
        start: Any = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        return int(start)

    @staticmethod
    def is_flatten(node: fx.Node) -> bool:
        """torch.flatten(x, 1), x.flatten(1), or x.view / x.reshape(x.size(0), -1)."""
        if node.op == "call_function" and node.target is torch.flatten:
            return True
        if node.op != "call_method" or node.target not in _FLATTEN_METHODS:
            return False
        if node.target == "flatten":
            return True
        shape = node.args[1:]
        first = shape[0] if shape else None
        return bool(
            len(shape) == 2
            and shape[1] == -1
            and isinstance(first, fx.Node)
            and first.op == "call_method"
            and first.target == "size"
            and first.args[1:] == (0,)
        )

    # -- quantized layers ------------------------------------------------------------------------------------------

    def layer(self, node: fx.Node, m: Any) -> str:
        """Conv2d / Linear, quantized or not, with a following BatchNorm2d folded into it when it is its only user."""
        name = str(node.target)
        quantized = isinstance(m, QUANT_MODULES)
        w_bits = m.weight_quantizer.bits if quantized else FULL_PRECISION
        a_quant: ActQuantizer | None = m.input_quantizer if quantized and m.input_quantizer.enabled else None
        if self.integer_kernels and a_quant is not None and w_bits <= 8 and a_quant.bits <= 8:
            return self.integer_layer(node, m, a_quant)
        if a_quant is not None:
            x, act_type, clip = self.quantized_input(node.args[0], a_quant)
        else:
            x, act_type, clip = self.value(node.args[0]), "float", False

        weight = m.weight.detach().cpu().double()
        bias = (
            m.bias.detach().cpu().double() if m.bias is not None else torch.zeros(weight.shape[0], dtype=torch.float64)
        )
        bn_node = self.foldable_bn(node)
        bn_folded = bn_node is not None
        a = torch.ones(weight.shape[0], dtype=torch.float64)
        if bn_node is not None:
            a_np, b_np = _bn_affine(self.modules[bn_node.target], dtype=np.float64)
            a = torch.from_numpy(a_np)
            bias = bias * a + torch.from_numpy(b_np)
            self.folded.add(bn_node)

        w_name, w_type = self.weight(name, m, weight, a, w_bits)
        b_name = self.g.const(f"{name}.bias", bias.numpy().astype(np.float32))
        self.biases[b_name] = bias.numpy().astype(np.float32)
        if isinstance(m, nn.Conv2d):
            out = self.conv(name, m, x, w_name, b_name)
        else:
            out = self.g.add("Gemm", [x, w_name, b_name], name, transB=1)
        if bn_node is not None:
            self.values[bn_node] = out
        a_bits = m.input_quantizer.bits if quantized else FULL_PRECISION
        self.layers.append(LayerExport(name, w_bits, a_bits, w_type, act_type, clip, bn_folded))
        return out

    def integer_layer(self, node: fx.Node, m: Any, q: ActQuantizer) -> str:
        """The layer on integer levels: [Clip] -> QuantizeLinear -> ConvInteger / MatMulInteger -> Cast -> Mul(m) ->
        [Add(bias)], the PyTorch model's ``integer_forward`` op for op (a following batch norm is not folded)."""
        name = str(node.target)
        dq, act_type, clip = self.quantized_input(node.args[0], q)
        levels, zero_point = self.levels[dq]
        w_bits = m.weight_quantizer.bits
        k = m.weight_quantizer.levels(m.weight.detach().cpu()).numpy().astype(np.int64)
        if np.abs(k).max() > signed_qmax(w_bits):
            raise CertquantError(f"layer '{name}': weight levels exceed the {w_bits}-bit range (corrupt scales?)")
        # unsigned storage with a zero point (k + 8 in uint4, k + 128 in uint8): onnxruntime 1.32's u8u8 kernels are
        # 4.5x faster than its u8s8 ConvInteger on this CPU (measured: 15 vs 67 ms, a 16-channel 3x3 conv, batch 256)
        storage, zp = ("uint4", 8) if w_bits <= 4 and self.opset >= INT4_OPSET else ("uint8", 128)
        conv = isinstance(m, nn.Conv2d)
        w_name = self.g.int_const(f"{name}.weight_{storage}", storage, (k if conv else k.T) + zp)
        if storage == "uint4":  # the kernels take 8-bit integers; onnxruntime folds the Cast at load
            w_name = self.g.add("Cast", [w_name], f"{name}.weight_uint8", to=self.onnx.TensorProto.UINT8)
        w_zp = self.g.int_const(f"{name}.weight_zero_point", "uint8", np.array(zp))
        if conv:
            acc = self.conv(name, m, levels, w_name, zero_point, op="ConvInteger", w_zero_point=w_zp)
        else:
            acc = self.g.add("MatMulInteger", [levels, w_name, zero_point, w_zp], name)
        shape = (1, -1, 1, 1) if conv else (1, -1)
        out = self.g.add("Cast", [acc], f"{name}.float", to=self.onnx.TensorProto.FLOAT)
        scale = output_scale(m).detach().cpu().numpy().astype(np.float32).reshape(shape)
        out = self.g.add("Mul", [out, self.g.const(f"{name}.output_scale", scale)], name)
        if m.bias is not None:
            bias = m.bias.detach().cpu().numpy().astype(np.float32).reshape(shape)
            out = self.g.add("Add", [out, self.g.const(f"{name}.bias", bias)], name)
        kernel = "ConvInteger" if conv else "MatMulInteger"
        self.layers.append(LayerExport(name, w_bits, q.bits, storage, act_type, clip, False, kernel))
        return out

    def conv(
        self, name: str, m: nn.Conv2d, x: str, w: str, b: str, op: str = "Conv", w_zero_point: str | None = None
    ) -> str:
        if m.padding_mode != "zeros" or isinstance(m.padding, str):
            raise self.unsupported(f"Conv2d '{name}' with padding {m.padding!r} / mode {m.padding_mode}")
        kh, kw = _pair(m.kernel_size)
        sh, sw = _pair(m.stride)
        ph, pw = _pair(m.padding)
        dh, dw = _pair(m.dilation)
        return self.g.add(
            op,
            [x, w, b] + ([w_zero_point] if w_zero_point else []),
            name,
            kernel_shape=[kh, kw],
            strides=[sh, sw],
            pads=[ph, pw, ph, pw],
            dilations=[dh, dw],
            group=m.groups,
        )

    def foldable_bn(self, node: fx.Node) -> fx.Node | None:
        users = list(node.users)
        if len(users) != 1 or users[0].op != "call_module":
            return None
        bn = self.modules.get(users[0].target)
        if isinstance(bn, nn.BatchNorm2d) and isinstance(self.modules[node.target], nn.Conv2d):
            return users[0]
        return None

    def weight(self, name: str, m: Any, weight: torch.Tensor, a: torch.Tensor, w_bits: int) -> tuple[str, str]:
        """The weight initializer (and its DequantizeLinear) with the folded BN factor ``a`` per output channel."""
        shape = (-1,) + (1,) * (weight.dim() - 1)
        storage = _int_type(w_bits, True, self.opset) if w_bits < FULL_PRECISION else None
        if w_bits >= FULL_PRECISION or storage is None:
            values = m.weight_quantizer(m.weight).detach().cpu().double() if w_bits < FULL_PRECISION else weight
            return self.g.const(f"{name}.weight", (values * a.view(shape)).numpy().astype(np.float32)), "float"
        scale = m.weight_quantizer.scale.detach().cpu().double()
        w_q = m.weight_quantizer(m.weight).detach().cpu().double()
        k = torch.round(w_q / scale.view(shape))  # the integer levels the fake quantizer used
        qmax = signed_qmax(w_bits)
        if k.abs().max() > qmax:
            raise CertquantError(f"layer '{name}': weight levels exceed the {w_bits}-bit range (corrupt scales?)")
        sign = torch.where(a < 0, -1.0, 1.0).to(torch.float64)
        folded_scale = (scale * a.abs()).clamp(min=1e-30)
        k = k * sign.view(shape)
        k_name = self.g.int_const(f"{name}.weight_int{w_bits}", storage[0], k.numpy().astype(np.int64))
        s_name = self.g.const(f"{name}.weight_scale", folded_scale.numpy().astype(np.float32))
        return self.g.add("DequantizeLinear", [k_name, s_name], f"{name}.weight", axis=0), storage[0]

    def quantized_input(self, node: Any, q: ActQuantizer) -> tuple[str, str, bool]:
        """The DequantizeLinear output carrying ``q``'s levels of ``node``'s value (moved above ReLU, max-pool and
        flatten where exact), its storage type and whether a Clip restricts the levels."""
        if q.bits == 1 and q.signed:
            raise CertquantError(
                "1-bit signed activations are binary (+-c_a), which QuantizeLinear cannot express: "
                "use >= 2 activation bits"
            )
        storage = _int_type(q.bits, q.signed, self.opset, packed=False)
        if storage is None:
            raise CertquantError(
                f"{q.bits}-bit activations have no ONNX integer type at opset {self.opset}: use <= 8 "
                f"bits, or <= 16 at opset {INT4_OPSET}"
            )
        qmin, qmax = int(q.qmin.item()), int(q.qmax.item())
        clip = storage[1] < qmin or storage[2] > qmax
        return self.hoisted(node, q, storage[0], clip, qmin, qmax), storage[0], clip

    def hoisted(self, node: Any, q: ActQuantizer, type_name: str, clip: bool, qmin: int, qmax: int) -> str:
        if not isinstance(node, fx.Node):
            raise CertquantError(f"cannot export the argument {node!r}")
        single = len(node.users) == 1
        m = self.modules.get(node.target) if node.op == "call_module" else None
        relu = isinstance(m, nn.ReLU) or (node.op == "call_function" and node.target in _RELU_FUNCS)
        if single and relu and qmin == 0:  # Q(relu(y)) = Q(y) on an unsigned grid starting at 0
            return self.hoisted(node.args[0], q, type_name, clip, qmin, qmax)
        if single and (isinstance(m, (nn.MaxPool2d, nn.Flatten)) or self.is_flatten(node)):
            inner = self.hoisted(node.args[0], q, type_name, clip, qmin, qmax)  # max and flatten commute with Q
            return self.qdq(self.unary(node, inner), q, type_name, False, qmin, qmax, f"{node.name}.requant")
        return self.qdq(self.value(node), q, type_name, clip, qmin, qmax, f"{node.name}.quant")

    def qdq(self, x: str, q: ActQuantizer, type_name: str, clip: bool, qmin: int, qmax: int, hint: str) -> str:
        key = (x, type_name, clip, qmin, qmax, float(q.scale.item()))
        if key in self.quantized:
            return self.quantized[key]
        scale = np.float32(q.scale.item())
        if clip:
            lo = self.g.const(f"{hint}.lo", np.float32(qmin) * scale)
            hi = self.g.const(f"{hint}.hi", np.float32(qmax) * scale)
            x = self.g.add("Clip", [x, lo, hi], hint)
        s = self.g.const(f"{hint}.scale", scale)
        zp = self.g.int_const(f"{hint}.zero_point", type_name, np.array(0))
        levels = self.g.add("QuantizeLinear", [x, s, zp], hint)
        out = self.g.add("DequantizeLinear", [levels, s, zp], hint)
        self.quantized[key] = out
        self.levels[out] = (levels, zp)
        return out


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    return (int(value[0]), int(value[1]))


def _bn_affine(bn: nn.BatchNorm2d, dtype: Any = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Inference batch norm as y * a + b: a = gamma / sqrt(var + eps), b = beta - mean * a (an AffineBatchNorm2d's
    own float32 numbers, so the graph computes what it does)."""
    if bn.running_mean is None or bn.running_var is None:
        raise CertquantError("a BatchNorm2d without running statistics cannot be exported")
    if isinstance(bn, AffineBatchNorm2d) and dtype is np.float32:
        a32, b32 = bn.scale_shift()
        return a32.detach().cpu().numpy(), b32.detach().cpu().numpy()
    var = bn.running_var.detach().cpu().double()
    a = torch.ones_like(var) / torch.sqrt(var + bn.eps)
    if bn.weight is not None:
        a = a * bn.weight.detach().cpu().double()
    b = -bn.running_mean.detach().cpu().double() * a
    if bn.bias is not None:
        b = b + bn.bias.detach().cpu().double()
    return a.numpy().astype(dtype), b.numpy().astype(dtype)


def export_onnx(
    model: nn.Module,
    input_shape: Sequence[int],
    path: str | os.PathLike,
    opset: int = INT4_OPSET,
    info: dict[str, Any] | None = None,
    integer_kernels: bool = True,
) -> ExportResult:
    """Write ``model`` (a certquant model, fake-quantized or not, taking [0, 1] pixels of ``input_shape`` (C, H, W))
    as an ONNX file checked by ``onnx.checker``; ``info`` (JSON-ready) goes into the metadata under ``certquant.info``.

    ``integer_kernels`` False moves every bias into a float Add, so ONNX Runtime fuses nothing into integer kernels
    and computes in float on the dequantized levels: the fake-quantized model's arithmetic, slower."""
    onnx = require("onnx")
    check_opset(opset)
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3:
        raise CertquantError(f"input shape must be (C, H, W), got {shape}")
    model = model.cpu().eval()
    with torch.no_grad():
        try:
            num_classes = int(model(torch.zeros((1,) + shape)).shape[1])
        except RuntimeError as exc:
            raise CertquantError(
                f"the model does not run on input shape {shape} ({str(exc).splitlines()[0][:120]})"
            ) from None
    exporter = _Exporter(model, opset, integer_kernels)
    exporter.run()
    g = exporter.g
    graph = onnx.helper.make_graph(
        g.nodes,
        "certquant",
        [onnx.helper.make_tensor_value_info(INPUT_NAME, onnx.TensorProto.FLOAT, ["N", *shape])],
        [onnx.helper.make_tensor_value_info(OUTPUT_NAME, onnx.TensorProto.FLOAT, ["N", num_classes])],
        g.initializers,
    )
    proto = onnx.helper.make_model(
        graph, opset_imports=[onnx.helper.make_opsetid("", opset)], producer_name="certquant"
    )
    proto.ir_version = min(proto.ir_version, 10)  # onnxruntime 1.32 reads IR <= 11; 10 covers opset 21
    meta = dict(info or {})
    meta["export"] = {
        "opset": opset,
        "integer_kernels": integer_kernels,
        "layers": [asdict(layer) for layer in exporter.layers],
    }
    onnx.helper.set_model_props(proto, {INFO_KEY: json.dumps(meta, sort_keys=True)})
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise CertquantError(f"the exported graph fails onnx.checker ({str(exc).splitlines()[0][:160]})") from None
    atomic_write_bytes(path, proto.SerializeToString())
    return ExportResult(Path(path), opset, exporter.layers)


def export_checkpoint(
    checkpoint: str | os.PathLike, out: str | os.PathLike, opset: int = INT4_OPSET, integer_kernels: bool = True
) -> ExportResult:
    """Export a certquant checkpoint (quantized or full precision, or a zoo name) to ``out``; the checkpoint's info
    (dataset, sigma, normalization, policy, cost, its sha256) travels in the ONNX metadata."""
    from certquant.models import load_checkpoint
    from certquant.quant.checkpoint import input_shape

    check_opset(opset)
    model, info = load_checkpoint(checkpoint)
    keep = (
        "arch",
        "num_classes",
        "in_channels",
        "input_size",
        "mean",
        "std",
        "dataset",
        "sigma",
        "kind",
        "policy",
        "cost",
        "calibration",
    )
    meta = {k: info[k] for k in keep if k in info}
    meta["source"] = {"path": str(info.get("path", "")), "sha256": info.get("sha256", "")}
    return export_onnx(model, input_shape(info), out, opset, meta, integer_kernels)


def exported_classifier(
    checkpoint: str | os.PathLike, onnx_path: str | os.PathLike, opset: int = INT4_OPSET, integer_kernels: bool = True
) -> Any:
    """The export of ``checkpoint`` at ``onnx_path`` (made when missing, else reused) loaded for onnxruntime: what
    ``certify.runtime: onnx`` certifies (with integer kernels, the quantized model's logits bit for bit)."""
    from certquant.deploy.runtime import load_onnx

    if not Path(onnx_path).exists():
        export_checkpoint(checkpoint, onnx_path, opset, integer_kernels)
    return load_onnx(onnx_path)[0]
