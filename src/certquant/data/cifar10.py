"""CIFAR-10 from the standard ``cifar-10-batches-py`` folder (Krizhevsky 2009), downloaded when online."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import torch

from certquant.data.download import download
from certquant.data.registry import DatasetInfo, cache_dir, data_search_path, register_dataset
from certquant.data.safe_pickle import safe_load
from certquant.utils.errors import CertquantError

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
TAR_MD5 = "c58f30108f718f92721af3b95e74349a"
FOLDER = "cifar-10-batches-py"
BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file: a pickled dict with b'data' (N, 3072) uint8 rows in CHW order and b'labels'."""
    entry = safe_load(path.read_bytes(), encoding="bytes")
    data = np.asarray(entry[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    labels = np.asarray(entry[b"labels"], dtype=np.int64)
    return data, labels


def load_from_folder(folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [read_batch(folder / name) for name in BATCHES[split]]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return torch.from_numpy(images.astype(np.float32) / 255.0), torch.from_numpy(labels)


def _find_folder(split: str, root=None) -> Path | None:
    candidates = (
        [Path(root), Path(root) / FOLDER]
        if root
        else [p / FOLDER for p in data_search_path("cifar10")] + data_search_path("cifar10")
    )
    for folder in candidates:
        if all((folder / name).is_file() for name in BATCHES[split]):
            return folder
    return None


def fetch_cifar10() -> str:
    folder = _find_folder("train")
    if folder is not None:
        return str(folder)
    target = cache_dir() / "cifar10"
    try:
        archive = download(URL, target / "cifar-10-python.tar.gz", md5=TAR_MD5, timeout=120)
    except OSError as exc:
        raise CertquantError(
            f"CIFAR-10 not found and the download failed ({exc}): put '{FOLDER}' in $CERTQUANT_DATA/cifar10"
        ) from None
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")
    return str(target / FOLDER)


def load_cifar10(split: str, root=None) -> tuple[torch.Tensor, torch.Tensor]:
    folder = _find_folder(split, root)
    if folder is None:
        if root:
            raise CertquantError(f"no '{FOLDER}' batches in {root}: point --data-root at the extracted CIFAR-10 folder")
        folder = Path(fetch_cifar10())
    return load_from_folder(folder, split)


register_dataset(
    DatasetInfo(
        name="cifar10",
        num_classes=10,
        in_channels=3,
        input_size=32,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        loader=load_cifar10,
        fetcher=fetch_cifar10,
        description="CIFAR-10, 50k/10k 32x32 RGB; downloaded from the official site when online",
    )
)
