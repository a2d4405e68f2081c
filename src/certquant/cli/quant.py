"""Commands of quantization: ``certquant quantize`` (write a quantized checkpoint) and ``certquant cost`` (the
per-layer bit table and BitOPs of a policy)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

import typer
from torch import nn

from certquant.models import load_checkpoint
from certquant.quant import LayerInfo, Policy, cost_summary, format_cost_table, quantizable_layers, quantize_checkpoint
from certquant.quant.checkpoint import input_shape
from certquant.quant.config import FinetuneConfig, QuantizeConfig
from certquant.utils.config import field_docs
from certquant.utils.errors import CertquantError

QUANTIZE, FINETUNE = QuantizeConfig(), FinetuneConfig()
QUANTIZE_DOCS, FINETUNE_DOCS = field_docs(QuantizeConfig), field_docs(FinetuneConfig)

_UNIFORM = re.compile(r"^\s*(?:w?(\d+)\s*(?:[/a,x]\s*(\d+))?)\s*$", re.IGNORECASE)


def parse_uniform(text: str) -> tuple[int, int]:
    """'4' -> (4, 4); '4/8', 'W4A8', '4x8' -> (4, 8)."""
    match = _UNIFORM.match(text)
    if not match:
        raise CertquantError(f"--uniform takes W or W/A bits (e.g. 4 or 4/8), got '{text}'")
    w = int(match.group(1))
    return w, int(match.group(2)) if match.group(2) else w


def _policy(
    model: nn.Module, info: dict, policy_file: Optional[Path], uniform: Optional[str], first_last: Optional[int]
) -> tuple[list[LayerInfo], Policy]:
    """(layers, policy) for a checkpoint: from a policy file or uniform bits; refused if it does not fit."""
    if (policy_file is None) == (uniform is None):
        raise CertquantError("give exactly one of --policy P.json or --uniform W[/A]")
    layers = quantizable_layers(model, input_shape(info))
    if policy_file is not None:
        if first_last is not None:
            raise CertquantError("--first-last only applies to --uniform; put those bits in the policy file")
        policy = Policy.load(policy_file)
    else:
        w, a = parse_uniform(uniform or "")
        policy = Policy.uniform(layers, w, a, arch=info["arch"], first_last_bits=first_last)
    policy.validate(layers, info["arch"])
    return layers, policy


def quantize_cmd(
    checkpoint: str = typer.Option(..., help="base checkpoint file or zoo name"),
    policy: Optional[Path] = typer.Option(None, help="policy JSON (per-layer w/a bits)"),
    uniform: Optional[str] = typer.Option(None, help="uniform bits for every layer: W or W/A, e.g. 4 or 4/8"),
    first_last: Optional[int] = typer.Option(
        None, help="with --uniform: pin first and last layer at these bits (HAQ: 8)"
    ),
    calib_images: int = typer.Option(QUANTIZE.calibration_images, help=QUANTIZE_DOCS["calibration_images"]),
    calib_seed: int = typer.Option(QUANTIZE.seed, help=QUANTIZE_DOCS["seed"]),
    act_clip: str = typer.Option(QUANTIZE.act_clip, help=QUANTIZE_DOCS["act_clip"]),
    finetune_epochs: int = typer.Option(0, help="noise-aware quantization-aware fine-tuning epochs (0: none)"),
    finetune_images: int = typer.Option(FINETUNE.images, help=FINETUNE_DOCS["images"]),
    lr: float = typer.Option(FINETUNE.lr, help="fine-tuning " + FINETUNE_DOCS["lr"]),
    batch_size: int = typer.Option(FINETUNE.batch, "--batch", help="fine-tuning " + FINETUNE_DOCS["batch"]),
    seed: int = typer.Option(FINETUNE.seed, help="fine-tuning " + FINETUNE_DOCS["seed"]),
    device: str = typer.Option("auto", help="auto, cpu or cuda"),
    out: Path = typer.Option(..., help="output checkpoint (fine-tuning state goes to <out stem>.finetune/)"),
    resume: bool = typer.Option(False, help="continue an interrupted fine-tuning of --out"),
) -> None:
    """Quantize a checkpoint (calibrated on noisy images, optionally fine-tuned) into a 'quantized' checkpoint."""
    calibration = QuantizeConfig(calibration_images=calib_images, act_clip=act_clip, seed=calib_seed)
    finetuning = FinetuneConfig(epochs=finetune_epochs, images=finetune_images, lr=lr, batch=batch_size, seed=seed)
    model, info = load_checkpoint(checkpoint)
    _, pol = _policy(model, info, policy, uniform, first_last)
    qmodel, path = quantize_checkpoint(checkpoint, pol, out, calibration, finetuning, device, resume)
    layers = quantizable_layers(qmodel, input_shape(info))
    typer.echo(format_cost_table(layers, pol))
    typer.echo(
        f"wrote {path} (calibrated on {calib_images} training images + N(0, {info['sigma']}^2) noise"
        + (f", fine-tuned {finetune_epochs} epoch(s)" if finetune_epochs else "")
        + ")"
    )


def cost_cmd(
    checkpoint: str = typer.Option(..., help="checkpoint file or zoo name (gives the architecture and input shape)"),
    policy: Optional[Path] = typer.Option(None, help="policy JSON (per-layer w/a bits)"),
    uniform: Optional[str] = typer.Option(None, help="uniform bits: W or W/A, e.g. 4 or 4/8"),
    first_last: Optional[int] = typer.Option(None, help="with --uniform: pin first and last layer at these bits"),
    as_json: bool = typer.Option(False, "--json", help="print the per-layer rows and totals as JSON"),
) -> None:
    """Per-layer MACs, bits and BitOPs of a policy on a checkpoint's architecture, with totals."""
    model, info = load_checkpoint(checkpoint)
    layers, pol = _policy(model, info, policy, uniform, first_last)
    if as_json:
        typer.echo(
            json.dumps(
                {"checkpoint": str(checkpoint), "input_shape": list(input_shape(info)), **cost_summary(layers, pol)},
                indent=2,
            )
        )
    else:
        typer.echo(format_cost_table(layers, pol))
