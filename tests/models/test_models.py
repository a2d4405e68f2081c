import pytest
import torch
from torch import nn

from certquant.models import Normalize, build, list_models, model_spec
from certquant.utils.errors import CertquantError


@pytest.mark.parametrize("name", list_models())
def test_every_model_builds_and_runs_at_its_default_shape(name):
    spec = model_spec(name)
    size = spec.default_input_size if spec.default_input_size <= 32 else 64  # ImageNet models: smaller input, same code
    model = build(name, num_classes=7).eval()
    assert isinstance(model[0], Normalize), "normalization must be the first layer"
    with torch.no_grad():
        out = model(torch.rand(2, spec.default_in_channels, size, size))
    assert out.shape == (2, 7)


@pytest.mark.parametrize("name", ["resnet20", "resnet56", "small-cnn", "lenet5"])
def test_small_models_accept_other_input_shapes(name):
    model = build(name, in_channels=1, input_size=28).eval()
    with torch.no_grad():
        assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    resnet = build("resnet20", in_channels=3, input_size=32)
    assert resnet(torch.rand(1, 3, 32, 32)).shape == (1, 10)


def test_resnet_depths_and_option_a_shortcuts_have_no_parameters():
    def convs(model: nn.Module) -> int:
        return sum(isinstance(m, nn.Conv2d) for m in model.modules())

    assert convs(build("resnet20")) == 19 and convs(build("resnet56")) == 55 and convs(build("resnet110")) == 109
    params = sum(p.numel() for p in build("resnet20").parameters())
    assert 269_000 < params < 273_000  # He et al.: 0.27M


def test_normalize_is_applied_once_in_pixel_space():
    model = build("small-cnn", mean=(0.5,), std=(0.25,))
    x = torch.full((1, 1, 28, 28), 0.75)
    assert torch.allclose(model[0](x), torch.ones_like(x))


def test_unknown_model_and_bad_normalization_are_refused():
    with pytest.raises(CertquantError, match="unknown model 'vgg'"):
        build("vgg")
    with pytest.raises(CertquantError, match="channels"):
        build("resnet20", in_channels=3, mean=(0.5,), std=(0.5,))
