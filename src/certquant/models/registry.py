"""One registry of architectures: ``@register_model`` on a constructor, ``build(name, ...)`` to create it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from torch import nn

from certquant.models.layers import Normalize
from certquant.utils.errors import CertquantError


@dataclass(frozen=True)
class ModelSpec:
    """An architecture and the input it was designed for (the defaults of ``build``)."""

    name: str
    constructor: Callable[..., nn.Module]
    default_in_channels: int
    default_input_size: int
    description: str


_MODELS: dict[str, ModelSpec] = {}


def register_model(name: str, in_channels: int, input_size: int, description: str):
    """Decorator: register ``constructor(num_classes, in_channels, input_size) -> nn.Module`` (without normalization)."""

    def wrap(constructor: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _MODELS[name] = ModelSpec(name, constructor, in_channels, input_size, description)
        return constructor

    return wrap


def list_models() -> list[str]:
    return sorted(_MODELS)


def model_spec(name: str) -> ModelSpec:
    if name not in _MODELS:
        raise CertquantError(f"unknown model '{name}'; choose one of: {', '.join(list_models())}")
    return _MODELS[name]


def build(
    name: str,
    num_classes: int = 10,
    in_channels: int | None = None,
    input_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> nn.Sequential:
    """``Sequential(Normalize(mean, std), body)``; mean/std default to 0/1 (use the dataset's for training)."""
    spec = model_spec(name)
    in_channels = in_channels or spec.default_in_channels
    input_size = input_size or spec.default_input_size
    mean = tuple(mean) if mean is not None else (0.0,) * in_channels
    std = tuple(std) if std is not None else (1.0,) * in_channels
    if len(mean) != in_channels or len(std) != in_channels:
        raise CertquantError(f"normalization has {len(mean)} channels, the model has {in_channels}")
    if num_classes < 2:
        raise CertquantError(f"num_classes must be >= 2, got {num_classes}")
    body = spec.constructor(num_classes=num_classes, in_channels=in_channels, input_size=input_size)
    return nn.Sequential(Normalize(mean, std), body)
