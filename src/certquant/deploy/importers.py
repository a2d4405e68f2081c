"""Import the field's checkpoints as certquant checkpoints, without executing pickled code (``weights_only=True``).

Cohen et al.'s released models (locuslab/smoothing) are files ``{'arch', 'state_dict', 'epoch', 'optimizer'}`` whose
state_dict belongs to ``Sequential(NormalizeLayer, net)``: every key starts with ``1.`` (their NormalizeLayer keeps
mean and std as plain attributes, so it has no keys), and the ImageNet ResNet-50 sits inside ``DataParallel``
(``1.module.``). Their architectures, and the certquant ones they map to (same computation, other module names):

- ``cifar_resnet20`` / ``cifar_resnet110``: CIFAR ResNets with option-B shortcuts (``layerS.i.downsample.{0,1}`` =
  1x1 conv + BN), ``conv1``, ``bn1``, ``layer1..3``, ``fc`` -> certquant ``resnet20b`` / ``resnet110b``, whose blocks
  are one flat ``layers`` list (block i of stage s is ``layers.{(s-1) n + i}``) and whose shortcut is ``shortcut``;
- ``resnet50``: torchvision's names (``conv1``, ``bn1``, ``layerS.i.convK`` / ``bnK`` / ``downsample``, ``fc``) ->
  certquant ``resnet50`` (``stem.0``, ``blocks.j.convK.{0: conv, 1: BN}``, ``blocks.j.downsample``, ``fc``).

The normalization is Cohen et al.'s (CIFAR-10 mean 0.4914, 0.4822, 0.4465 and std 0.2023, 0.1994, 0.2010; ImageNet
0.485, 0.456, 0.406 / 0.229, 0.224, 0.225), placed as certquant's first layer. A file whose keys or shapes do not fit
the named architecture is refused with one line.

``import_torch`` takes any classifier whose definition the user supplies as ``MODULE:FACTORY`` and a file holding its
state_dict; the factory's name becomes the checkpoint's architecture (``certquant.models.registry``).
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from certquant.data import dataset_info
from certquant.models import build, save_checkpoint
from certquant.models.checkpoint import load_weights
from certquant.utils.errors import CertquantError
from certquant.utils.io import file_sha256

COHEN_ARCHS = {"cifar_resnet20": "resnet20b", "cifar_resnet110": "resnet110b", "resnet50": "resnet50"}
COHEN_NORMALIZATION = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
RESNET50_STAGES = (3, 4, 6, 3)


def read_weights_file(path: str | os.PathLike) -> Any:
    """``torch.load(weights_only=True)``: tensors and plain containers only, never pickled code."""
    path = Path(path)
    if not path.is_file():
        raise CertquantError(f"'{path}' not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise CertquantError(f"'{path}' cannot be read as weights without running pickled code ({reason})") from None


def state_dict_of(payload: Any, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state_dict inside a checkpoint file: ``payload['state_dict']``, ``payload['model']`` or the payload."""
    if isinstance(payload, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(payload.get(key), dict):
                payload = payload[key]
                break
    if not isinstance(payload, dict) or not payload or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise CertquantError(f"'{path}' holds no state_dict (a dict of tensors, or one under 'state_dict')")
    return dict(payload)


def strip_prefixes(
    state: dict[str, torch.Tensor], prefixes: Sequence[str] = ("1.", "module.")
) -> dict[str, torch.Tensor]:
    """Drop each prefix in turn when every key carries it (Cohen's ``Sequential`` index, DataParallel's ``module.``)."""
    for prefix in prefixes:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _cifar_key(key: str, blocks: int) -> str:
    match = re.fullmatch(r"layer([123])\.(\d+)\.(.+)", key)
    if match:
        stage, index, rest = int(match.group(1)), int(match.group(2)), match.group(3)
        if index >= blocks:
            raise CertquantError(f"key '{key}': block {index} does not exist in a stage of {blocks} blocks")
        return f"layers.{(stage - 1) * blocks + index}.{rest.replace('downsample.', 'shortcut.')}"
    return key


def _resnet50_key(key: str) -> str:
    if key.startswith("conv1."):
        return "stem.0.0." + key[len("conv1.") :]
    if key.startswith("bn1."):
        return "stem.0.1." + key[len("bn1.") :]
    match = re.fullmatch(r"layer([1-4])\.(\d+)\.(.+)", key)
    if not match:
        return key
    stage, index, rest = int(match.group(1)) - 1, int(match.group(2)), match.group(3)
    if index >= RESNET50_STAGES[stage]:
        raise CertquantError(f"key '{key}': block {index} does not exist in stage {stage + 1} of ResNet-50")
    block = sum(RESNET50_STAGES[:stage]) + index
    conv = re.fullmatch(r"(conv|bn)([123])\.(.+)", rest)
    if conv:
        rest = f"conv{conv.group(2)}.{0 if conv.group(1) == 'conv' else 1}.{conv.group(3)}"
    return f"blocks.{block}.{rest}"


def cohen_key_map(arch: str) -> Callable[[str], str]:
    """Cohen et al.'s key (prefixes stripped) -> the certquant body's key, for a certquant architecture name."""
    if arch == "resnet50":
        return _resnet50_key
    depth = int(arch[len("resnet") : -1])
    return lambda key: _cifar_key(key, (depth - 2) // 6)


def _fit(model: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
    """``state`` completed with what the file may lack (BN ``num_batches_tracked``, the Normalize buffers) and checked
    key by key and shape by shape against ``model``; one line naming the first mismatch."""
    target = model.state_dict()
    missing = [k for k in target if k not in state and not k.endswith("num_batches_tracked") and not k.startswith("0.")]
    unexpected = [k for k in state if k not in target]
    if missing or unexpected:
        parts = ([f"{len(missing)} missing (e.g. '{missing[0]}')"] if missing else []) + (
            [f"{len(unexpected)} unexpected (e.g. '{unexpected[0]}')"] if unexpected else []
        )
        raise CertquantError(f"the file's keys do not fit {what}: {', '.join(parts)}")
    for key, value in state.items():
        if tuple(value.shape) != tuple(target[key].shape):
            raise CertquantError(
                f"the file does not fit {what}: '{key}' has shape {tuple(value.shape)}, "
                f"the architecture needs {tuple(target[key].shape)}"
            )
    full = dict(target)
    full.update({k: v.to(target[k].dtype) for k, v in state.items()})
    return full


def _check_sigma(sigma: float) -> float:
    if not sigma or sigma <= 0:
        raise CertquantError(f"--sigma must be the noise level the model was trained at (> 0), got {sigma}")
    return float(sigma)


def import_cohen(path: str | os.PathLike, arch: str, dataset: str, sigma: float, out: str | os.PathLike) -> Path:
    """A checkpoint in Cohen et al.'s layout -> a certquant checkpoint at ``out`` (see the module docstring)."""
    target_arch = COHEN_ARCHS.get(arch, arch)
    if target_arch not in set(COHEN_ARCHS.values()) | {"resnet56b"}:
        raise CertquantError(f"unknown Cohen architecture '{arch}': use one of {', '.join(COHEN_ARCHS)}")
    sigma = _check_sigma(sigma)
    data = dataset_info(dataset)
    payload = read_weights_file(path)
    stored = payload.get("arch") if isinstance(payload, dict) else None
    if isinstance(stored, str) and COHEN_ARCHS.get(stored, stored) != target_arch:
        raise CertquantError(f"'{path}' says arch '{stored}', not '{arch}': pass --arch {stored}")
    mean, std = COHEN_NORMALIZATION.get(dataset, (data.mean, data.std))
    model = build(target_arch, data.num_classes, data.in_channels, data.input_size, mean, std)
    key_map = cohen_key_map(target_arch)
    state = {"1." + key_map(k): v for k, v in strip_prefixes(state_dict_of(payload, path)).items()}
    load_weights(model, _fit(model, state, f"{arch} ({target_arch}) on {dataset}"), f"'{path}' does not fit {arch}")
    epoch = payload.get("epoch") if isinstance(payload, dict) else None
    imported = {"format": "cohen", "path": str(path), "sha256": file_sha256(path), "arch": arch, "epoch": epoch}
    return _save_imported(out, model, target_arch, data, mean, std, dataset, sigma, imported)


def import_torch(
    factory: str,
    path: str | os.PathLike,
    dataset: str,
    sigma: float,
    out: str | os.PathLike,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Path:
    """A PyTorch classifier built by ``MODULE:FACTORY`` (the user's code) with the weights of ``path`` -> a certquant
    checkpoint. ``mean``/``std`` (default: the dataset's) become the Normalize layer in front of it; pass 0 / 1 when
    the model normalizes its input itself."""
    if ":" not in factory:
        raise CertquantError(
            f"name the model's definition as MODULE:FACTORY (e.g. mypkg.nets:resnet18), got '{factory}'"
        )
    sigma = _check_sigma(sigma)
    data = dataset_info(dataset)
    mean = tuple(mean) if mean else data.mean
    std = tuple(std) if std else data.std
    if len(mean) == 1 and data.in_channels > 1:
        mean, std = mean * data.in_channels, (std * data.in_channels if len(std) == 1 else std)
    model = build(factory, data.num_classes, data.in_channels, data.input_size, mean, std)
    state = strip_prefixes(state_dict_of(read_weights_file(path), path), ("module.",))
    load_weights(model[1], state, f"'{path}' does not fit {factory}")
    with torch.no_grad():
        try:
            logits = model.eval()(torch.zeros((1,) + data.input_shape))
        except RuntimeError as exc:
            raise CertquantError(
                f"{factory} does not run on {dataset} images {data.input_shape} ({str(exc).splitlines()[0][:120]})"
            ) from None
    if logits.dim() != 2 or logits.shape[1] != data.num_classes:
        raise CertquantError(f"{factory} outputs shape {tuple(logits.shape)}, not (N, {data.num_classes}) logits")
    imported = {"format": "torch", "path": str(path), "sha256": file_sha256(path)}
    return _save_imported(out, model, factory, data, mean, std, dataset, sigma, imported)


def _save_imported(
    out: str | os.PathLike,
    model: torch.nn.Module,
    arch: str,
    data: Any,
    mean: Sequence[float],
    std: Sequence[float],
    dataset: str,
    sigma: float,
    imported: dict[str, Any],
) -> Path:
    """Write an imported model as a certquant checkpoint (``imported``: where it came from, in its train_args)."""
    info = {
        "arch": arch,
        "num_classes": data.num_classes,
        "in_channels": data.in_channels,
        "input_size": data.input_size,
        "mean": list(mean),
        "std": list(std),
        "dataset": dataset,
        "sigma": sigma,
        "train_args": {"imported": imported},
    }
    return save_checkpoint(out, model, info)
