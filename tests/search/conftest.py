"""A small noise-trained CNN on the synthetic dataset (trained in about a second), shared by the search tests."""

from __future__ import annotations

import pytest
import torch

from certquant.data import dataset_info, load_dataset
from certquant.models import build
from certquant.train.trainer import noisy_epoch

SIGMA = 0.25


@pytest.fixture(autouse=True)
def _one_thread():
    """Small models on 2 shared cores: one thread avoids contention (the root conftest sets 2 before this)."""
    torch.set_num_threads(1)
    yield


def train_small_cnn(seed: int = 0) -> torch.nn.Module:
    """small-cnn trained one noisy epoch (sigma 0.25) on the first 640 synthetic training images."""
    torch.set_num_threads(1)  # session fixtures run before the autouse one above
    info = dataset_info("synthetic")
    images, labels = load_dataset("synthetic", "train")
    torch.manual_seed(seed)
    model = build("small-cnn", info.num_classes, info.in_channels, info.input_size, info.mean, info.std)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    noisy_epoch(model, images[:640], labels[:640], optimizer, SIGMA, 32, seed, torch.device("cpu"))
    return model.eval()


@pytest.fixture(scope="session")
def trained_cnn() -> torch.nn.Module:
    return train_small_cnn()


@pytest.fixture(scope="session")
def search_set():
    """12 synthetic training images the model was not trained on, with their indices."""
    images, labels = load_dataset("synthetic", "train")
    idx = list(range(1000, 1012))
    return images[idx], labels[idx], idx
