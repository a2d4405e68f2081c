"""Small quantized models for the deploy tests (synthetic data, random weights: the tests check the arithmetic).
A module of its own name (not conftest, which every test folder has) so that any selection of test folders imports
the right one."""

import torch

from certquant.data import dataset_info, load_dataset
from certquant.models import build
from certquant.quant import Policy, noisy_calibration_batch, quantizable_layers, quantize


def make_model(
    arch: str, seed: int = 0, in_channels: int = 1, size: int = 28, train_bn: bool = True
) -> torch.nn.Module:
    """A seeded model; BatchNorm running statistics set to non-trivial values so folding them is tested."""
    torch.manual_seed(seed)
    info = dataset_info("synthetic")
    model = build(arch, 10, in_channels, size, info.mean * in_channels, info.std * in_channels)
    if train_bn:
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.data.uniform_(-1.5, 1.5)  # some negative gammas: folded as sign flips of the integers
                m.bias.data.uniform_(-0.3, 0.3)
    return model.eval()


def mixed_policy(layers) -> Policy:
    """2..8-bit weights and activations, varying by layer (2- and 3-bit layers included)."""
    w = [(2 + i) % 7 + 2 for i in range(len(layers))]
    a = [(3 + i) % 6 + 3 for i in range(len(layers))]
    a[1 % len(a)] = 2
    return Policy.from_lists(layers, w, a)


def quantized(model: torch.nn.Module, kind: str, shape=(1, 28, 28), sigma: float = 0.25) -> torch.nn.Module:
    layers = quantizable_layers(model, shape)
    policy = {
        "W8A8": Policy.uniform(layers, 8, 8),
        "W4A4": Policy.uniform(layers, 4, 4),
        "W3A2": Policy.uniform(layers, 3, 2),
        "mixed": mixed_policy(layers),
    }[kind]
    images, _ = load_dataset("synthetic", "train")
    if shape[0] != 1:
        images = images.repeat(1, shape[0], 1, 1)[:, :, : shape[1], : shape[2]]
    return quantize(model, policy, noisy_calibration_batch(images, sigma, 64, seed=0))


def noisy_inputs(count: int = 256, shape=(1, 28, 28), sigma: float = 0.25, seed: int = 1) -> torch.Tensor:
    images, _ = load_dataset("synthetic", "test")
    if shape[0] != 1:
        images = images.repeat(1, shape[0], 1, 1)[:, :, : shape[1], : shape[2]]
    x = images[torch.arange(count) % len(images)]
    return x + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
