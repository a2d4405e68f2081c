"""Small models and data for the quantization tests (synthetic, so they run in seconds on 2 cores)."""

import pytest
import torch

from certquant.data import dataset_info, load_dataset
from certquant.models import build, save_checkpoint


def small_cnn(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    info = dataset_info("synthetic")
    return build("small-cnn", info.num_classes, info.in_channels, info.input_size, info.mean, info.std).eval()


@pytest.fixture
def make_cnn():
    """small_cnn(seed): a seeded small-cnn with the synthetic dataset's normalization, in eval mode."""
    return small_cnn


@pytest.fixture
def synthetic():
    images, labels = load_dataset("synthetic", "train")
    return images[:256], labels[:256]


@pytest.fixture
def base_checkpoint(tmp_path):
    """A small-cnn checkpoint on the synthetic dataset at sigma 0.25 (random weights: the tests check plumbing)."""
    info = dataset_info("synthetic")
    path = tmp_path / "base.pt"
    save_checkpoint(
        path,
        small_cnn(),
        {
            "arch": "small-cnn",
            "num_classes": info.num_classes,
            "in_channels": 1,
            "input_size": 28,
            "mean": list(info.mean),
            "std": list(info.std),
            "dataset": "synthetic",
            "sigma": 0.25,
            "train_args": {"val_size": 200, "seed": 0},
        },
    )
    return path
