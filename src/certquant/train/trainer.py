"""Noise-augmented SGD training with a held-out validation split, per-epoch checkpoints and exact resume.

Every epoch's shuffling and noise come from generators seeded by (seed, epoch), so a resumed run draws exactly what
an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from certquant.data import dataset_info, load_dataset, train_val_split
from certquant.models import build, model_spec, save_checkpoint
from certquant.train.evaluate import accuracy, resolve_device
from certquant.utils.config import check_sigma
from certquant.utils.errors import CertquantError
from certquant.utils.run_folder import RunFolder
from certquant.utils.seeding import seeded_global_rng


@dataclass
class TrainConfig:
    """Arguments of one training run (stored in the checkpoint)."""

    dataset: str = "fashion-mnist"
    model: str = "small-cnn"
    sigma: float = 0.25  # Gaussian noise std in [0, 1] pixel units; the same sigma is used at certification
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1  # SGD learning rate (Cohen et al.: 0.1)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "cosine"  # "cosine" or "step" (x0.1 every step_size epochs)
    step_size: int = 30
    val_size: int = 5000  # images held out of the official train split for validation
    train_limit: int | None = None  # use only the first N training images (quick runs and tests)
    seed: int = 0
    device: str = "auto"

    def validate(self) -> None:
        dataset_info(self.dataset)
        model_spec(self.model)
        check_sigma(self.sigma)
        if self.epochs < 1 or self.batch_size < 1:
            raise CertquantError("epochs and batch size must be >= 1")
        if self.schedule not in ("cosine", "step"):
            raise CertquantError(f"unknown schedule '{self.schedule}': use cosine or step")


def _scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=0.1)


def noisy_epoch(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    sigma: float,
    batch_size: int,
    seed: int,
    device: torch.device,
    desc: str = "train",
    progress: bool = True,
) -> float:
    """One epoch of cross-entropy on x + N(0, sigma^2 I); shuffling and noise seeded by ``seed``. Returns mean loss.
    ``progress`` shows a bar of the minibatches. Shuffling and noise come from their own generators; dropout, which
    takes none, from the global RNG seeded for the epoch and restored afterwards (``seeded_global_rng``)."""
    model.train()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    noise_gen = torch.Generator(device=device).manual_seed(seed + 1)
    total, count = 0.0, 0
    bar = tqdm(range(0, len(order), batch_size), desc=desc, leave=False, unit="batch", disable=not progress)
    with seeded_global_rng(seed, device):  # dropout, if any
        for start in bar:
            idx = order[start : start + batch_size]
            x, y = images[idx].to(device), labels[idx].to(device)
            x = x + sigma * torch.randn(x.shape, generator=noise_gen, device=device)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
            count += len(idx)
            bar.set_postfix(loss=f"{total / count:.3f}")
    return total / max(1, count)


def train(cfg: TrainConfig, out: str | Path, resume: bool = False) -> Path:
    """Train ``cfg.model`` on ``cfg.dataset`` with noise; writes ``out/state.pt`` each epoch and ``out/model.pt`` at the end."""
    cfg.validate()
    out = Path(out)
    device = resolve_device(cfg.device)
    info = dataset_info(cfg.dataset)
    images, labels = load_dataset(cfg.dataset, "train")
    train_idx, val_idx = train_val_split(len(images), cfg.val_size, cfg.seed)
    if cfg.train_limit:
        train_idx = train_idx[: cfg.train_limit]
    x_train, y_train = images[train_idx], labels[train_idx]

    with seeded_global_rng(cfg.seed):  # weight initialisation draws from the global RNG (on the CPU)
        model = build(cfg.model, info.num_classes, info.in_channels, info.input_size, info.mean, info.std)
    model = model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scheduler = _scheduler(optimizer, cfg)
    history: list[dict[str, Any]] = []
    start_epoch = 0
    folder = RunFolder(out, "train", dataclasses.asdict(cfg))
    state_path = folder / "state.pt"
    if folder.claim(resume) and state_path.exists():
        state = torch.load(state_path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history, start_epoch = state["history"], state["epoch"] + 1

    started = time.time()
    for epoch in range(start_epoch, cfg.epochs):
        loss = noisy_epoch(
            model,
            x_train,
            y_train,
            optimizer,
            cfg.sigma,
            cfg.batch_size,
            cfg.seed * 1000 + epoch,
            device,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
        )
        scheduler.step()
        val_noisy = accuracy(model, images[val_idx], labels[val_idx], cfg.sigma, seed=cfg.seed, device=device)
        history.append(
            {
                "epoch": epoch + 1,
                "loss": loss,
                "val_noisy_accuracy": val_noisy,
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": time.time() - started,
            }
        )
        tqdm.write(f"epoch {epoch + 1}/{cfg.epochs}: loss {loss:.4f}, validation accuracy under noise {val_noisy:.4f}")
        folder.save_torch(
            "state.pt",
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "history": history,
                "epoch": epoch,
            },
        )

    test_x, test_y = load_dataset(cfg.dataset, "test")
    metrics = {
        "val_clean_accuracy": accuracy(model, images[val_idx], labels[val_idx], 0.0, device=device),
        "val_noisy_accuracy": accuracy(
            model, images[val_idx], labels[val_idx], cfg.sigma, seed=cfg.seed, device=device
        ),
        "test_clean_accuracy": accuracy(model, test_x, test_y, 0.0, device=device),
        "test_noisy_accuracy": accuracy(model, test_x, test_y, cfg.sigma, seed=cfg.seed, device=device),
        "history": history,
    }
    checkpoint_info = {
        "arch": cfg.model,
        "num_classes": info.num_classes,
        "in_channels": info.in_channels,
        "input_size": info.input_size,
        "mean": list(info.mean),
        "std": list(info.std),
        "dataset": cfg.dataset,
        "sigma": cfg.sigma,
        "train_args": dataclasses.asdict(cfg),
        "metrics": metrics,
    }
    return save_checkpoint(out / "model.pt", model.cpu(), checkpoint_info)
