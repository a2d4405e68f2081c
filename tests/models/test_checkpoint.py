import importlib
import sys

import pytest
import torch

from certquant.models import build, load_checkpoint, save_checkpoint
from certquant.models.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION
from certquant.utils.errors import CertquantError


def _info(arch="small-cnn", dataset="synthetic", sigma=0.25):
    return {
        "arch": arch,
        "num_classes": 10,
        "in_channels": 1,
        "input_size": 28,
        "mean": [0.5],
        "std": [0.25],
        "dataset": dataset,
        "sigma": sigma,
        "train_args": {},
        "metrics": {},
    }


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    model = build("small-cnn", in_channels=1, input_size=28, mean=(0.5,), std=(0.25,))
    return save_checkpoint(tmp_path / "m.pt", model, _info()), model


def test_roundtrip_gives_identical_outputs_and_info(checkpoint):
    path, model = checkpoint
    loaded, info = load_checkpoint(path)
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(loaded(x), model.eval()(x))
    assert info["arch"] == "small-cnn" and info["dataset"] == "synthetic" and len(info["sha256"]) == 64
    assert not loaded.training


def test_mismatches_are_refused_with_one_line(checkpoint):
    path, _ = checkpoint
    with pytest.raises(CertquantError, match="is a small-cnn, not a resnet20"):
        load_checkpoint(path, expect_arch="resnet20")
    with pytest.raises(CertquantError, match="trained on synthetic, not fashion-mnist"):
        load_checkpoint(path, expect_dataset="fashion-mnist")
    with pytest.raises(CertquantError, match="sigma 0.25, not 0.5"):
        load_checkpoint(path, expect_sigma=0.5)


def test_weights_of_another_architecture_are_refused(tmp_path):
    lenet = build("lenet5")
    path = save_checkpoint(tmp_path / "lying.pt", lenet, _info(arch="small-cnn"))
    with pytest.raises(CertquantError, match="do not fit architecture 'small-cnn'"):
        load_checkpoint(path)


def test_corrupt_and_missing_files(tmp_path, checkpoint):
    path, _ = checkpoint
    broken = tmp_path / "broken.pt"
    broken.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CertquantError, match="corrupt"):
        load_checkpoint(broken)
    with pytest.raises(CertquantError, match="not found"):
        load_checkpoint(tmp_path / "absent.pt")
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(CertquantError, match="not a certquant checkpoint"):
        load_checkpoint(other)


def test_loader_module_outside_certquant_is_refused_without_importing_it(tmp_path, monkeypatch):
    """A crafted checkpoint naming a module of its own (on sys.path, with code that runs on import) is refused with
    one line, and the module is never imported."""
    marker = tmp_path / "imported"
    (tmp_path / "evil_loader.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    crafted = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "kind": "evil",
        "loader_module": "evil_loader",
        **_info(),
        "state_dict": {},
    }
    for kind in ("evil", "model"):  # refused whether or not the kind is registered
        torch.save({**crafted, "kind": kind}, tmp_path / f"{kind}.pt")
        with pytest.raises(CertquantError) as info:
            load_checkpoint(tmp_path / f"{kind}.pt")
        message = str(info.value)
        assert "names loader module 'evil_loader'" in message and "refusing to import" in message
        assert "\n" not in message
    assert not marker.exists() and "evil_loader" not in sys.modules
    torch.save({**crafted, "loader_module": "os\nimport this"}, tmp_path / "multi.pt")
    with pytest.raises(CertquantError) as info:
        load_checkpoint(tmp_path / "multi.pt")
    assert "\n" not in str(info.value)


def test_certquant_loader_modules_register_their_kinds():
    """Every allowed loader module is certquant's and registers a kind when imported."""
    from certquant.models.checkpoint import _KIND_LOADERS, LOADER_MODULES
    from certquant.quant.checkpoint import KIND, LOADER_MODULE

    assert LOADER_MODULE in LOADER_MODULES and all(m.startswith("certquant.") for m in LOADER_MODULES)
    for module in LOADER_MODULES:
        importlib.import_module(module)
    assert KIND in _KIND_LOADERS
