"""``certquant certify --incremental-from BASE_RUN --np N_P``: incremental randomized smoothing of a checkpoint
(typically quantized from the base run's model) against the base run's IRS cache (SPEC §3)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import typer

from certquant.cli.common import run_options
from certquant.data import every_kth, load_dataset
from certquant.engine import Engine
from certquant.models import load_checkpoint
from certquant.smoothing import CacheStore, certify_dataset_incremental
from certquant.smoothing.config import IRSConfig
from certquant.smoothing.incremental_sequential import IRS_SEQUENTIAL, certify_dataset_incremental_sequential
from certquant.smoothing.sequential import SequentialSettings
from certquant.train import resolve_device
from certquant.utils.errors import CertquantError

# command options that must agree with the cache when given explicitly: option name -> cache key
CACHE_OPTIONS = {"sigma": "sigma", "n0": "n0", "n": "n", "alpha": "alpha", "batch": "batch_size", "seed": "seed"}


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether option ``name`` was given (command line or environment), not left at its default. Compared by name:
    typer ships its own copy of click's ParameterSource."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def _check_explicit_options(ctx: typer.Context, store: CacheStore) -> None:
    """Refuse an explicitly given --sigma, --n0, --n, --alpha, --batch or --seed that differs from the cache's."""
    for option, key in CACHE_OPTIONS.items():
        value = ctx.params[option]
        if _given(ctx, option) and value is not None and float(value) != float(store.key[key]):
            flag = "--" + option.replace("_", "-")
            raise CertquantError(
                f"{flag} {value} differs from the base run's cache ({key} {store.key[key]}): IRS "
                f"certifies with the cache's arguments; drop {flag} or build a cache with it"
            )


def _check_base(info: dict, store: CacheStore, base_run: Path) -> Optional[str]:
    """Refuse a quantized checkpoint made from another base than the cache's; a note for a plain checkpoint."""
    cached = store.key.get("checkpoint_sha256")
    if info.get("dataset") != store.key.get("dataset") and store.key.get("dataset") is not None:
        raise CertquantError(
            f"checkpoint '{info['path']}' is for {info.get('dataset')}, the cache in {base_run} for "
            f"{store.key['dataset']}: use a model of the base run's dataset"
        )
    base = (info.get("base_checkpoint") or {}).get("sha256") if info.get("kind") == "quantized" else None
    if base and cached and base != cached:
        raise CertquantError(
            f"checkpoint '{info['path']}' was quantized from checkpoint {base[:12]}, but the cache in "
            f"{base_run} was made with checkpoint {cached[:12]}: certify its base with --keep-cache"
        )
    if base is None and cached and info["sha256"] != cached:
        return (
            f"note: '{info['path']}' does not record its base model; IRS is sound for any approximation, but zeta "
            "is small only when it is close to the base run's model"
        )
    return None


def certify_incremental_cmd(
    ctx: typer.Context,
    base_run: Path,
    irs: IRSConfig,
    radii: Optional[list[float]],
    engine: Engine,
    sequential: SequentialSettings = IRS_SEQUENTIAL,
) -> dict:
    """Run IRS of the command's checkpoint on the base run's cached images (or the --skip/--max subset of them)."""
    p, n_p = ctx.params, irs.n_p
    store = CacheStore.open(base_run)
    key = store.key
    _check_explicit_options(ctx, store)
    store.check(torch=torch.__version__.split("+")[0])
    if n_p > int(key["n"]):
        raise CertquantError(
            f"--np {n_p} exceeds the {key['n']} cached estimation samples of {base_run}: use --np <= {key['n']}"
        )
    dev = resolve_device(p["device"])
    if dev.type != key["device"]:
        raise CertquantError(
            f"the cache's noise was drawn on {key['device']}, not {dev.type}: use --device {key['device']} to "
            "regenerate it"
        )
    model, info = load_checkpoint(p["checkpoint"], expect_dataset=p["dataset"], map_location=dev)
    note = _check_base(info, store, base_run)
    if note:
        typer.echo(note, err=True)
    images, labels = load_dataset(key["dataset"] or info["dataset"], "test")
    explicit = _given(ctx, "skip") or _given(ctx, "max_images")
    indices = every_kth(len(images), p["skip"], p["max_images"]) if explicit else store.indices
    store.require(indices)
    cached = {option: key[name] for option, name in CACHE_OPTIONS.items()}
    unset = {} if explicit else {"skip": None, "max_images": None}
    base = {"base_checkpoint_sha256": key.get("checkpoint_sha256")}
    resolved = {"dataset": info["dataset"], **cached, **unset, "radii": radii}
    options = run_options(ctx, info, {"base_run": str(base_run)}, base, **resolved)
    out, settings = p["out"], (irs.gamma, irs.alpha_zeta, irs.disparity)
    if radii is not None:  # sequential IRS: n_p is the most f' may use; stop when the radii are decided
        summary = certify_dataset_incremental_sequential(
            model, images, labels, indices, out, store, n_p, radii, *settings, sequential, **options
        )
        seq = summary["incremental_sequential"]
        accs = ", ".join(f"{r}: {a:.3f}" for r, a in seq["certified_accuracy_at_radii"].items())
        typer.echo(
            f"{summary['num_images']} images, sequential IRS (n_p at most {n_p}): the model ran on "
            f"{seq['approx_samples_per_image']:.0f} samples per image; certified accuracy at radius {accs}"
        )
    else:
        summary = certify_dataset_incremental(
            model, images, labels, indices, out, store, n_p, *settings, base_run=base_run, engine=engine, **options
        )
        inc = summary["incremental"]
        typer.echo(
            f"{summary['num_images']} images: clean accuracy {summary['clean_accuracy']:.4f}, "
            f"ACR {summary['acr']:.4f}, abstain {summary['abstain_rate']:.3f}"
            + (f" (base model: ACR {inc['base_acr']:.4f})" if "base_acr" in inc else "")
        )
        typer.echo(
            f"IRS n_p {n_p}, {irs.disparity}: mean zeta {inc['mean_zeta']:.4f}, branches zeta "
            f"{inc['branch_counts']['zeta']} / direct {inc['branch_counts']['direct']}, confidence "
            f"{inc['confidence']:.4f}, {summary['seconds_per_image']:.3f} s/image, the model ran on "
            f"{100 * inc['evaluated_fraction']:.0f}% of the n_p samples"
        )
    typer.echo(f"wrote {out}/certificates.jsonl, summary.json, certify.tsv")
    return summary
