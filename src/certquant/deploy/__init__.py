"""Deployment: what certquant certifies is what runs. Export a (quantized) model as a QDQ ONNX file, run it with
ONNX Runtime as the base classifier of the certifier, carry its certificate card in the file, and import the
field's standard checkpoints (Cohen et al.'s layout, or any PyTorch classifier whose definition the user supplies).

onnx and onnxruntime are the optional extra ``certquant[deploy]``; they are imported on first use only.
"""

from certquant.deploy.agreement import prediction_agreement
from certquant.deploy.card import check_card, format_card, graph_sha256, write_card
from certquant.deploy.export import ExportConfig, ExportResult, export_checkpoint, export_onnx, exported_classifier
from certquant.deploy.importers import import_cohen, import_torch
from certquant.deploy.runtime import OnnxClassifier, integer_kernels, load_onnx

__all__ = [
    "ExportConfig",
    "ExportResult",
    "OnnxClassifier",
    "check_card",
    "export_checkpoint",
    "export_onnx",
    "exported_classifier",
    "format_card",
    "graph_sha256",
    "import_cohen",
    "import_torch",
    "integer_kernels",
    "load_onnx",
    "prediction_agreement",
    "write_card",
]
