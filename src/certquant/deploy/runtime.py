"""An exported ONNX file run by ONNX Runtime as the base classifier f of randomized smoothing.

``OnnxClassifier`` is a ``torch.nn.Module`` whose forward hands the batch to an ``onnxruntime.InferenceSession`` (CPU
execution provider) and returns its logits as a tensor, so ``certify`` / ``predict`` / IRS and every run folder treat
it like any checkpoint: same noise, same counting, same resumability. It has no parameters, so the certifier draws the
noise on the CPU; its one buffer holds the graph's sha256, so cache keys (``model_fingerprint``) tell graphs apart.

``load_onnx(path)`` returns ``(classifier, info)`` like ``certquant.models.load_checkpoint``; ``info['sha256']`` is
the hash of the graph without its certificate card (``card.graph_sha256``), so writing the card does not change the
identity a certification run was made with.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from certquant.data import dataset_info
from certquant.deploy.deps import require
from certquant.deploy.export import INFO_KEY
from certquant.utils.errors import CertquantError
from certquant.utils.io import file_sha256

KIND = "onnx"
# Integer kernels ONNX Runtime's CPU provider runs QDQ groups as (after its graph optimizations).
INTEGER_OPS = (
    "QLinearConv",
    "QLinearMatMul",
    "QGemm",
    "MatMulIntegerToFloat",
    "ConvInteger",
    "MatMulInteger",
    "QLinearAdd",
    "QLinearGlobalAveragePool",
    "QLinearAveragePool",
)
FLOAT_COMPUTE_OPS = ("Conv", "Gemm", "MatMul", "FusedConv", "FusedGemm", "NchwcConv")


def session_options(threads: int | None = None, optimized_path: str | None = None, fold_qdq: bool = False) -> Any:
    """Session options: all graph optimizations (QDQ fusion into integer kernels), ``threads`` intra-op threads
    (default: torch's thread count, so OMP_NUM_THREADS / torch.set_num_threads govern both), warnings off.
    ``fold_qdq`` sets onnxruntime's ``session.disable_quant_qdq``: no QDQ fusion, so the weights' DequantizeLinear is
    folded into float constants at load and every layer runs float kernels on the quantized levels (measured faster
    than the integer kernels on this CPU, see benchmarks/results/deploy-speed.md)."""
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = int(threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if optimized_path:
        options.optimized_model_filepath = optimized_path
    if fold_qdq:
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    return options


def make_session(
    model: bytes | str | os.PathLike,
    threads: int | None = None,
    optimized_path: str | None = None,
    fold_qdq: bool = False,
) -> Any:
    """An InferenceSession on the CPU provider; a file ONNX Runtime cannot load (e.g. an opset it does not implement)
    becomes one line."""
    ort = require("onnxruntime")
    source = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(
            source, session_options(threads, optimized_path, fold_qdq), providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types from C++
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CertquantError(f"onnxruntime {ort.__version__} cannot load the model ({first})") from None


class OnnxClassifier(nn.Module):
    """f(x) = the logits of an ONNX classifier of (N, C, H, W) float [0, 1] pixels, run by ONNX Runtime on the CPU."""

    def __init__(self, session: Any, graph_sha256: str, input_shape: Sequence[int], num_classes: int):
        super().__init__()
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.output_name = session.get_outputs()[0].name
        self.input_shape = tuple(int(s) for s in input_shape)
        self.num_classes = int(num_classes)
        self.register_buffer("graph_digest", torch.tensor(list(bytes.fromhex(graph_sha256)), dtype=torch.uint8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        (logits,) = self.session.run([self.output_name], {self.input_name: batch})
        return torch.from_numpy(logits)

    def extra_repr(self) -> str:
        return f"input={self.input_shape}, classes={self.num_classes}, onnxruntime CPU"


def read_info(proto: Any) -> dict[str, Any]:
    """The ``certquant.info`` metadata of an ONNX model ({} for a file certquant did not write)."""
    for prop in proto.metadata_props:
        if prop.key == INFO_KEY:
            try:
                return json.loads(prop.value)
            except json.JSONDecodeError:
                raise CertquantError(f"the ONNX metadata '{INFO_KEY}' is corrupt: re-export the model") from None
    return {}


def load_proto(path: str | os.PathLike) -> Any:
    onnx = require("onnx")
    path = Path(path)
    if not path.is_file():
        raise CertquantError(f"ONNX file '{path}' not found")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - protobuf decode errors
        raise CertquantError(f"'{path}' is not a readable ONNX file ({str(exc).splitlines()[0][:120]})") from None


def _static_dims(value_info: Any) -> list[int | None]:
    return [d.dim_value if d.HasField("dim_value") else None for d in value_info.type.tensor_type.shape.dim]


def check_classifier(proto: Any, session: Any, input_shape: Sequence[int], num_classes: int, path: Path) -> None:
    """Refuse a graph that is not a classifier of (N, *input_shape) float images into ``num_classes`` logits."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    expected = tuple(int(s) for s in input_shape)
    if len(inputs) != 1 or len(outputs) < 1:
        raise CertquantError(f"'{path}' has {len(inputs)} inputs: a classifier takes one image batch (N, C, H, W)")
    dims = _static_dims(proto.graph.input[0]) if proto.graph.input else []
    declared = tuple(d for d in dims[1:])
    if (
        inputs[0].type != "tensor(float)"
        or len(dims) != 4
        or any(d is not None and d != e for d, e in zip(declared, expected))
    ):
        raise CertquantError(
            f"'{path}' takes {inputs[0].type} of shape {inputs[0].shape}, not images (N, "
            f"{', '.join(map(str, expected))}) of this dataset: export a classifier of its input shape"
        )
    try:
        (out,) = session.run([outputs[0].name], {inputs[0].name: np.zeros((1,) + expected, np.float32)})
    except Exception as exc:  # noqa: BLE001
        raise CertquantError(
            f"'{path}' does not run on images of shape {expected} ({str(exc).strip().splitlines()[0][:120]})"
        ) from None
    if out.ndim != 2 or out.shape[1] != num_classes:
        raise CertquantError(
            f"'{path}' outputs shape {tuple(out.shape)}, not (N, {num_classes}) logits of this dataset's classes"
        )


def load_onnx(
    path: str | os.PathLike, expect_dataset: str | None = None, threads: int | None = None, **_: Any
) -> tuple[OnnxClassifier, dict[str, Any]]:
    """``(classifier, info)`` for an ONNX file, checked to be a classifier of its dataset's images.

    The dataset and sigma come from the file's ``certquant.info`` metadata (written by ``export``); a file without
    it needs ``expect_dataset`` (its sigma then is None: give one when certifying)."""
    from certquant.deploy.card import graph_sha256

    path = Path(path)
    proto = load_proto(path)
    info = read_info(proto)
    dataset = info.get("dataset") or expect_dataset
    if dataset is None:
        raise CertquantError(f"'{path}' carries no certquant metadata: give --dataset (and --sigma)")
    if expect_dataset is not None and dataset != expect_dataset:
        raise CertquantError(f"'{path}' was exported for {dataset}, not {expect_dataset}: use --dataset {dataset}")
    data = dataset_info(dataset)
    digest = graph_sha256(proto)
    session = make_session(path, threads)
    check_classifier(proto, session, data.input_shape, data.num_classes, path)
    model = OnnxClassifier(session, digest, data.input_shape, data.num_classes)
    info = {
        "arch": info.get("arch", "onnx"),
        "num_classes": data.num_classes,
        "in_channels": data.in_channels,
        "input_size": data.input_size,
        "mean": info.get("mean", list(data.mean)),
        "std": info.get("std", list(data.std)),
        "sigma": info.get("sigma"),
        **info,
        "dataset": dataset,
        "kind": KIND,
        "path": str(path),
        "sha256": digest,
        "file_sha256": file_sha256(path),
    }
    return model, info


def integer_kernels(path: str | os.PathLike, threads: int = 1, fold_qdq: bool = False) -> dict[str, Any]:
    """What ONNX Runtime actually runs: the op counts of its optimized graph, split into integer kernels and float
    compute (conv / matmul / gemm), read from the graph it writes after its QDQ fusions."""
    import tempfile

    onnx = require("onnx")
    with tempfile.TemporaryDirectory() as tmp:
        optimized = str(Path(tmp) / "optimized.onnx")
        make_session(path, threads, optimized, fold_qdq)
        graph = onnx.load(optimized).graph
    counts: dict[str, int] = {}
    for node in graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    integer = {op: n for op, n in counts.items() if op in INTEGER_OPS}
    floating = {op: n for op, n in counts.items() if op in FLOAT_COMPUTE_OPS}
    return {"integer": integer, "float": floating, "all": dict(sorted(counts.items()))}


def _register() -> None:
    from certquant.models.checkpoint import register_file_loader

    register_file_loader(".onnx", load_onnx)


_register()
