"""Datasets as float tensors in [0, 1] of shape (N, C, H, W) with int64 labels, official train/test splits.

``load_dataset(name, split)`` is the one entry point; ``every_kth`` chooses the evaluation subsets whose indices
are recorded with every result.
"""

from certquant.data import cifar10 as _cifar10  # noqa: F401,E402
from certquant.data import imagenet as _imagenet  # noqa: F401,E402

# Importing the loaders registers them.
from certquant.data import mnist_family as _mnist_family  # noqa: F401,E402
from certquant.data import synthetic as _synthetic  # noqa: F401,E402
from certquant.data.registry import (
    DatasetInfo,
    dataset_info,
    fetch_dataset,
    list_datasets,
    load_dataset,
    register_dataset,
)
from certquant.data.subsets import (
    compact_indices,
    describe_indices,
    every_kth,
    expand_indices,
    index_count,
    train_val_split,
)

__all__ = [
    "DatasetInfo",
    "compact_indices",
    "dataset_info",
    "describe_indices",
    "every_kth",
    "expand_indices",
    "fetch_dataset",
    "index_count",
    "list_datasets",
    "load_dataset",
    "register_dataset",
    "train_val_split",
]
