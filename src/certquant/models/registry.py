"""One registry of architectures: ``@register_model`` on a constructor, ``build(name, ...)`` to create it.

A name ``package.module:factory`` is an architecture the user supplies (``certquant import --format torch``): the
module is imported and ``factory`` called with whichever of ``num_classes``, ``in_channels``, ``input_size`` it takes.
It is the user's own code, imported by name; checkpoints are never unpickled into code.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

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


def external_spec(name: str) -> ModelSpec:
    """The ModelSpec of ``package.module:factory`` (imported on first use); one-line errors when it does not resolve."""
    module_name, _, attr = name.partition(":")
    if not module_name or not attr:
        raise CertquantError(
            f"an external architecture is named MODULE:FACTORY (e.g. mypkg.nets:resnet18), got '{name}'"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CertquantError(
            f"cannot import module '{module_name}' of architecture '{name}' ({exc}): put it on PYTHONPATH"
        ) from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise CertquantError(
            f"module '{module_name}' has no callable '{attr}': name the function that builds the model"
        )
    try:
        accepted = set(inspect.signature(factory).parameters)
    except (TypeError, ValueError):
        accepted = set()

    def constructor(num_classes: int, in_channels: int, input_size: int) -> nn.Module:
        given = {"num_classes": num_classes, "in_channels": in_channels, "input_size": input_size}
        model = factory(**{k: v for k, v in given.items() if k in accepted})
        if not isinstance(model, nn.Module):
            raise CertquantError(f"'{name}' returned {type(model).__name__}, not a torch.nn.Module")
        return model

    return ModelSpec(name, constructor, 3, 32, f"user-supplied {name}")


def model_spec(name: str) -> ModelSpec:
    if name not in _MODELS and ":" in name:
        return external_spec(name)
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
