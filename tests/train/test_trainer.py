import pytest
import torch

from certquant.data import load_dataset
from certquant.models import load_checkpoint
from certquant.quant import finetune
from certquant.train import TrainConfig, accuracy, train
from certquant.train.trainer import noisy_epoch
from certquant.utils.errors import CertquantError


def _cfg(**kw):
    base = dict(
        dataset="synthetic",
        model="small-cnn",
        sigma=0.25,
        epochs=1,
        batch_size=64,
        lr=0.05,
        val_size=100,
        train_limit=512,
        seed=3,
        device="cpu",
    )
    base.update(kw)
    return TrainConfig(**base)


def test_same_seed_gives_identical_weights_after_one_epoch(tmp_path):
    a, _ = load_checkpoint(train(_cfg(), tmp_path / "a"))
    b, _ = load_checkpoint(train(_cfg(), tmp_path / "b"))
    c, _ = load_checkpoint(train(_cfg(seed=4), tmp_path / "c"))
    for (name, pa), pb, _pc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.state_dict().values(), c.state_dict().values()))


def test_resume_equals_uninterrupted_run(tmp_path, monkeypatch):
    import certquant.train.trainer as trainer

    cfg = _cfg(epochs=2)
    full, info = load_checkpoint(train(cfg, tmp_path / "full"))
    original, calls = trainer.noisy_epoch, []

    def crash_in_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # a kill after epoch 1 was checkpointed
        return original(*args, **kwargs)

    monkeypatch.setattr(trainer, "noisy_epoch", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "interrupted")
    monkeypatch.setattr(trainer, "noisy_epoch", original)
    resumed, rinfo = load_checkpoint(train(cfg, tmp_path / "interrupted", resume=True))
    for pa, pb in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(pa, pb)
    assert rinfo["metrics"]["test_clean_accuracy"] == info["metrics"]["test_clean_accuracy"]


def test_checkpoint_records_everything_needed(tmp_path):
    _, info = load_checkpoint(train(_cfg(), tmp_path / "run"))
    for key in ("arch", "dataset", "input_size", "in_channels", "mean", "std", "sigma", "train_args", "metrics"):
        assert key in info
    assert info["metrics"]["test_clean_accuracy"] > 0.5  # synthetic classes are easy
    assert info["train_args"]["seed"] == 3


def test_bad_training_arguments(tmp_path):
    with pytest.raises(CertquantError, match="sigma must be > 0"):
        train(_cfg(sigma=0.0), tmp_path / "x")
    with pytest.raises(CertquantError, match="unknown model"):
        train(_cfg(model="nope"), tmp_path / "y")
    train(_cfg(), tmp_path / "z")
    with pytest.raises(CertquantError, match="--resume"):
        train(_cfg(), tmp_path / "z")


def test_accuracy_under_noise_is_seeded():
    from certquant.models import build

    model = build("small-cnn")
    x, y = torch.rand(50, 1, 28, 28), torch.randint(0, 10, (50,))
    assert accuracy(model, x, y, 0.5, seed=1) == accuracy(model, x, y, 0.5, seed=1)


def _dropout_net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)  # the test's own initialisation
    return torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(784, 32), torch.nn.ReLU(), torch.nn.Dropout(0.5), torch.nn.Linear(32, 10)
    )


def _epoch(model: torch.nn.Module, seed: int) -> list[torch.Tensor]:
    images, labels = load_dataset("synthetic", "train")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    noisy_epoch(model, images[:256], labels[:256], optimizer, 0.25, 64, seed, torch.device("cpu"), progress=False)
    return [p.detach().clone() for p in model.parameters()]


def test_library_calls_leave_the_global_rng_alone(tmp_path):
    """noisy_epoch, finetune and train draw from their own generators (and from the global RNG only inside a block
    that restores it): the caller's global RNG state is the same after each call as before."""
    images, labels = load_dataset("synthetic", "train")
    epoch_net, finetune_net = _dropout_net(), _dropout_net()
    calls = {
        "noisy_epoch": lambda: _epoch(epoch_net, seed=5),
        "finetune": lambda: finetune(
            finetune_net, images[:128], labels[:128], 0.25, epochs=1, batch_size=64, device="cpu", progress=False
        ),
        "train": lambda: train(_cfg(), tmp_path / "run"),
    }
    for name, call in calls.items():
        torch.manual_seed(1234)
        before = torch.get_rng_state()
        call()
        assert torch.equal(torch.get_rng_state(), before), name


def test_same_seed_same_epoch_whatever_the_global_rng():
    """The epoch (dropout included) depends on its seed only, not on the caller's global RNG state."""
    torch.manual_seed(1)
    a = _epoch(_dropout_net(), seed=5)
    model = _dropout_net()
    torch.manual_seed(2)
    b = _epoch(model, seed=5)
    c = _epoch(_dropout_net(), seed=6)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert any(not torch.equal(x, y) for x, y in zip(a, c))
