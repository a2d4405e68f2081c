"""Mixed-precision fake quantization (SPEC §4): the quantizable layers and their cost, per-layer bit policies,
``quantize(model, policy, calibration_data)`` and noise-aware fine-tuning. See docs/quant.md.

Calibrate on NOISY inputs (``noisy_calibration_batch`` with the certification sigma), never on clean images only.
"""

from certquant.quant.checkpoint import quantize_checkpoint, save_quantized
from certquant.quant.cost import bitops, bitops_fraction, cost_summary, format_cost_table, fp32_bitops, model_size_bits
from certquant.quant.finetuning import finetune
from certquant.quant.layers import LayerInfo, quantizable_layers
from certquant.quant.policy import FULL_PRECISION, Policy
from certquant.quant.quantize import (
    activation_ranges,
    dequantize,
    noisy_calibration_batch,
    prepare,
    quantize,
    quantized_policy,
)
from certquant.quant.quantizers import ActQuantizer, QuantConv2d, QuantLinear, WeightQuantizer

__all__ = [
    "FULL_PRECISION",
    "ActQuantizer",
    "LayerInfo",
    "Policy",
    "QuantConv2d",
    "QuantLinear",
    "WeightQuantizer",
    "activation_ranges",
    "bitops",
    "bitops_fraction",
    "cost_summary",
    "dequantize",
    "finetune",
    "format_cost_table",
    "fp32_bitops",
    "model_size_bits",
    "noisy_calibration_batch",
    "prepare",
    "quantizable_layers",
    "quantize",
    "quantize_checkpoint",
    "quantized_policy",
    "save_quantized",
]
