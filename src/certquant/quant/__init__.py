"""Mixed-precision fake quantization (SPEC §4): the quantizable layers and their cost, per-layer bit policies,
``quantize(model, policy, calibration_data)`` and noise-aware fine-tuning. See docs/quant.md."""

from certquant.quant.layers import LayerInfo, quantizable_layers
from certquant.quant.policy import FULL_PRECISION, Policy
from certquant.quant.cost import bitops, bitops_fraction, cost_summary, format_cost_table, fp32_bitops, model_size_bits

__all__ = [
    "FULL_PRECISION",
    "LayerInfo",
    "Policy",
    "bitops",
    "bitops_fraction",
    "cost_summary",
    "format_cost_table",
    "fp32_bitops",
    "model_size_bits",
    "quantizable_layers",
]
