"""Commands of deployment: export a checkpoint to ONNX, read or write its certificate card, import checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from certquant.utils.errors import CertquantError


def export_cmd(
    checkpoint: str = typer.Option(..., help="quantized or full-precision checkpoint (or zoo name)"),
    format: str = typer.Option("onnx", "--format", help="export format: onnx"),
    out: Path = typer.Option(..., help="the .onnx file to write"),
    opset: int = typer.Option(21, help="ONNX opset, 13..21; 21 stores weights of <= 4 bits as int4"),
    integer_kernels: bool = typer.Option(
        True,
        help="layers of <= 8 bits as ConvInteger / MatMulInteger on the integer levels, bit-exact with the "
        "fake-quantized model; --no-integer-kernels: QDQ, float kernels on the levels (other float rounding)",
    ),
) -> None:
    """Export a checkpoint as an ONNX graph that computes what the fake-quantized model computes."""
    from certquant.deploy.export import FORMATS, export_checkpoint

    if format not in FORMATS:
        raise CertquantError(f"export format '{format}' is not supported: use onnx")
    result = export_checkpoint(checkpoint, out, opset, integer_kernels)
    stored: dict[str, int] = {}
    for layer in result.layers:
        key = f"{layer.kernel} W:{layer.weight} A:{layer.activation}" + (" +clip" if layer.clip else "")
        stored[key] = stored.get(key, 0) + 1
    typer.echo(
        f"wrote {result.path} ({result.path.stat().st_size / 1024:.1f} KiB, opset {opset}); layers: "
        + "; ".join(f"{n} x {k}" for k, n in stored.items())
    )


def card_cmd(
    model: Path = typer.Argument(..., help="an exported .onnx file"),
    write_from: Optional[Path] = typer.Option(
        None, "--from", help="write the card from this 'certquant certify' run folder of the file (its summary.json)"
    ),
) -> None:
    """Print the certificate card of an ONNX file and whether its graph still matches the certified hash."""
    from certquant.deploy.card import check_card, format_card, write_card

    if write_from is not None:
        write_card(model, write_from)
    card, digest, matches = check_card(model)
    typer.echo(format_card(card, digest, matches))
    if card is not None and not matches:
        raise typer.Exit(1)


def import_cmd(
    args: list[str] = typer.Argument(..., help="cohen: PATH; torch: MODULE:FACTORY PATH"),
    format: str = typer.Option(..., "--format", help="cohen (Cohen et al.'s released checkpoints) or torch"),
    arch: Optional[str] = typer.Option(None, help="cohen: cifar_resnet20, cifar_resnet110 or resnet50"),
    dataset: str = typer.Option(..., help="dataset the model was trained on (cifar10, imagenet, ...)"),
    sigma: float = typer.Option(..., help="the noise level the model was trained at"),
    out: Path = typer.Option(..., help="the certquant checkpoint to write"),
    mean: Optional[str] = typer.Option(
        None, help="torch: normalization mean, comma-separated (default: the dataset's)"
    ),
    std: Optional[str] = typer.Option(None, help="torch: normalization std, comma-separated (default: the dataset's)"),
) -> None:
    """Import a checkpoint without executing pickled code: Cohen et al.'s layout, or a PyTorch model you define."""
    from certquant.deploy.importers import import_cohen, import_torch

    if format == "cohen":
        if len(args) != 1 or arch is None:
            raise CertquantError("--format cohen takes one PATH and --arch (cifar_resnet20, cifar_resnet110, resnet50)")
        path = import_cohen(args[0], arch, dataset, sigma, out)
    elif format == "torch":
        if len(args) != 2:
            raise CertquantError("--format torch takes MODULE:FACTORY PATH")
        path = import_torch(args[0], args[1], dataset, sigma, out, _floats(mean, "--mean"), _floats(std, "--std"))
    else:
        raise CertquantError(f"unknown import format '{format}': use cohen or torch")
    typer.echo(f"wrote {path}")


def _floats(text: Optional[str], option: str) -> Optional[list[float]]:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise CertquantError(f"{option} must be comma-separated numbers, got '{text}'") from None
