"""The dataset registry: one ``DatasetInfo`` per name, carrying shape, classes and the normalization models use."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from certquant.utils.errors import CertquantError

Loader = Callable[..., tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset, and how to load and fetch it."""

    name: str
    num_classes: int
    in_channels: int
    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    loader: Loader = field(repr=False, compare=False)
    fetcher: Callable[[], str] | None = field(default=None, repr=False, compare=False)
    description: str = ""

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.input_size, self.input_size)


_REGISTRY: dict[str, DatasetInfo] = {}
_CACHE: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def register_dataset(info: DatasetInfo) -> DatasetInfo:
    _REGISTRY[info.name] = info
    return info


def list_datasets() -> list[str]:
    return sorted(_REGISTRY)


def dataset_info(name: str) -> DatasetInfo:
    if name not in _REGISTRY:
        raise CertquantError(f"unknown dataset '{name}'; choose one of: {', '.join(list_datasets())}")
    return _REGISTRY[name]


def load_dataset(
    name: str, split: str = "test", root: str | os.PathLike | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(images, labels)``: float32 (N, C, H, W) in [0, 1] and int64 (N,). Cached per process; do not mutate."""
    if split not in ("train", "test"):
        raise CertquantError(f"unknown split '{split}'; use 'train' or 'test'")
    info = dataset_info(name)
    key = (name, split, str(root) if root else None)
    if key not in _CACHE:
        images, labels = info.loader(split=split, root=root)
        _check_contract(name, info, images, labels)
        _CACHE[key] = (images, labels)
    return _CACHE[key]


def fetch_dataset(name: str) -> str:
    """Make the dataset available locally (download or copy into the cache); return where it now lives."""
    info = dataset_info(name)
    if info.fetcher is None:
        raise CertquantError(f"dataset '{name}' cannot be fetched automatically: {info.description}")
    return info.fetcher()


def _check_contract(name: str, info: DatasetInfo, images: torch.Tensor, labels: torch.Tensor) -> None:
    if images.dtype != torch.float32 or images.dim() != 4 or images.shape[1] != info.in_channels:
        raise CertquantError(
            f"dataset '{name}' loaded with shape {tuple(images.shape)}, expected (N, {info.in_channels}, H, W)"
        )
    if labels.dtype != torch.int64 or labels.shape[0] != images.shape[0]:
        raise CertquantError(f"dataset '{name}' labels do not match its images")


def data_search_path(subdir: str) -> list[Path]:
    """Folders searched for a dataset, in order: $CERTQUANT_DATA(/subdir), the user cache."""
    paths: list[Path] = []
    env = os.environ.get("CERTQUANT_DATA")
    if env:
        paths += [Path(env) / subdir, Path(env)]
    paths.append(cache_dir() / subdir)
    return paths


def cache_dir() -> Path:
    """The user cache (``$XDG_CACHE_HOME/certquant`` or ``~/.cache/certquant``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "certquant"
