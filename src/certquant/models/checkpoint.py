"""Checkpoints: one self-describing file (architecture, dataset, input shape, normalization, sigma, training
arguments, metrics, state_dict), loaded with ``weights_only=True`` and checked before use.

Other kinds of checkpoint (e.g. quantized models) register a loader with ``register_checkpoint_kind``; the file names
the module that registers it (``loader_module``), so this layer never imports the layers above it. A checkpoint is
data from anywhere: only certquant's own loader modules (``LOADER_MODULES``) are ever imported on its word; any other
name is refused before anything is imported.
"""

from __future__ import annotations

import importlib
import os
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from certquant.models.registry import build
from certquant.utils.errors import CertquantError, short_reason
from certquant.utils.io import atomic_torch_save, file_sha256
from certquant.utils.paths import check_input_path, looks_like_text

CHECKPOINT_FORMAT = "certquant-checkpoint"
CHECKPOINT_VERSION = 1
ARCH_KEYS = ("arch", "num_classes", "in_channels", "input_size", "mean", "std")

# the modules a checkpoint may name in ``loader_module`` (each registers its kinds when imported); nothing else is
# imported on a file's word, since importing a module runs its code
LOADER_MODULES = ("certquant.quant.checkpoint",)

KindLoader = Callable[[dict[str, Any]], nn.Module]
_KIND_LOADERS: dict[str, KindLoader] = {}


def register_checkpoint_kind(kind: str, loader: KindLoader) -> None:
    """Register how to rebuild a model from a checkpoint of ``kind`` (the payload holds ``state_dict``)."""
    _KIND_LOADERS[kind] = loader


def build_from_info(info: dict[str, Any]) -> nn.Sequential:
    """The bare architecture a checkpoint describes (weights not loaded)."""
    return build(
        info["arch"],
        num_classes=info["num_classes"],
        in_channels=info["in_channels"],
        input_size=info["input_size"],
        mean=info["mean"],
        std=info["std"],
    )


def load_weights(model: nn.Module, state_dict: dict[str, Any], what: str) -> nn.Module:
    """``model.load_state_dict(state_dict)``; a mismatch becomes one line: "<what> (<torch's first line>)"."""
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:
        raise CertquantError(f"{what} ({short_reason(exc, 160)})") from None
    return model


def _load_plain(payload: dict[str, Any]) -> nn.Module:
    return load_weights(build_from_info(payload), payload["state_dict"],
                        f"checkpoint weights do not fit architecture '{payload['arch']}'")


register_checkpoint_kind("model", _load_plain)


def save_checkpoint(path: str | os.PathLike, model: nn.Module, info: dict[str, Any]) -> Path:
    """Write ``info`` plus the model's state_dict atomically. ``info`` must hold the ``ARCH_KEYS``, dataset and sigma."""
    missing = [k for k in ARCH_KEYS + ("dataset", "sigma") if k not in info]
    if missing:
        raise CertquantError(f"checkpoint info lacks {', '.join(missing)}")
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "kind": "model", **info}
    payload["mean"], payload["std"] = list(payload["mean"]), list(payload["std"])
    payload["state_dict"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_torch_save(payload, path)
    return Path(path)


ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive (PyTorch >= 1.6)
CHECKPOINT_HINT = "give a certquant checkpoint file or a zoo name (see 'certquant zoo')"


def check_checkpoint_file(path: str | os.PathLike) -> Path:
    """Refuse, in one line naming what is wrong, a path that cannot be a checkpoint: missing, a folder, empty, a text
    file, another binary format, a truncated or damaged archive. Called before ``torch.load`` sees the file."""
    path = check_input_path(path, "checkpoint", "file", CHECKPOINT_HINT)
    with open(path, "rb") as handle:
        head = handle.read(4096)
    if not head.startswith(ZIP_MAGIC):
        what = "a text file" if looks_like_text(head) else "a file of another format"
        raise CertquantError(f"checkpoint '{path}' is {what}, not a certquant checkpoint: {CHECKPOINT_HINT}")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        raise CertquantError(f"checkpoint '{path}' is truncated or damaged (its zip archive is incomplete): copy or "
                             "re-create it") from None
    if not any(name.endswith("/data.pkl") or name == "data.pkl" for name in names):
        raise CertquantError(f"checkpoint '{path}' is a zip archive but not a PyTorch checkpoint: {CHECKPOINT_HINT}")
    return path


def _load_reason(exc: BaseException) -> str:
    """What ``torch.load`` found wrong, in a few words: the unpickler's own reason rather than the weights_only
    preamble that heads its message."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        after = [line.strip() for line in text.split(marker, 1)[1].splitlines() if line.strip()]
        reason = after[0] if after and not after[0].startswith("Check the documentation") else ""
        return short_reason(RuntimeError(f"a safe load refused its contents: {reason}".rstrip(": ")))
    return short_reason(exc)


def read_payload(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a checkpoint file without building the model."""
    path = check_checkpoint_file(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError,
            IndexError, AttributeError, TypeError) as exc:
        raise CertquantError(f"checkpoint '{path}' is corrupt or not a certquant checkpoint ({_load_reason(exc)}): "
                             "re-create it") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CertquantError(f"'{path}' is a PyTorch file but not a certquant checkpoint (no '{CHECKPOINT_FORMAT}' "
                             "header)")
    if payload.get("version", 0) > CHECKPOINT_VERSION:
        raise CertquantError(f"checkpoint '{path}' has format version {payload['version']}; upgrade certquant")
    return payload


def load_checkpoint(
    path: str | os.PathLike,
    expect_arch: str | None = None,
    expect_dataset: str | None = None,
    expect_sigma: float | None = None,
    map_location: str | torch.device = "cpu",
) -> tuple[nn.Module, dict[str, Any]]:
    """Return ``(model in eval mode, info)``; info is the payload without weights plus ``path`` and ``sha256``.

    ``expect_*`` refuse a checkpoint made for another architecture, dataset or noise level.
    """
    path = Path(resolve_checkpoint(path))
    payload = read_payload(path)
    if expect_arch is not None and payload["arch"] != expect_arch:
        raise CertquantError(f"checkpoint '{path}' is a {payload['arch']}, not a {expect_arch}: pick a matching checkpoint")
    if expect_dataset is not None and payload["dataset"] != expect_dataset:
        raise CertquantError(
            f"checkpoint '{path}' was trained on {payload['dataset']}, not {expect_dataset}: use --dataset {payload['dataset']}"
        )
    if expect_sigma is not None and abs(float(payload["sigma"]) - float(expect_sigma)) > 1e-9:
        raise CertquantError(
            f"checkpoint '{path}' was trained at sigma {payload['sigma']}, not {expect_sigma}: certify at the training sigma"
        )
    kind = payload.get("kind", "model")
    loader_module = payload.get("loader_module")
    if loader_module is not None and loader_module not in LOADER_MODULES:
        shown = str(loader_module)[:80].splitlines()[0] if str(loader_module) else "''"
        raise CertquantError(f"checkpoint '{path}' names loader module '{shown}', which is not one of certquant's "
                             f"({', '.join(LOADER_MODULES)}): refusing to import it; re-create the checkpoint with certquant")
    if kind not in _KIND_LOADERS and loader_module is not None:
        importlib.import_module(loader_module)
    if kind not in _KIND_LOADERS:
        raise CertquantError(f"checkpoint '{path}' has unknown kind '{kind}'")
    model = _KIND_LOADERS[kind](payload).to(map_location).eval()
    info = {k: v for k, v in payload.items() if k != "state_dict"}
    info.update(path=str(path), sha256=file_sha256(path))
    return model, info


def resolve_checkpoint(ref: str | os.PathLike) -> str:
    """A path as given if it exists, else the file of the zoo entry with that name."""
    if os.path.exists(ref):
        return str(ref)
    from certquant.models.zoo import zoo_entries

    for entry in zoo_entries():
        if entry["name"] == str(ref):
            return entry["path"]
    return str(ref)
