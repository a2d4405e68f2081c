"""Commands of the foundation: datasets, architectures, training, evaluation, the shipped zoo."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Optional

import typer

from certquant.cli.common import new_app
from certquant.data import dataset_info, fetch_dataset, list_datasets, load_dataset
from certquant.models import list_models, load_checkpoint, model_spec
from certquant.models.zoo import zoo_entries
from certquant.smoothing.config import check_sigma
from certquant.train import TrainConfig, accuracy, resolve_device, train
from certquant.utils.errors import CertquantError
from certquant.utils.tables import markdown_table

data_app = new_app("Datasets: list them, fetch one.")
TRAIN = TrainConfig()


@data_app.command("list")
def data_list() -> None:
    """List the registered datasets with their shapes."""
    rows = []
    for name in list_datasets():
        info = dataset_info(name)
        rows.append([name, "x".join(map(str, info.input_shape)), info.num_classes, info.description])
    typer.echo(markdown_table(["name", "shape", "classes", "source"], rows))


@data_app.command("fetch")
def data_fetch(name: str = typer.Argument(..., help="dataset name (see 'certquant data list')")) -> None:
    """Make a dataset available offline (copy, download or extract it) and report where it lives."""
    where = fetch_dataset(name)
    images, _ = load_dataset(name, "train")
    test, _ = load_dataset(name, "test")
    typer.echo(f"{name}: {len(images)} train / {len(test)} test images, from {where}")


def models_cmd() -> None:
    """List the model architectures."""
    rows = []
    for name in list_models():
        spec = model_spec(name)
        rows.append(
            [name, f"{spec.default_in_channels}x{spec.default_input_size}x{spec.default_input_size}", spec.description]
        )
    typer.echo(markdown_table(["model", "default input", "description"], rows))


def train_cmd(
    ctx: typer.Context,
    dataset: str = typer.Option(TRAIN.dataset, help="dataset name"),
    model: str = typer.Option(TRAIN.model, help="architecture (see 'certquant models')"),
    sigma: float = typer.Option(TRAIN.sigma, help="Gaussian noise std in [0,1] pixel units"),
    epochs: int = typer.Option(TRAIN.epochs),
    batch_size: int = typer.Option(TRAIN.batch_size, "--batch"),
    lr: float = typer.Option(TRAIN.lr),
    momentum: float = typer.Option(TRAIN.momentum),
    weight_decay: float = typer.Option(TRAIN.weight_decay),
    schedule: str = typer.Option(TRAIN.schedule, help="cosine or step"),
    step_size: int = typer.Option(TRAIN.step_size, help="epochs per x0.1 step (step schedule)"),
    val_size: int = typer.Option(TRAIN.val_size, help="training images held out for validation"),
    train_limit: Optional[int] = typer.Option(TRAIN.train_limit, help="use only the first N training images"),
    seed: int = typer.Option(TRAIN.seed),
    device: str = typer.Option(TRAIN.device, help="auto, cpu or cuda"),
    out: Path = typer.Option(..., help="output folder (state.pt each epoch, model.pt at the end)"),
    resume: bool = typer.Option(False, help="continue the run in --out"),
) -> None:
    """Train a model with Gaussian noise augmentation (checkpoint every epoch, resumable)."""
    cfg = TrainConfig(**{f.name: ctx.params[f.name] for f in dataclasses.fields(TrainConfig)})
    path = train(cfg, out, resume=resume)
    _, info = load_checkpoint(path)
    m = info["metrics"]
    typer.echo(
        f"wrote {path}: test accuracy clean {m['test_clean_accuracy']:.4f}, "
        f"under N(0,{sigma}^2) noise {m['test_noisy_accuracy']:.4f}"
    )


def evaluate_cmd(
    checkpoint: Optional[list[str]] = typer.Option(
        None, help="checkpoint file or zoo name (repeatable); default: the whole zoo"
    ),
    dataset: Optional[str] = typer.Option(None, help="dataset (default: the checkpoint's; another one is refused)"),
    sigma: Optional[float] = typer.Option(None, help="noise std (default: the checkpoint's training sigma)"),
    max_images: Optional[int] = typer.Option(None, "--max", help="evaluate only the first N test images"),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto"),
) -> None:
    """Test accuracy of checkpoints on clean and on Gaussian-noised images, as a table."""
    refs = checkpoint or [entry["name"] for entry in zoo_entries()]
    if not refs:
        raise CertquantError("no checkpoint given and the zoo is empty: pass --checkpoint")
    check_sigma(sigma)
    dev = resolve_device(device)
    rows = []
    for ref in refs:
        model, info = load_checkpoint(ref, expect_dataset=dataset)
        s = sigma if sigma is not None else float(info["sigma"])
        images, labels = load_dataset(info["dataset"], "test")
        if max_images:
            images, labels = images[:max_images], labels[:max_images]
        started = time.time()
        clean = accuracy(model, images, labels, 0.0, device=dev)
        noisy = accuracy(model, images, labels, s, seed=seed, device=dev)
        speed = 2 * len(images) / (time.time() - started)
        rows.append([Path(ref).name, info["arch"], info["dataset"], s, len(images), clean, noisy, f"{speed:.0f}"])
    typer.echo(
        markdown_table(
            ["checkpoint", "model", "dataset", "sigma", "images", "clean acc", "noisy acc", "images/s"], rows
        )
    )


def zoo_cmd(as_json: bool = typer.Option(False, "--json", help="print a JSON list")) -> None:
    """List the noise-trained checkpoints shipped with certquant."""
    entries = [
        {k: e[k] for k in ("name", "path", "dataset", "model", "sigma", "clean_accuracy", "noisy_accuracy")}
        for e in zoo_entries()
    ]
    if as_json:
        typer.echo(json.dumps(entries, indent=2))
        return
    rows = [
        [e["name"], e["model"], e["dataset"], e["sigma"], e["clean_accuracy"], e["noisy_accuracy"]] for e in entries
    ]
    typer.echo(markdown_table(["name", "model", "dataset", "sigma", "clean test acc", "noisy test acc"], rows))
