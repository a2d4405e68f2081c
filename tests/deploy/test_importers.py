"""Importing Cohen et al.'s checkpoint layout and user-defined PyTorch classifiers, without running pickled code."""

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from certquant.cli.main import app
from certquant.deploy import export_onnx, import_cohen, load_onnx
from certquant.models import load_checkpoint
from certquant.quant import Policy, quantizable_layers, quantize
from certquant.smoothing import certify
from certquant.utils.errors import CertquantError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cli"))
from cli_helpers import assert_one_line_error  # noqa: E402

runner = CliRunner()


def _bn(prefix: str, channels: int, g: torch.Generator) -> dict:
    return {
        f"{prefix}.weight": 1 + 0.1 * torch.randn(channels, generator=g),
        f"{prefix}.bias": 0.1 * torch.randn(channels, generator=g),
        f"{prefix}.running_mean": 0.1 * torch.randn(channels, generator=g),
        f"{prefix}.running_var": 0.5 + torch.rand(channels, generator=g),
        f"{prefix}.num_batches_tracked": torch.tensor(100),
    }


def cohen_cifar_state(depth: int, seed: int = 0, classes: int = 10) -> dict:
    """A state_dict in the key layout and shapes of Cohen et al.'s ``Sequential(NormalizeLayer, resnet(depth))``
    (their NormalizeLayer has no keys; option-B ``downsample`` = 1x1 conv + BN on the first block of stages 2, 3)."""
    g = torch.Generator().manual_seed(seed)
    n = (depth - 2) // 6
    sd = {"conv1.weight": 0.2 * torch.randn(16, 3, 3, 3, generator=g), **_bn("bn1", 16, g)}
    inplanes = 16
    for stage, planes in enumerate((16, 32, 64), start=1):
        for i in range(n):
            p = f"layer{stage}.{i}"
            sd[f"{p}.conv1.weight"] = 0.1 * torch.randn(planes, inplanes, 3, 3, generator=g)
            sd.update(_bn(f"{p}.bn1", planes, g))
            sd[f"{p}.conv2.weight"] = 0.1 * torch.randn(planes, planes, 3, 3, generator=g)
            sd.update(_bn(f"{p}.bn2", planes, g))
            if i == 0 and stage > 1:
                sd[f"{p}.downsample.0.weight"] = 0.2 * torch.randn(planes, inplanes, 1, 1, generator=g)
                sd.update(_bn(f"{p}.downsample.1", planes, g))
            inplanes = planes
    sd["fc.weight"] = 0.1 * torch.randn(classes, 64, generator=g)
    sd["fc.bias"] = 0.1 * torch.randn(classes, generator=g)
    return {f"1.{k}": v for k, v in sd.items()}


def cohen_cifar_forward(sd: dict, depth: int, x: torch.Tensor) -> torch.Tensor:
    """Their forward, written from the architecture's description with their key names (the reference)."""
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2023, 0.1994, 0.2010]).view(1, 3, 1, 1)
    w = {k[2:]: v for k, v in sd.items()}

    def bn(h, p):
        return F.batch_norm(h, w[f"{p}.running_mean"], w[f"{p}.running_var"], w[f"{p}.weight"], w[f"{p}.bias"])

    h = F.relu(bn(F.conv2d((x - mean) / std, w["conv1.weight"], padding=1), "bn1"))
    for stage in (1, 2, 3):
        for i in range((depth - 2) // 6):
            p, stride = f"layer{stage}.{i}", 2 if stage > 1 and i == 0 else 1
            out = F.relu(bn(F.conv2d(h, w[f"{p}.conv1.weight"], stride=stride, padding=1), f"{p}.bn1"))
            out = bn(F.conv2d(out, w[f"{p}.conv2.weight"], padding=1), f"{p}.bn2")
            if f"{p}.downsample.0.weight" in w:
                h = bn(F.conv2d(h, w[f"{p}.downsample.0.weight"], stride=stride), f"{p}.downsample.1")
            h = F.relu(out + h)
    return F.linear(F.avg_pool2d(h, 8).flatten(1), w["fc.weight"], w["fc.bias"])


def save_cohen(path: Path, state: dict, arch: str) -> Path:
    optimizer = {"state": {}, "param_groups": [{"lr": 0.001, "momentum": 0.9, "weight_decay": 1e-4, "params": [0, 1]}]}
    torch.save({"epoch": 90, "arch": arch, "state_dict": state, "optimizer": optimizer}, path)
    return path


def test_cohen_cifar_resnet20_imports_to_the_same_function(tmp_path):
    state = cohen_cifar_state(20)
    src = save_cohen(tmp_path / "checkpoint.pth.tar", state, "cifar_resnet20")
    out = import_cohen(src, "cifar_resnet20", "cifar10", 0.25, tmp_path / "r20.pt")
    model, info = load_checkpoint(out)
    assert info["arch"] == "resnet20b" and info["sigma"] == 0.25 and info["train_args"]["imported"]["format"] == "cohen"
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(model(x), cohen_cifar_forward(state, 20, x), atol=1e-4)


def test_cohen_cifar_resnet110_imported_quantized_exported_and_certified(tmp_path):
    src = save_cohen(tmp_path / "checkpoint.pth.tar", cohen_cifar_state(110, seed=2), "cifar_resnet110")
    result = runner.invoke(
        app,
        [
            "import",
            "--format",
            "cohen",
            str(src),
            "--arch",
            "cifar_resnet110",
            "--dataset",
            "cifar10",
            "--sigma",
            "0.5",
            "--out",
            str(tmp_path / "r110.pt"),
        ],
    )
    assert result.exit_code == 0, result.output
    model, info = load_checkpoint(tmp_path / "r110.pt", expect_arch="resnet110b", expect_sigma=0.5)
    layers = quantizable_layers(model, (3, 32, 32))
    assert len(layers) == 112  # the stem, 54 blocks x 2 convs, 2 option-B shortcut convs, fc
    g = torch.Generator().manual_seed(0)
    qmodel = quantize(
        model,
        Policy.uniform(layers, 8, 8),
        torch.rand(16, 3, 32, 32, generator=g) + 0.5 * torch.randn(16, 3, 32, 32, generator=g),
    )
    x = torch.rand(3, 32, 32, generator=g)
    cert = certify(qmodel, x, 0.5, n0=5, n=20, alpha=0.01, batch_size=25, seed=0)
    export_onnx(qmodel, (3, 32, 32), tmp_path / "r110.onnx", info={"dataset": "cifar10", "sigma": 0.5})
    onnx_model, _ = load_onnx(tmp_path / "r110.onnx")
    onnx_cert = certify(onnx_model, x, 0.5, n0=5, n=20, alpha=0.01, batch_size=25, seed=0)
    assert cert.counts == onnx_cert.counts and cert.label == onnx_cert.label


def resnet50_torchvision_state(seed: int = 0) -> dict:
    """torchvision's ResNet-50 key names and shapes, under Cohen et al.'s ``1.module.`` (Sequential + DataParallel)."""
    g = torch.Generator().manual_seed(seed)
    sd = {"conv1.weight": 0.05 * torch.randn(64, 3, 7, 7, generator=g), **_bn("bn1", 64, g)}
    inplanes = 64
    for stage, (width, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3)), start=1):
        for i in range(blocks):
            p = f"layer{stage}.{i}"
            shapes = {1: (width, inplanes, 1, 1), 2: (width, width, 3, 3), 3: (width * 4, width, 1, 1)}
            for k, shape in shapes.items():
                sd[f"{p}.conv{k}.weight"] = 0.05 * torch.randn(*shape, generator=g)
                sd.update(_bn(f"{p}.bn{k}", shape[0], g))
            if i == 0:
                sd[f"{p}.downsample.0.weight"] = 0.05 * torch.randn(width * 4, inplanes, 1, 1, generator=g)
                sd.update(_bn(f"{p}.downsample.1", width * 4, g))
            inplanes = width * 4
    sd["fc.weight"] = 0.01 * torch.randn(1000, 2048, generator=g)
    sd["fc.bias"] = torch.zeros(1000)
    return {f"1.module.{k}": v for k, v in sd.items()}


def test_cohen_imagenet_resnet50_maps_torchvision_names(tmp_path):
    state = resnet50_torchvision_state()
    src = save_cohen(tmp_path / "r50.pth.tar", state, "resnet50")
    model, info = load_checkpoint(import_cohen(src, "resnet50", "imagenet", 1.0, tmp_path / "r50.pt"))
    sd = model.state_dict()
    assert info["mean"] == [0.485, 0.456, 0.406] and info["num_classes"] == 1000
    assert torch.equal(sd["1.stem.0.0.weight"], state["1.module.conv1.weight"])
    assert torch.equal(sd["1.blocks.3.conv2.1.running_var"], state["1.module.layer2.0.bn2.running_var"])
    assert torch.equal(sd["1.blocks.13.downsample.0.weight"], state["1.module.layer4.0.downsample.0.weight"])
    assert torch.equal(sd["1.blocks.15.conv3.0.weight"], state["1.module.layer4.2.conv3.weight"])
    assert torch.equal(sd["1.fc.weight"], state["1.module.fc.weight"])


def test_mismatched_cohen_files_are_refused_in_one_line(tmp_path):
    r20 = save_cohen(tmp_path / "r20.pth.tar", cohen_cifar_state(20), "cifar_resnet20")
    result = runner.invoke(
        app,
        [
            "import",
            "--format",
            "cohen",
            str(r20),
            "--arch",
            "cifar_resnet110",
            "--dataset",
            "cifar10",
            "--sigma",
            "0.25",
            "--out",
            str(tmp_path / "x.pt"),
        ],
    )
    assert_one_line_error(result, "says arch 'cifar_resnet20'")
    # no 'arch' in the file: the keys decide (ResNet-20 has 3 blocks per stage, ResNet-110 needs 18)
    torch.save({"state_dict": cohen_cifar_state(20)}, tmp_path / "bare.pt")
    result = runner.invoke(
        app,
        [
            "import",
            "--format",
            "cohen",
            str(tmp_path / "bare.pt"),
            "--arch",
            "cifar_resnet110",
            "--dataset",
            "cifar10",
            "--sigma",
            "0.25",
            "--out",
            str(tmp_path / "x.pt"),
        ],
    )
    assert_one_line_error(result, "keys do not fit cifar_resnet110", "missing")
    # 100 classes: the shapes do not fit CIFAR-10
    torch.save({"state_dict": cohen_cifar_state(20, classes=100)}, tmp_path / "c100.pt")
    result = runner.invoke(
        app,
        [
            "import",
            "--format",
            "cohen",
            str(tmp_path / "c100.pt"),
            "--arch",
            "cifar_resnet20",
            "--dataset",
            "cifar10",
            "--sigma",
            "0.25",
            "--out",
            str(tmp_path / "x.pt"),
        ],
    )
    assert_one_line_error(result, "'1.fc.weight' has shape (100, 64)")
    assert not (tmp_path / "x.pt").exists()


class Pickled(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)


def test_pickled_code_is_never_run(tmp_path):
    torch.save(Pickled(), tmp_path / "module.pt")  # a whole pickled module: loading it would run code
    with pytest.raises(CertquantError, match="without running pickled code"):
        import_cohen(tmp_path / "module.pt", "cifar_resnet20", "cifar10", 0.25, tmp_path / "x.pt")


USER_MODULE = """
import torch
from torch import nn

def tiny(num_classes=10):
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, num_classes))
"""


def test_torch_factory_import_and_requantize(tmp_path, monkeypatch):
    (tmp_path / "user_nets.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import user_nets

    torch.manual_seed(0)
    net = user_nets.tiny()
    torch.save({"model": {f"module.{k}": v for k, v in net.state_dict().items()}}, tmp_path / "w.pt")
    result = runner.invoke(
        app,
        [
            "import",
            "--format",
            "torch",
            "user_nets:tiny",
            str(tmp_path / "w.pt"),
            "--dataset",
            "synthetic",
            "--sigma",
            "0.25",
            "--mean",
            "0.5",
            "--std",
            "0.25",
            "--out",
            str(tmp_path / "tiny.pt"),
        ],
    )
    assert result.exit_code == 0, result.output
    model, info = load_checkpoint(tmp_path / "tiny.pt")  # rebuilt from the factory's name
    assert info["arch"] == "user_nets:tiny"
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(model(x), net((x - 0.5) / 0.25), atol=1e-6)
    # mismatched weights for the factory: one line
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "bad.pt")
    result = runner.invoke(
        app,
        [
            "import",
            "--format",
            "torch",
            "user_nets:tiny",
            str(tmp_path / "bad.pt"),
            "--dataset",
            "synthetic",
            "--sigma",
            "0.25",
            "--out",
            str(tmp_path / "bad-out.pt"),
        ],
    )
    assert_one_line_error(result, "does not fit user_nets:tiny")
    result = runner.invoke(
        app,
        [
            "import",
            "--format",
            "torch",
            "user_nets:nothing",
            str(tmp_path / "w.pt"),
            "--dataset",
            "synthetic",
            "--sigma",
            "0.25",
            "--out",
            str(tmp_path / "x.pt"),
        ],
    )
    assert_one_line_error(result, "has no callable 'nothing'")
