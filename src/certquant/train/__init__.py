"""Gaussian-noise training (Cohen et al. 2019: cross-entropy on x + N(0, sigma^2 I)) and evaluation."""

from certquant.train.evaluate import accuracy, resolve_device
from certquant.train.trainer import TrainConfig, train

__all__ = ["TrainConfig", "accuracy", "resolve_device", "train"]
