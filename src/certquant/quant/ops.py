"""Pure fake-quantization ops (SPEC §4): rounding with a straight-through gradient, symmetric and unsigned linear
quantization, and the MSE clipping search. No state here; the modules in ``quantizers.py`` hold the scales.

Worked example (4-bit symmetric, c = 1): q_max = 2^(4-1) - 1 = 7, scale = 1/7, so 0.3 -> round(2.1) / 7 = 2/7 and
1.4 -> clamp to 7 -> 1.0. Unsigned 4-bit with c_a = 1.5: scale = 1.5 / 15 = 0.1, so 0.26 -> 0.3 and -0.2 -> 0.
"""

from __future__ import annotations

import torch

EPS = 1e-12  # smallest scale: an all-zero channel quantizes to zeros instead of NaN
CLIP_RATIOS = torch.linspace(1.0, 0.01, 100)  # candidate clip ratios c / max|x|, largest first (ties keep the largest)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) forward, identity backward (straight-through estimator, Bengio et al. 2013). Without a gradient to
    carry (certification, calibration) it is plain round(x): the same values (x + (round(x) - x) is exact, |round(x)
    - x| <= 1/2 and Sterbenz), two fewer passes over every activation."""
    if not (torch.is_grad_enabled() and x.requires_grad):
        return torch.round(x)
    return x + (torch.round(x) - x).detach()


def sign_ste(x: torch.Tensor) -> torch.Tensor:
    """+-1 forward (0 -> +1), clipped identity backward (gradient 1 on |x| <= 1, as BinaryConnect)."""
    clipped = torch.clamp(x, -1.0, 1.0)
    return clipped + (torch.where(x >= 0, 1.0, -1.0).to(x.dtype) - clipped).detach()


def signed_qmax(bits: int) -> int:
    """Largest level of b-bit symmetric quantization: 2^(b-1) - 1 (levels -q..q: 2^b - 1 values). 1 bit is binary."""
    return max(int(2 ** (bits - 1)) - 1, 1)


def unsigned_qmax(bits: int) -> int:
    """Largest level of b-bit unsigned quantization: 2^b - 1 (levels 0..q: 2^b values)."""
    return int(2**bits) - 1


def scale_for(clip: torch.Tensor, bits: int, signed: bool) -> torch.Tensor:
    """scale = c / (2^(b-1) - 1) (signed) or c_a / (2^b - 1) (unsigned), at least EPS."""
    qmax = signed_qmax(bits) if signed else unsigned_qmax(bits)
    return torch.clamp(clip / qmax, min=EPS)


def fake_quant_signed(x: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """x_q = round(clamp(x, -c, c) / scale) * scale with c = q_max * scale; at 1 bit sign(x) * scale (binary).
    Gradient: 1 inside [-c, c], 0 outside (clipped STE)."""
    if bits == 1:
        return sign_ste(x / scale) * scale
    qmax = signed_qmax(bits)
    return torch.clamp(round_ste(x / scale), -qmax, qmax) * scale


def fake_quant_unsigned(x: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """x_q = round(clamp(x, 0, c_a) / scale) * scale with c_a = (2^b - 1) * scale."""
    return torch.clamp(round_ste(x / scale), 0, unsigned_qmax(bits)) * scale


def fake_quant(x: torch.Tensor, scale: torch.Tensor, bits: int, signed: bool) -> torch.Tensor:
    return fake_quant_signed(x, scale, bits) if signed else fake_quant_unsigned(x, scale, bits)


@torch.no_grad()
def mse_clip(
    x: torch.Tensor,
    bits: int,
    signed: bool,
    ratios: torch.Tensor = CLIP_RATIOS,
    top: torch.Tensor | None = None,
    max_elements: int = 1 << 24,
) -> torch.Tensor:
    """Per-row clip value c (rows = output channels; a 1-D tensor is one row) minimising ||fake_quant(x) - x||^2 over
    c = r * top for the candidate ratios r (top defaults to max|x_row|). Below ~5 bits clipping the few largest
    values buys a finer grid for all the others. Candidates are scored in vectorized chunks of at most
    ``max_elements``; ties keep the larger clip."""
    rows = x.reshape(x.shape[0], -1) if x.dim() > 1 else x.reshape(1, -1)
    top = rows.abs().amax(dim=1) if top is None else top.reshape(-1).to(rows)
    ratios = ratios.to(rows)
    chunk = max(1, max_elements // max(1, rows.numel()))
    errors = []
    for start in range(0, len(ratios), chunk):
        clip = ratios[start : start + chunk, None] * top[None, :]  # (R, C)
        scale = scale_for(clip, bits, signed).unsqueeze(-1)  # (R, C, 1)
        errors.append((fake_quant(rows.unsqueeze(0), scale, bits, signed) - rows).pow(2).sum(dim=-1))
    best = torch.cat(errors).argmin(dim=0)  # first minimum = largest ratio among ties
    return ratios[best] * top
