"""The cost model (SPEC §4): BitOPs(policy) = sum over layers of MACs * w_bits * a_bits, relative to FP32 (every layer
at 32 x 32); model size = sum of params * w_bits. Exact integers, so budgets compare exactly (W4A4 = 16/1024)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from certquant.quant.layers import LayerInfo
from certquant.quant.policy import FULL_PRECISION, Policy


def fp32_bitops(layers: Sequence[LayerInfo]) -> int:
    """BitOPs of the unquantized model: sum of MACs * 32 * 32."""
    return sum(layer.macs for layer in layers) * FULL_PRECISION * FULL_PRECISION


def layer_bitops(layer: LayerInfo, policy: Policy) -> int:
    w, a = policy.bits(layer.name)
    return layer.macs * w * a


def bitops(layers: Sequence[LayerInfo], policy: Policy) -> int:
    """BitOPs of ``policy`` on ``layers``: sum of MACs * w_bits * a_bits (the policy must cover exactly these layers)."""
    policy.validate(layers)
    return sum(layer_bitops(layer, policy) for layer in layers)


def bitops_fraction(layers: Sequence[LayerInfo], policy: Policy) -> float:
    """BitOPs relative to every layer at 32 x 32 (the budget unit: 0.015625 = uniform W4A4)."""
    return bitops(layers, policy) / fp32_bitops(layers)


def model_size_bits(layers: Sequence[LayerInfo], policy: Policy) -> int:
    """Weight storage in bits: sum of params * w_bits (biases and BatchNorm not counted)."""
    policy.validate(layers)
    return sum(layer.params * policy.bits(layer.name)[0] for layer in layers)


def cost_summary(layers: Sequence[LayerInfo], policy: Policy) -> dict[str, Any]:
    """Per-layer rows and totals as plain data (``certquant cost --json``)."""
    total = bitops(layers, policy)
    rows = []
    for layer in layers:
        w, a = policy.bits(layer.name)
        ops = layer.macs * w * a
        rows.append(
            {
                "index": layer.index,
                "name": layer.name,
                "kind": layer.kind,
                "macs": layer.macs,
                "params": layer.params,
                "w_bits": w,
                "a_bits": a,
                "bitops": ops,
                "share": ops / total if total else 0.0,
                "unquantized": w == FULL_PRECISION or a == FULL_PRECISION,
            }
        )
    return {
        "arch": policy.arch,
        "layers": rows,
        "macs": sum(layer.macs for layer in layers),
        "bitops": total,
        "fp32_bitops": fp32_bitops(layers),
        "bitops_fraction": total / fp32_bitops(layers),
        "model_size_bits": model_size_bits(layers, policy),
        "fp32_model_size_bits": sum(layer.params for layer in layers) * FULL_PRECISION,
        "unquantized_layers": policy.unquantized(),
    }


def format_cost_table(layers: Sequence[LayerInfo], policy: Policy) -> str:
    """A fixed-width table: one row per layer (index, name, kind, MACs, W, A, BitOPs, share of total), then totals.
    A layer left at 32 bits is marked ``FP32 <-`` and listed below the table (SPEC §8)."""
    s = cost_summary(layers, policy)
    headers = ["#", "layer", "kind", "MACs", "W", "A", "BitOPs", "share", "note"]
    body = [
        [
            str(r["index"]),
            r["name"],
            r["kind"],
            f"{r['macs']:,}",
            str(r["w_bits"]),
            str(r["a_bits"]),
            f"{r['bitops']:,}",
            f"{100 * r['share']:.2f}%",
            "FP32 <- not quantized" if r["unquantized"] else "",
        ]
        for r in s["layers"]
    ]
    total = ["", "total", "", f"{s['macs']:,}", "", "", f"{s['bitops']:,}", "100.00%", ""]
    widths = [max(len(row[i]) for row in [headers, total] + body) for i in range(len(headers))]
    right = {0, 3, 4, 5, 6, 7}

    def line(row: list[str]) -> str:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    out = [line(headers), rule] + [line(row) for row in body] + [rule, line(total)]
    out.append(
        f"BitOPs {s['bitops']:,} = {s['bitops_fraction']:.6f} of FP32 ({100 * s['bitops_fraction']:.4f}%; "
        f"uniform W4A4 = 1.5625%); weights {s['model_size_bits'] / 8 / 1024:,.1f} KiB "
        f"({s['model_size_bits'] / s['fp32_model_size_bits']:.4f} of FP32)"
    )
    if s["unquantized_layers"]:
        out.append(
            f"WARNING: {len(s['unquantized_layers'])} layer(s) left at 32 bits (not quantized): "
            + ", ".join(s["unquantized_layers"])
        )
    return "\n".join(out)
