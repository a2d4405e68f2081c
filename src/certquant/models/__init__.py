"""Model zoo definitions (no torchvision). Every model's first layer is its ``Normalize``, so inputs are raw [0, 1]
pixels and Gaussian noise is always added in pixel space.

``build(name, ...)`` creates any registered architecture; ``load_checkpoint(path)`` restores any checkpoint
certquant writes; ``zoo`` lists the noise-trained checkpoints shipped with the package.
"""

from certquant.models import imagenet_models as _imagenet_models  # noqa: F401,E402
from certquant.models import resnet_cifar as _resnet_cifar  # noqa: F401,E402

# Importing the architectures registers them.
from certquant.models import small_cnn as _small_cnn  # noqa: F401,E402
from certquant.models.checkpoint import (
    CHECKPOINT_FORMAT,
    load_checkpoint,
    register_checkpoint_kind,
    resolve_checkpoint,
    save_checkpoint,
)
from certquant.models.layers import Normalize
from certquant.models.registry import ModelSpec, build, list_models, model_spec, register_model

__all__ = [
    "CHECKPOINT_FORMAT",
    "ModelSpec",
    "Normalize",
    "build",
    "list_models",
    "load_checkpoint",
    "model_spec",
    "register_checkpoint_kind",
    "register_model",
    "resolve_checkpoint",
    "save_checkpoint",
]
