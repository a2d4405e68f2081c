"""Quantized checkpoints: kind "quantized", loadable with ``certquant.models.load_checkpoint`` like any other.

The file holds the base checkpoint's info (arch, num_classes, in_channels, input_size, mean, std, dataset, sigma),
the base checkpoint's path and sha256, the policy, the calibration settings and ranges, and the state_dict (float
latent weights plus the quantizers' scale buffers). Loading rebuilds the architecture, wraps the policy's layers
(``prepare``) and loads the state_dict, so no calibration data is needed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from certquant.data import load_dataset, train_val_split
from certquant.models import load_checkpoint, register_checkpoint_kind
from certquant.models.checkpoint import ARCH_KEYS, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, build_from_info, load_weights
from certquant.quant.config import FinetuneConfig, QuantizeConfig
from certquant.quant.cost import bitops, bitops_fraction, model_size_bits
from certquant.quant.finetuning import FINETUNE_THREADS, finetune
from certquant.quant.layers import quantizable_layers
from certquant.quant.policy import Policy
from certquant.quant.quantize import activation_ranges, noisy_calibration_batch, prepare, quantize
from certquant.train.evaluate import resolve_device
from certquant.utils.config import check_sigma
from certquant.utils.errors import CertquantError
from certquant.utils.io import atomic_torch_save

KIND = "quantized"
LOADER_MODULE = "certquant.quant.checkpoint"
BASE_KEYS = ARCH_KEYS + ("dataset", "sigma")
NO_FINETUNE = FinetuneConfig(epochs=0)


def _load_quantized(payload: dict[str, Any]) -> nn.Module:
    model = build_from_info(payload)
    prepare(model, Policy.from_dict(payload["policy"]))
    return load_weights(model, payload["state_dict"], "quantized checkpoint does not fit its architecture and policy")


register_checkpoint_kind(KIND, _load_quantized)


def input_shape(info: dict[str, Any]) -> tuple[int, int, int]:
    """(C, H, W) of a checkpoint's inputs."""
    return (int(info["in_channels"]), int(info["input_size"]), int(info["input_size"]))


def save_quantized(
    path: str | os.PathLike[str],
    qmodel: nn.Module,
    policy: Policy,
    base_info: dict[str, Any],
    calibration: dict[str, Any],
    finetune_info: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> Path:
    """Write a quantized checkpoint atomically. ``base_info`` is the info ``load_checkpoint`` returned for the base."""
    missing = [k for k in BASE_KEYS if k not in base_info]
    if missing:
        raise CertquantError(f"base checkpoint info lacks {', '.join(missing)}")
    layers = quantizable_layers(qmodel, input_shape(base_info))
    policy.validate(layers, base_info["arch"])
    stored_policy = Policy(dict(policy.items()), arch=policy.arch or base_info["arch"], meta=policy.meta)
    payload: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "kind": KIND,
        "loader_module": LOADER_MODULE,
    }
    payload.update({k: base_info[k] for k in BASE_KEYS})
    payload["mean"], payload["std"] = list(payload["mean"]), list(payload["std"])
    payload.update(
        train_args=base_info.get("train_args", {}),
        base_checkpoint={
            "path": str(base_info.get("path", "")),
            "sha256": base_info.get("sha256", ""),
            "kind": base_info.get("kind", "model"),
            "metrics": base_info.get("metrics", {}),
        },
        policy=stored_policy.to_dict(),
        cost={
            "bitops": bitops(layers, policy),
            "bitops_fraction": bitops_fraction(layers, policy),
            "model_size_bits": model_size_bits(layers, policy),
        },
        calibration=calibration,
        ranges=activation_ranges(qmodel),
        finetune=finetune_info,
        metrics=metrics or {},
        created=time.strftime("%Y-%m-%dT%H:%M:%S"),
    )
    payload["state_dict"] = {k: v.detach().cpu() for k, v in qmodel.state_dict().items()}
    atomic_torch_save(payload, path)
    return Path(path)


def _train_images(info: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """The base model's own training images (its validation split held out when the checkpoint records one)."""
    images, labels = load_dataset(info["dataset"], "train")
    args = info.get("train_args") or {}
    if args.get("val_size"):
        train_idx, _ = train_val_split(len(images), int(args["val_size"]), int(args.get("seed", 0)))
        images, labels = images[train_idx], labels[train_idx]
    return images, labels


def quantize_checkpoint(
    checkpoint: str | os.PathLike[str],
    policy: Policy,
    out: str | os.PathLike[str],
    calibration: QuantizeConfig = QuantizeConfig(),
    finetuning: FinetuneConfig = NO_FINETUNE,
    device: str = "auto",
    resume: bool = False,
    sigma: float | None = None,
    progress: bool = True,
) -> tuple[nn.Module, Path]:
    """Quantize a checkpoint with ``policy``, calibrated as ``calibration`` says on training images carrying noise of
    std ``sigma``; fine-tune with the same noise as ``finetuning`` says (default: not at all; resumable state in
    ``<out>.finetune/``); write ``out``.

    ``sigma``: the noise the quantized model will be certified at; None takes the checkpoint's. A run certifying at
    another sigma than its checkpoint's passes its own, so that one sigma holds for the whole run (calibration,
    fine-tuning and certification). The written checkpoint records it as its ``sigma`` (the base's stays in
    ``calibration.base_sigma``)."""
    q, f = calibration, finetuning
    base, info = load_checkpoint(checkpoint)
    layers = quantizable_layers(base, input_shape(info))
    policy.validate(layers, info["arch"])
    check_sigma(sigma)
    sigma = float(info["sigma"]) if sigma is None else float(sigma)
    images, labels = _train_images(info)
    calib = noisy_calibration_batch(images, sigma, q.calibration_images, q.seed)
    dev = resolve_device(device)
    qmodel = quantize(base.to(dev), policy, calib, arch=info["arch"], act_clip=q.act_clip, weight_clip=q.weight_clip)
    calibration_info = {
        "images": q.calibration_images,
        "seed": q.seed,
        "sigma": sigma,
        "base_sigma": float(info["sigma"]),
        "split": "train",
        "act_clip": q.act_clip,
        "weight_clip": q.weight_clip,
    }
    finetune_info = None
    if f.epochs > 0:
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(f.seed))
        if f.images:
            order = order[: f.images]
        out_path = Path(out)
        state_dir = out_path.parent / f"{out_path.stem}.finetune"
        started = time.time()
        finetune(
            qmodel,
            images[order],
            labels[order],
            sigma,
            f.epochs,
            lr=f.lr,
            batch_size=f.batch,
            seed=f.seed,
            out=state_dir,
            resume=resume,
            device=dev,
            progress=progress,
        )
        finetune_info = {
            "epochs": f.epochs,
            "images": len(order),
            "lr": f.lr,
            "batch_size": f.batch,
            "seed": f.seed,
            "sigma": sigma,
            "seconds": time.time() - started,
            "state_dir": str(state_dir),
            "threads": FINETUNE_THREADS if dev.type == "cpu" else None,
        }
    path = save_quantized(out, qmodel.cpu(), policy, {**info, "sigma": sigma}, calibration_info, finetune_info)
    return qmodel.eval(), path
