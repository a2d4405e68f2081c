"""Commands of randomized smoothing: certify and predict a test subset, analyze certify runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from certquant.cli.irs import certify_incremental_cmd
from certquant.data import every_kth, load_dataset
from certquant.models import load_checkpoint
from certquant.report.certified import certified_accuracy_table, load_certify_run, plot_certified_accuracy
from certquant.smoothing import certify_dataset, predict_dataset, validate_smoothing_args
from certquant.train import resolve_device
from certquant.utils.errors import CertquantError

CHECKPOINT_HELP = "checkpoint file or zoo name (see 'certquant zoo')"
DATASET_HELP = "dataset (default: the checkpoint's; another one is refused)"
SIGMA_HELP = "noise std in [0,1] pixel units (default: the checkpoint's training sigma)"


def _prepare(checkpoint: str, dataset: Optional[str], sigma: Optional[float], skip: int, max_images: Optional[int],
             device: str) -> tuple[Any, dict, float, Any, Any, list[int], dict]:
    """Load the checkpoint and its test set; return model, info, sigma, images, labels, indices, identity."""
    if sigma is not None and sigma <= 0:
        raise CertquantError(f"--sigma must be > 0 (noise std in [0,1] pixel units), got {sigma}")
    dev = resolve_device(device)
    model, info = load_checkpoint(checkpoint, expect_dataset=dataset, map_location=dev)
    sigma = float(info["sigma"]) if sigma is None else sigma
    if abs(sigma - float(info["sigma"])) > 1e-9:
        typer.echo(f"note: certifying at sigma {sigma}, the checkpoint was trained at {info['sigma']}", err=True)
    images, labels = load_dataset(info["dataset"], "test")
    indices = every_kth(len(images), skip, max_images)
    identity = {"dataset": info["dataset"], "checkpoint_sha256": info["sha256"], "skip": skip}
    return model, info, sigma, images, labels, indices, identity


def _input_shape(info: dict) -> tuple[int, int, int]:
    return (int(info["in_channels"]), int(info["input_size"]), int(info["input_size"]))


def certify_cmd(
    ctx: typer.Context,
    checkpoint: str = typer.Option(..., help=CHECKPOINT_HELP),
    dataset: Optional[str] = typer.Option(None, help=DATASET_HELP),
    sigma: Optional[float] = typer.Option(None, help=SIGMA_HELP),
    n0: int = typer.Option(100, "--n0", help="selection samples (choose the top class c_A)"),
    n: int = typer.Option(100_000, "--n", help="estimation samples (bound pA)"),
    alpha: float = typer.Option(0.001, help="failure probability of each certificate"),
    skip: int = typer.Option(1, help="certify every SKIP-th test image (Cohen et al.: 20 on CIFAR-10)"),
    max_images: Optional[int] = typer.Option(None, "--max", help="certify at most M images"),
    batch: int = typer.Option(1000, "--batch", help="noisy samples per forward pass (part of the noise seeding)"),
    seed: int = typer.Option(0, help="run seed; image i uses a seed derived from (seed, i)"),
    device: str = typer.Option("auto", help="auto, cpu or cuda (part of the noise seeding)"),
    out: Path = typer.Option(..., help="run folder: certificates.jsonl, summary.json, certify.tsv; re-run to resume"),
    channels_last: bool = typer.Option(True, help="run the model in torch.channels_last (measured 2x faster on CPU for "
                                                  "the small CNN; logits may differ in the last float bits)"),
    progress: bool = typer.Option(True, help="show a progress bar"),
    keep_cache: bool = typer.Option(False, "--keep-cache", help="also write the IRS cache (OUT/irs_cache: c_A, pA_lower, "
                                                                "noise seeds, every sample's class) for --incremental-from"),
    incremental_from: Optional[Path] = typer.Option(None, "--incremental-from", help="IRS: certify CHECKPOINT (e.g. "
                                                    "quantized) from this base run's cache (certified with --keep-cache)"),
    n_p: Optional[int] = typer.Option(None, "--np", help="IRS: noise samples reused per image (1 to 10 percent of the base n)"),
    gamma: float = typer.Option(0.99, help="IRS: above this base pA_lower, certify directly with the n_p samples"),
    alpha_zeta: float = typer.Option(0.001, "--alpha-zeta", help="IRS: failure probability of the disparity bound zeta"),
    disparity: str = typer.Option("one-sided", help="IRS: one-sided (bounds f = c_A, f' != c_A; never looser; the "
                                                             "default by the benchmark) or two-sided (bounds f != f', the paper)"),
) -> None:
    """CERTIFY (Cohen et al.) every SKIP-th test image; resumable; writes certificates, summary and a Cohen TSV.
    With --incremental-from BASE_RUN --np N_P: incremental randomized smoothing (IRS) from the base run's cache."""
    if incremental_from is not None:
        if keep_cache:
            raise CertquantError("--keep-cache applies to a full certification, not to --incremental-from")
        certify_incremental_cmd(ctx, checkpoint, incremental_from, n_p, gamma, alpha_zeta, disparity, out, dataset, skip,
                                max_images, device, channels_last, progress, sigma=sigma, n0=n0, n=n, alpha=alpha,
                                batch=batch, seed=seed)
        return
    if n_p is not None:
        raise CertquantError("--np is an IRS option: give --incremental-from BASE_RUN too")
    validate_smoothing_args(sigma if sigma is not None else 1.0, alpha, batch, seed, n0=n0, n=n)
    model, info, sigma, images, labels, indices, identity = _prepare(checkpoint, dataset, sigma, skip, max_images, device)
    arguments = {"checkpoint": checkpoint, "dataset": info["dataset"], "sigma": sigma, "n0": n0, "n": n, "alpha": alpha,
                 "skip": skip, "max": max_images, "batch": batch, "seed": seed, "device": device,
                 "channels_last": channels_last, "out": str(out)}
    summary = certify_dataset(model, images, labels, indices, out, sigma, n0, n, alpha, batch, seed,
                              identity=identity, arguments=arguments,
                              provenance={"checkpoint_sha256": info["sha256"], "checkpoint_path": info["path"]},
                              input_shape=_input_shape(info), progress=progress, channels_last=channels_last,
                              keep_cache=keep_cache)
    accs = ", ".join(f"{r}: {a:.3f}" for r, a in summary["certified_accuracy"].items())
    typer.echo(f"{summary['num_images']} images: clean accuracy {summary['clean_accuracy']:.4f}, "
               f"ACR {summary['acr']:.4f}, abstain {summary['abstain_rate']:.3f}")
    typer.echo(f"certified accuracy at radius {accs}")
    typer.echo(f"wrote {out}/certificates.jsonl, summary.json, certify.tsv" + (", irs_cache/" if keep_cache else ""))


def predict_cmd(
    checkpoint: str = typer.Option(..., help=CHECKPOINT_HELP),
    dataset: Optional[str] = typer.Option(None, help=DATASET_HELP),
    sigma: Optional[float] = typer.Option(None, help=SIGMA_HELP),
    n: int = typer.Option(100_000, "--n", help="noise samples per image"),
    alpha: float = typer.Option(0.001, help="abstain unless the binomial test's p-value is <= alpha"),
    skip: int = typer.Option(1, help="predict every SKIP-th test image"),
    max_images: Optional[int] = typer.Option(None, "--max", help="predict at most M images"),
    batch: int = typer.Option(1000, "--batch", help="noisy samples per forward pass (part of the noise seeding)"),
    seed: int = typer.Option(0, help="run seed; image i uses a seed derived from (seed, i)"),
    device: str = typer.Option("auto", help="auto, cpu or cuda (part of the noise seeding)"),
    out: Path = typer.Option(..., help="run folder: predictions.jsonl, summary.json, predict.tsv; re-run to resume"),
    channels_last: bool = typer.Option(True, help="run the model in torch.channels_last (measured 2x faster on CPU for "
                                                  "the small CNN; logits may differ in the last float bits)"),
    progress: bool = typer.Option(True, help="show a progress bar"),
) -> None:
    """PREDICT (Cohen et al.) every SKIP-th test image with the smoothed classifier; resumable."""
    validate_smoothing_args(sigma if sigma is not None else 1.0, alpha, batch, seed, n=n)
    model, info, sigma, images, labels, indices, identity = _prepare(checkpoint, dataset, sigma, skip, max_images, device)
    arguments = {"checkpoint": checkpoint, "dataset": info["dataset"], "sigma": sigma, "n": n, "alpha": alpha,
                 "skip": skip, "max": max_images, "batch": batch, "seed": seed, "device": device,
                 "channels_last": channels_last, "out": str(out)}
    summary = predict_dataset(model, images, labels, indices, out, sigma, n, alpha, batch, seed,
                              identity=identity, arguments=arguments,
                              provenance={"checkpoint_sha256": info["sha256"], "checkpoint_path": info["path"]},
                              input_shape=_input_shape(info), progress=progress, channels_last=channels_last)
    typer.echo(f"{summary['num_images']} images: smoothed accuracy {summary['accuracy']:.4f}, "
               f"abstain {summary['abstain_rate']:.3f}")
    typer.echo(f"wrote {out}/predictions.jsonl, summary.json, predict.tsv")


def analyze_cmd(
    runs: list[Path] = typer.Argument(..., help="run folders of 'certquant certify'"),
    plot: Optional[Path] = typer.Option(None, help="PNG to draw (default: RUN/certified_accuracy.png for one run, "
                                                   "./certified_accuracy.png for several)"),
    step: float = typer.Option(0.25, help="radius step of the table"),
) -> None:
    """Certified accuracy of one or several certify runs side by side (markdown) and as a PNG curve."""
    if step <= 0:
        raise CertquantError(f"--step must be > 0, got {step}")
    names = [p.name for p in runs]
    if len(set(names)) < len(names):
        names = [str(p) for p in runs]
    loaded = [load_certify_run(p, name) for p, name in zip(runs, names)]
    typer.echo(certified_accuracy_table(loaded, step))
    target = plot or (runs[0] / "certified_accuracy.png" if len(runs) == 1 else Path("certified_accuracy.png"))
    typer.echo(f"wrote {plot_certified_accuracy(loaded, target)}")
