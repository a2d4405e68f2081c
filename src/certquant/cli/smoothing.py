"""Commands of randomized smoothing: certify and predict a test subset, analyze certify runs."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional

import typer

from certquant.cli.common import run_options
from certquant.cli.irs import certify_incremental_cmd
from certquant.data import every_kth, load_dataset
from certquant.engine import EngineConfig, make_engine
from certquant.models import load_checkpoint
from certquant.report.certified import certified_accuracy_table, load_certify_run, plot_certified_accuracy
from certquant.smoothing import certify_dataset, predict_dataset
from certquant.smoothing.config import CertifyConfig, IRSConfig, check_sigma
from certquant.smoothing.incremental_sequential import IRS_SEQUENTIAL
from certquant.smoothing.sequential import SequentialSettings, certify_dataset_sequential, validate_radii
from certquant.train import resolve_device
from certquant.utils.config import field_docs
from certquant.utils.errors import CertquantError

CHECKPOINT_HELP = "checkpoint file or zoo name (see 'certquant zoo')"
DATASET_HELP = "dataset (default: the checkpoint's; another one is refused)"
SIGMA_HELP = "noise std in [0,1] pixel units (default: the checkpoint's training sigma)"
CERTIFY, IRS = CertifyConfig(), IRSConfig()
CERTIFY_DOCS, IRS_DOCS = field_docs(CertifyConfig), field_docs(IRSConfig)
ENGINE, ENGINE_DOCS = EngineConfig(), field_docs(EngineConfig)


# the options certify and predict share (Typer reads an option's definition again for each command)
SHARED = {
    "checkpoint": typer.Option(..., help=CHECKPOINT_HELP),
    "dataset": typer.Option(None, help=DATASET_HELP),
    "sigma": typer.Option(None, help=SIGMA_HELP),
    "skip": typer.Option(1, help="every SKIP-th test image (Cohen et al.: 20 on CIFAR-10)"),
    "max_images": typer.Option(None, "--max", help="at most M images"),
    "batch": typer.Option(CERTIFY.batch, "--batch", help=CERTIFY_DOCS["batch"]),
    "seed": typer.Option(CERTIFY.seed, help=CERTIFY_DOCS["seed"]),
    "device": typer.Option("auto", help="auto, cpu or cuda (part of the noise seeding)"),
    "out": typer.Option(..., help="run folder: the per-image JSONL, summary.json and a Cohen-style TSV"),
    "resume": typer.Option(False, help="continue the run in --out where it stopped (same arguments)"),
    "channels_last": typer.Option(
        True,
        help="run the model in torch.channels_last (measured 2x faster on CPU for the small CNN; logits may differ "
        "in the last float bits)",
    ),
    "progress": typer.Option(True, help="show a progress bar"),
}


def with_curtail(settings: SequentialSettings, curtail: float | None) -> SequentialSettings:
    """``settings`` with the --curtail the user gave (None: keep the default; 0: curtailment off)."""
    if curtail is None:
        return settings
    return dataclasses.replace(settings, curtail=None if curtail == 0 else curtail)


def _prepare(ctx: typer.Context, **resolved: Any) -> tuple[Any, float, Any, Any, list[int], dict[str, Any]]:
    """Load the command's checkpoint and its test set; return model, sigma, images, labels, indices and the dataset
    run's options (identity, arguments with ``resolved`` values, provenance, input shape, progress, channels_last,
    resume)."""
    p = ctx.params
    check_sigma(p["sigma"])
    model, info = load_checkpoint(
        p["checkpoint"], expect_dataset=p["dataset"], map_location=resolve_device(p["device"])
    )
    if p["sigma"] is None and info.get("sigma") is None:
        raise CertquantError(f"'{p['checkpoint']}' records no training sigma: give --sigma")
    sigma = float(info["sigma"]) if p["sigma"] is None else p["sigma"]
    if info.get("sigma") is not None and abs(sigma - float(info["sigma"])) > 1e-9:
        typer.echo(f"note: certifying at sigma {sigma}, the checkpoint was trained at {info['sigma']}", err=True)
    images, labels = load_dataset(info["dataset"], "test")
    options = run_options(ctx, info, {"skip": p["skip"]}, {}, dataset=info["dataset"], sigma=sigma, **resolved)
    return model, sigma, images, labels, every_kth(len(images), p["skip"], p["max_images"]), options


def certify_cmd(
    ctx: typer.Context,
    checkpoint: str = SHARED["checkpoint"],
    dataset: Optional[str] = SHARED["dataset"],
    sigma: Optional[float] = SHARED["sigma"],
    n0: int = typer.Option(CERTIFY.n0, "--n0", help=CERTIFY_DOCS["n0"]),
    n: int = typer.Option(CERTIFY.n, "--n", help=CERTIFY_DOCS["n"]),
    alpha: float = typer.Option(CERTIFY.alpha, help=CERTIFY_DOCS["alpha"]),
    skip: int = SHARED["skip"],
    max_images: Optional[int] = SHARED["max_images"],
    batch: int = SHARED["batch"],
    seed: int = SHARED["seed"],
    device: str = SHARED["device"],
    out: Path = SHARED["out"],
    resume: bool = SHARED["resume"],
    channels_last: bool = SHARED["channels_last"],
    progress: bool = SHARED["progress"],
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
    curtail: Optional[float] = typer.Option(
        None,
        help="sequential radii (CERTIFY and IRS): give up a radius that even a (1 - EPS) upper estimate of pA could "
        "not certify by n_max; never a wrong certificate, may lose a few (default: the benchmark's choice, see "
        "docs/sequential.md; 0: off)",
    ),
    engine: str = typer.Option(ENGINE.engine, help=ENGINE_DOCS["engine"]),
    workers: Optional[int] = typer.Option(ENGINE.workers, help=ENGINE_DOCS["workers"]),
    gpus_per_worker: float = typer.Option(ENGINE.gpus_per_worker, help=ENGINE_DOCS["gpus_per_worker"]),
    threads_per_worker: Optional[int] = typer.Option(ENGINE.threads_per_worker, help=ENGINE_DOCS["threads_per_worker"]),
) -> None:
    """CERTIFY (Cohen et al.) every SKIP-th test image; resumable; writes certificates, summary and a Cohen TSV.
    With --incremental-from BASE_RUN --np N_P: incremental randomized smoothing (IRS) from the base run's cache.
    With --n-max [--radii]: sequential certification (stops per image once decided).
    With --engine ray: images sharded over Ray workers (same certificates; this process writes the files)."""
    engine_cfg = EngineConfig(engine, workers, gpus_per_worker, threads_per_worker=threads_per_worker)
    sequential = n_max is not None or radii is not None
    if keep_cache and (incremental_from is not None or sequential):
        other = "--incremental-from" if incremental_from is not None else "--n-max (sequential)"
        raise CertquantError(f"--keep-cache applies to a full certification, not to {other}")
    if incremental_from is not None:
        if n_max is not None:
            raise CertquantError(
                "with --incremental-from, --np is the most samples sequential IRS may use: drop --n-max"
            )
        if n_p is None:
            raise CertquantError(
                "--incremental-from needs --np N_P (reused noise samples per image, e.g. 1000 = 10% of n)"
            )
        irs = IRSConfig(n_p=n_p, gamma=gamma, alpha_zeta=alpha_zeta, disparity=disparity)
        irs_settings = with_curtail(IRS_SEQUENTIAL, curtail)
        with make_engine(engine_cfg) as eng:
            certify_incremental_cmd(ctx, incremental_from, irs, validate_radii(parse_radii(radii)), eng, irs_settings)
        return
    if n_p is not None:
        raise CertquantError("--np is an IRS option: give --incremental-from BASE_RUN too")
    if radii is not None and n_max is None:
        raise CertquantError("--radii certifies sequentially: give --n-max N too (e.g. 100000)")
    if sequential and engine_cfg.engine != "local":
        raise CertquantError("sequential certification (--n-max) runs on the local engine: drop --engine")
    radii_list = validate_radii(parse_radii(radii))
    settings = with_curtail(SequentialSettings(tolerance=tolerance), curtail)
    CertifyConfig(n0=n0, n=n, alpha=alpha, batch=batch, seed=seed)  # one-line errors before loading anything
    model, sigma, images, labels, indices, options = _prepare(ctx, radii=radii_list)
    if n_max is not None:
        summary = certify_dataset_sequential(
            model, images, labels, indices, out, sigma, radii_list, n0, n_max, alpha, batch, seed, settings, **options
        )
        seq = summary["sequential"]
        typer.echo(
            f"{summary['num_images']} images: {seq['samples_per_image']:.0f} samples per image, "
            f"{seq['fewer_samples_than_fixed_n']:.1f}x fewer than CERTIFY with n = {n_max}"
        )
        if radii_list is None:
            typer.echo(
                f"clean accuracy {summary['clean_accuracy']:.4f}, ACR {summary['acr']:.4f} (tolerance {tolerance})"
            )
        else:
            typer.echo(f"certified accuracy at radius {_accuracies(seq['certified_accuracy_at_radii'])}")
        typer.echo(f"wrote {out}/certificates.jsonl, summary.json, certify.tsv")
        return
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
            keep_cache=keep_cache,
            engine=eng,
            **options,
        )
    typer.echo(
        f"{summary['num_images']} images: clean accuracy {summary['clean_accuracy']:.4f}, "
        f"ACR {summary['acr']:.4f}, abstain {summary['abstain_rate']:.3f}"
    )
    typer.echo(f"certified accuracy at radius {_accuracies(summary['certified_accuracy'])}")
    typer.echo(f"wrote {out}/certificates.jsonl, summary.json, certify.tsv" + (", irs_cache/" if keep_cache else ""))


def predict_cmd(
    ctx: typer.Context,
    checkpoint: str = SHARED["checkpoint"],
    dataset: Optional[str] = SHARED["dataset"],
    sigma: Optional[float] = SHARED["sigma"],
    n: int = typer.Option(CERTIFY.n, "--n", help="noise samples per image"),
    alpha: float = typer.Option(CERTIFY.alpha, help="abstain unless the binomial test's p-value is <= alpha"),
    skip: int = SHARED["skip"],
    max_images: Optional[int] = SHARED["max_images"],
    batch: int = SHARED["batch"],
    seed: int = SHARED["seed"],
    device: str = SHARED["device"],
    out: Path = SHARED["out"],
    resume: bool = SHARED["resume"],
    channels_last: bool = SHARED["channels_last"],
    progress: bool = SHARED["progress"],
) -> None:
    """PREDICT (Cohen et al.) every SKIP-th test image with the smoothed classifier; resumable."""
    CertifyConfig(n=n, alpha=alpha, batch=batch, seed=seed)  # one-line errors before loading anything
    model, sigma, images, labels, indices, options = _prepare(ctx)
    summary = predict_dataset(model, images, labels, indices, out, sigma, n, alpha, batch, seed, **options)
    typer.echo(
        f"{summary['num_images']} images: smoothed accuracy {summary['accuracy']:.4f}, "
        f"abstain {summary['abstain_rate']:.3f}"
    )
    typer.echo(f"wrote {out}/predictions.jsonl, summary.json, predict.tsv")


def parse_radii(text: Optional[str]) -> Optional[list[float]]:
    """ "0.25,0.5" -> [0.25, 0.5]; one line for anything else."""
    if text is None:
        return None
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise CertquantError(f"--radii must be comma-separated numbers, e.g. 0.25,0.5,0.75,1.0, got '{text}'") from None


def _accuracies(by_radius: dict[str, float]) -> str:
    return ", ".join(f"{r}: {a:.3f}" for r, a in by_radius.items())


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
