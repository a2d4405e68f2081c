"""Commands of randomized smoothing: certify and predict a test subset, analyze certify runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from certquant.cli.common import engine_config, engine_options
from certquant.cli.irs import certify_incremental_cmd
from certquant.data import every_kth, load_dataset
from certquant.engine import make_engine
from certquant.models import load_checkpoint
from certquant.report.certified import certified_accuracy_table, load_certify_run, plot_certified_accuracy
from certquant.smoothing import certify_dataset, predict_dataset, validate_smoothing_args
from certquant.smoothing.config import CertifyConfig, IRSConfig, check_sigma
from certquant.smoothing.sequential import SequentialSettings, certify_dataset_sequential, validate_radii
from certquant.train import resolve_device
from certquant.utils.config import field_docs
from certquant.utils.errors import CertquantError

CHECKPOINT_HELP = "checkpoint file or zoo name (see 'certquant zoo')"
DATASET_HELP = "dataset (default: the checkpoint's; another one is refused)"
SIGMA_HELP = "noise std in [0,1] pixel units (default: the checkpoint's training sigma)"
CERTIFY, IRS = CertifyConfig(), IRSConfig()
CERTIFY_DOCS, IRS_DOCS = field_docs(CertifyConfig), field_docs(IRSConfig)
ENGINE_OPTIONS = engine_options()


def _prepare(
    checkpoint: str, dataset: Optional[str], sigma: Optional[float], skip: int, max_images: Optional[int], device: str
) -> tuple[Any, dict, float, Any, Any, list[int], dict]:
    """Load the checkpoint and its test set; return model, info, sigma, images, labels, indices, identity."""
    check_sigma(sigma)
    dev = resolve_device(device)
    model, info = load_checkpoint(checkpoint, expect_dataset=dataset, map_location=dev)
    if sigma is None and info.get("sigma") is None:
        raise CertquantError(f"'{checkpoint}' records no training sigma: give --sigma")
    sigma = float(info["sigma"]) if sigma is None else sigma
    if info.get("sigma") is not None and abs(sigma - float(info["sigma"])) > 1e-9:
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
    n0: int = typer.Option(CERTIFY.n0, "--n0", help=CERTIFY_DOCS["n0"]),
    n: int = typer.Option(CERTIFY.n, "--n", help=CERTIFY_DOCS["n"]),
    alpha: float = typer.Option(CERTIFY.alpha, help=CERTIFY_DOCS["alpha"]),
    skip: int = typer.Option(1, help="certify every SKIP-th test image (Cohen et al.: 20 on CIFAR-10)"),
    max_images: Optional[int] = typer.Option(None, "--max", help="certify at most M images"),
    batch: int = typer.Option(CERTIFY.batch, "--batch", help=CERTIFY_DOCS["batch"]),
    seed: int = typer.Option(CERTIFY.seed, help=CERTIFY_DOCS["seed"]),
    device: str = typer.Option("auto", help="auto, cpu or cuda (part of the noise seeding)"),
    out: Path = typer.Option(..., help="run folder: certificates.jsonl, summary.json, certify.tsv"),
    resume: bool = typer.Option(False, help="continue the run in --out where it stopped (same arguments)"),
    channels_last: bool = typer.Option(
        True,
        help="run the model in torch.channels_last (measured 2x faster on CPU for "
        "the small CNN; logits may differ in the last float bits)",
    ),
    progress: bool = typer.Option(True, help="show a progress bar"),
    keep_cache: bool = typer.Option(
        False,
        "--keep-cache",
        help="also write the IRS cache (OUT/irs_cache: c_A, pA_lower, "
        "noise seeds, every sample's class) for --incremental-from",
    ),
    incremental_from: Optional[Path] = typer.Option(
        None,
        "--incremental-from",
        help="IRS: certify CHECKPOINT (e.g. quantized) from this base run's cache (certified with --keep-cache)",
    ),
    n_p: Optional[int] = typer.Option(None, "--np", help="IRS: " + IRS_DOCS["n_p"]),
    gamma: float = typer.Option(IRS.gamma, help="IRS: " + IRS_DOCS["gamma"]),
    alpha_zeta: float = typer.Option(IRS.alpha_zeta, "--alpha-zeta", help="IRS: " + IRS_DOCS["alpha_zeta"]),
    disparity: str = typer.Option(IRS.disparity, help="IRS: " + IRS_DOCS["disparity"]),
    radii: Optional[str] = typer.Option(
        None,
        "--radii",
        help="sequential: certify these radii (e.g. 0.25,0.5,0.75,1.0), "
        "stopping per image as soon as each is decided (needs --n-max)",
    ),
    n_max: Optional[int] = typer.Option(
        None,
        "--n-max",
        help="sequential certification with at most N_MAX estimation "
        "samples (same noise as --n N_MAX); without --radii: ACR mode",
    ),
    tolerance: float = typer.Option(
        0.05, help="sequential ACR mode: stop when the radius cannot grow by more than this"
    ),
    engine: str = ENGINE_OPTIONS["engine"],
    workers: Optional[int] = ENGINE_OPTIONS["workers"],
    gpus_per_worker: float = ENGINE_OPTIONS["gpus_per_worker"],
    threads_per_worker: Optional[int] = ENGINE_OPTIONS["threads_per_worker"],
) -> None:
    """CERTIFY (Cohen et al.) every SKIP-th test image; resumable; writes certificates, summary and a Cohen TSV.
    With --incremental-from BASE_RUN --np N_P: incremental randomized smoothing (IRS) from the base run's cache.
    With --engine ray: images sharded over Ray workers (same certificates; this process writes the files)."""
    engine_cfg = engine_config(engine, workers, gpus_per_worker, threads_per_worker)
    if incremental_from is not None:
        if keep_cache:
            raise CertquantError("--keep-cache applies to a full certification, not to --incremental-from")
        if n_max is not None:
            raise CertquantError(
                "with --incremental-from, --np is the most samples sequential IRS may use: drop --n-max"
            )
        with make_engine(engine_cfg) as eng:
            certify_incremental_cmd(
                ctx,
                checkpoint,
                incremental_from,
                n_p,
                gamma,
                alpha_zeta,
                disparity,
                out,
                dataset,
                skip,
                max_images,
                device,
                channels_last,
                progress,
                resume,
                validate_radii(parse_radii(radii)),
                sigma=sigma,
                n0=n0,
                n=n,
                alpha=alpha,
                batch=batch,
                seed=seed,
                engine=eng,
            )
        return
    if n_p is not None:
        raise CertquantError("--np is an IRS option: give --incremental-from BASE_RUN too")
    if n_max is not None or radii is not None:
        if keep_cache:
            raise CertquantError("--keep-cache applies to a full certification, not to --n-max (sequential)")
        if n_max is None:
            raise CertquantError("--radii certifies sequentially: give --n-max N too (e.g. 100000)")
        if engine_cfg.engine != "local":
            raise CertquantError("sequential certification (--n-max) runs on the local engine: drop --engine")
        _certify_sequential_cmd(
            checkpoint,
            dataset,
            sigma,
            n0,
            n_max,
            alpha,
            skip,
            max_images,
            batch,
            seed,
            device,
            out,
            channels_last,
            progress,
            radii,
            tolerance,
            resume,
        )
        return
    CertifyConfig(n0=n0, n=n, alpha=alpha, batch=batch, seed=seed)  # one-line errors before loading anything
    model, info, sigma, images, labels, indices, identity = _prepare(
        checkpoint, dataset, sigma, skip, max_images, device
    )
    arguments = {
        "checkpoint": checkpoint,
        "dataset": info["dataset"],
        "sigma": sigma,
        "n0": n0,
        "n": n,
        "alpha": alpha,
        "skip": skip,
        "max": max_images,
        "batch": batch,
        "seed": seed,
        "device": device,
        "channels_last": channels_last,
        "out": str(out),
    }
    with make_engine(engine_cfg) as eng:
        summary = certify_dataset(
            model,
            images,
            labels,
            indices,
            out,
            sigma,
            n0,
            n,
            alpha,
            batch,
            seed,
            identity=identity,
            arguments=arguments,
            provenance={"checkpoint_sha256": info["sha256"], "checkpoint_path": info["path"]},
            input_shape=_input_shape(info),
            progress=progress,
            channels_last=channels_last,
            keep_cache=keep_cache,
            resume=resume,
            engine=eng,
        )
    accs = ", ".join(f"{r}: {a:.3f}" for r, a in summary["certified_accuracy"].items())
    typer.echo(
        f"{summary['num_images']} images: clean accuracy {summary['clean_accuracy']:.4f}, "
        f"ACR {summary['acr']:.4f}, abstain {summary['abstain_rate']:.3f}"
    )
    typer.echo(f"certified accuracy at radius {accs}")
    typer.echo(f"wrote {out}/certificates.jsonl, summary.json, certify.tsv" + (", irs_cache/" if keep_cache else ""))


def parse_radii(text: Optional[str]) -> Optional[list[float]]:
    """ "0.25,0.5" -> [0.25, 0.5]; one line for anything else."""
    if text is None:
        return None
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise CertquantError(f"--radii must be comma-separated numbers, e.g. 0.25,0.5,0.75,1.0, got '{text}'") from None


def _certify_sequential_cmd(
    checkpoint: str,
    dataset: Optional[str],
    sigma: Optional[float],
    n0: int,
    n_max: int,
    alpha: float,
    skip: int,
    max_images: Optional[int],
    batch: int,
    seed: int,
    device: str,
    out: Path,
    channels_last: bool,
    progress: bool,
    radii_text: Optional[str],
    tolerance: float,
    resume: bool,
) -> None:
    """``certify --n-max N [--radii R1,R2,...]``: sequential CERTIFY (smoothing/sequential.py)."""
    radii = validate_radii(parse_radii(radii_text))
    settings = SequentialSettings(tolerance=tolerance)
    CertifyConfig(n0=n0, alpha=alpha, batch=batch, seed=seed)  # one-line errors before loading anything
    validate_smoothing_args(1.0, alpha, batch, seed, n_max=n_max)
    model, info, sigma, images, labels, indices, identity = _prepare(
        checkpoint, dataset, sigma, skip, max_images, device
    )
    arguments = {
        "checkpoint": checkpoint,
        "dataset": info["dataset"],
        "sigma": sigma,
        "n0": n0,
        "n_max": n_max,
        "radii": radii,
        "tolerance": tolerance,
        "alpha": alpha,
        "skip": skip,
        "max": max_images,
        "batch": batch,
        "seed": seed,
        "device": device,
        "channels_last": channels_last,
        "out": str(out),
    }
    summary = certify_dataset_sequential(
        model,
        images,
        labels,
        indices,
        out,
        sigma,
        radii,
        n0,
        n_max,
        alpha,
        batch,
        seed,
        settings,
        identity=identity,
        arguments=arguments,
        provenance={"checkpoint_sha256": info["sha256"], "checkpoint_path": info["path"]},
        input_shape=_input_shape(info),
        progress=progress,
        channels_last=channels_last,
        resume=resume,
    )
    seq = summary["sequential"]
    typer.echo(
        f"{summary['num_images']} images: {seq['samples_per_image']:.0f} samples per image, "
        f"{seq['fewer_samples_than_fixed_n']:.1f}x fewer than CERTIFY with n = {n_max}"
    )
    if radii is not None:
        accs = ", ".join(f"{r}: {a:.3f}" for r, a in seq["certified_accuracy_at_radii"].items())
        typer.echo(f"certified accuracy at radius {accs}")
    else:
        typer.echo(f"clean accuracy {summary['clean_accuracy']:.4f}, ACR {summary['acr']:.4f} (tolerance {tolerance})")
    typer.echo(f"wrote {out}/certificates.jsonl, summary.json, certify.tsv")


def predict_cmd(
    checkpoint: str = typer.Option(..., help=CHECKPOINT_HELP),
    dataset: Optional[str] = typer.Option(None, help=DATASET_HELP),
    sigma: Optional[float] = typer.Option(None, help=SIGMA_HELP),
    n: int = typer.Option(CERTIFY.n, "--n", help="noise samples per image"),
    alpha: float = typer.Option(CERTIFY.alpha, help="abstain unless the binomial test's p-value is <= alpha"),
    skip: int = typer.Option(1, help="predict every SKIP-th test image"),
    max_images: Optional[int] = typer.Option(None, "--max", help="predict at most M images"),
    batch: int = typer.Option(CERTIFY.batch, "--batch", help=CERTIFY_DOCS["batch"]),
    seed: int = typer.Option(CERTIFY.seed, help=CERTIFY_DOCS["seed"]),
    device: str = typer.Option("auto", help="auto, cpu or cuda (part of the noise seeding)"),
    out: Path = typer.Option(..., help="run folder: predictions.jsonl, summary.json, predict.tsv"),
    resume: bool = typer.Option(False, help="continue the run in --out where it stopped (same arguments)"),
    channels_last: bool = typer.Option(
        True,
        help="run the model in torch.channels_last (measured 2x faster on CPU for "
        "the small CNN; logits may differ in the last float bits)",
    ),
    progress: bool = typer.Option(True, help="show a progress bar"),
) -> None:
    """PREDICT (Cohen et al.) every SKIP-th test image with the smoothed classifier; resumable."""
    CertifyConfig(n=n, alpha=alpha, batch=batch, seed=seed)  # one-line errors before loading anything
    model, info, sigma, images, labels, indices, identity = _prepare(
        checkpoint, dataset, sigma, skip, max_images, device
    )
    arguments = {
        "checkpoint": checkpoint,
        "dataset": info["dataset"],
        "sigma": sigma,
        "n": n,
        "alpha": alpha,
        "skip": skip,
        "max": max_images,
        "batch": batch,
        "seed": seed,
        "device": device,
        "channels_last": channels_last,
        "out": str(out),
    }
    summary = predict_dataset(
        model,
        images,
        labels,
        indices,
        out,
        sigma,
        n,
        alpha,
        batch,
        seed,
        identity=identity,
        arguments=arguments,
        provenance={"checkpoint_sha256": info["sha256"], "checkpoint_path": info["path"]},
        input_shape=_input_shape(info),
        progress=progress,
        channels_last=channels_last,
        resume=resume,
    )
    typer.echo(
        f"{summary['num_images']} images: smoothed accuracy {summary['accuracy']:.4f}, "
        f"abstain {summary['abstain_rate']:.3f}"
    )
    typer.echo(f"wrote {out}/predictions.jsonl, summary.json, predict.tsv")


def analyze_cmd(
    runs: list[Path] = typer.Argument(..., help="run folders of 'certquant certify'"),
    plot: Optional[Path] = typer.Option(
        None, help="PNG to draw (default: RUN/certified_accuracy.png for one run, ./certified_accuracy.png for several)"
    ),
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
