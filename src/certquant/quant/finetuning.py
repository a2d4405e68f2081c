"""Quantization-aware fine-tuning with the base model's Gaussian noise augmentation (SPEC §5: "fine-tune the best
policy, quantization-aware, with the same Gaussian noise augmentation"). The loop is the trainer's ``noisy_epoch``;
gradients reach the float weights through the quantizers' straight-through rounding; the calibrated ranges stay fixed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from certquant.train.evaluate import resolve_device
from certquant.train.trainer import noisy_epoch
from certquant.utils.config import check_sigma
from certquant.utils.errors import CertquantError
from certquant.utils.run_folder import RunFolder
from certquant.utils.threads import torch_threads

STATE_FILE = "finetune_state.pt"
# Fine-tuning's gradient sums depend on how many threads split them (utils.threads); one thread gives the same model
# on every machine and OMP_NUM_THREADS. Measured cost on the default run's fine-tuning: see README, *The main job*.
FINETUNE_THREADS = 1


def finetune(
    qmodel: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    sigma: float,
    epochs: int,
    lr: float = 0.01,
    batch_size: int = 128,
    seed: int = 0,
    out: str | os.PathLike[str] | None = None,
    resume: bool = False,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    device: str | torch.device = "auto",
    progress: bool = True,
    threads: int | None = FINETUNE_THREADS,
) -> nn.Module:
    """Fine-tune ``qmodel`` in place on ``images`` + N(0, sigma^2 I) for ``epochs`` (SGD with momentum, cosine decay
    per epoch) and return it in eval mode. Use the sigma the base model was trained and will be certified at.

    With ``out`` (a folder), ``out/finetune_state.pt`` is written after every epoch and ``resume=True`` continues from
    it, drawing exactly the shuffles and noise an uninterrupted run would. ``progress`` shows a bar per epoch.
    ``threads``: torch CPU threads while fine-tuning (``FINETUNE_THREADS``; None: torch's current count).
    """
    check_sigma(sigma)
    if epochs < 0 or batch_size < 1 or lr <= 0:
        raise CertquantError(f"need epochs >= 0, batch size >= 1 and lr > 0 (got {epochs}, {batch_size}, {lr})")
    if len(images) != len(labels) or len(images) == 0:
        raise CertquantError(f"fine-tuning needs matching non-empty images and labels ({len(images)} vs {len(labels)})")
    dev = resolve_device(device) if isinstance(device, str) else device
    qmodel.to(dev)
    config: dict[str, Any] = {
        "sigma": float(sigma),
        "epochs": int(epochs),
        "lr": float(lr),
        "batch_size": int(batch_size),
        "seed": int(seed),
        "momentum": float(momentum),
        "weight_decay": float(weight_decay),
        "images": int(len(images)),
    }
    params = [p for p in qmodel.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs))
    history: list[dict[str, Any]] = []
    start = 0
    folder = RunFolder(Path(out), "finetune", config) if out is not None else None
    state_path = folder / STATE_FILE if folder is not None else None
    if folder is not None and folder.claim(resume) and (folder / STATE_FILE).exists():
        state = torch.load(folder / STATE_FILE, map_location=dev, weights_only=True)
        try:
            qmodel.load_state_dict(state["model"])
        except RuntimeError:
            raise CertquantError(
                f"{state_path} holds another model or policy: drop --resume or use a new output"
            ) from None
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history, start = state["history"], state["epoch"] + 1

    started = time.time()
    for epoch in range(start, epochs):
        with torch_threads(threads if dev.type == "cpu" else None):
            loss = noisy_epoch(
                qmodel,
                images,
                labels,
                optimizer,
                sigma,
                batch_size,
                seed * 1000 + epoch,
                dev,
                desc=f"fine-tune {epoch + 1}/{epochs}",
                progress=progress,
            )
        scheduler.step()
        history.append({"epoch": epoch + 1, "loss": loss, "seconds": time.time() - started})
        if folder is not None:
            folder.save_torch(
                STATE_FILE,
                {
                    "model": qmodel.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "history": history,
                    "epoch": epoch,
                },
            )
    return qmodel.eval()
