"""Quantized checkpoints load through certquant.models.load_checkpoint like any other."""

import torch

from certquant.models import load_checkpoint
from certquant.models.checkpoint import read_payload
from certquant.quant import Policy, QuantConv2d, quantizable_layers, quantize_checkpoint
from certquant.quant.config import FinetuneConfig, QuantizeConfig
from certquant.utils.io import file_sha256


def test_round_trip_gives_identical_outputs(base_checkpoint, tmp_path):
    base, info = load_checkpoint(base_checkpoint)
    layers = quantizable_layers(base, (1, 28, 28))
    policy = Policy.from_lists(layers, [8, 3, 4, 32], [8, 4, 4, 8], arch="small-cnn")
    qmodel, path = quantize_checkpoint(base_checkpoint, policy, tmp_path / "q.pt", QuantizeConfig(64), device="cpu")
    loaded, qinfo = load_checkpoint(path)
    x = torch.rand(8, 1, 28, 28) + 0.25 * torch.randn(8, 1, 28, 28)
    assert isinstance(loaded[1][0], QuantConv2d) and not loaded.training
    assert torch.equal(loaded(x), qmodel(x))
    assert not torch.equal(loaded(x), base(x))
    for key in ("arch", "num_classes", "in_channels", "input_size", "mean", "std", "dataset", "sigma"):
        assert qinfo[key] == info[key]
    assert qinfo["kind"] == "quantized" and qinfo["loader_module"] == "certquant.quant.checkpoint"
    assert qinfo["base_checkpoint"]["sha256"] == file_sha256(base_checkpoint)
    assert Policy.from_json(qinfo["policy"]) == policy
    assert qinfo["calibration"]["sigma"] == 0.25 and qinfo["calibration"]["images"] == 64
    assert qinfo["ranges"]["1.0"]["a_signed"] is True and qinfo["ranges"]["1.3"]["a_bits"] == 4
    assert qinfo["cost"]["bitops_fraction"] > 0
    assert "1.0.input_quantizer.scale" in read_payload(path)["state_dict"]


def test_finetuned_checkpoint_records_it(base_checkpoint, tmp_path):
    policy = Policy.uniform(quantizable_layers(load_checkpoint(base_checkpoint)[0], (1, 28, 28)), 4)
    qmodel, path = quantize_checkpoint(
        base_checkpoint,
        policy,
        tmp_path / "q.pt",
        QuantizeConfig(calibration_images=32),
        FinetuneConfig(epochs=1, images=128, batch=64),
        device="cpu",
    )
    loaded, info = load_checkpoint(path)
    assert info["finetune"]["epochs"] == 1 and info["finetune"]["images"] == 128
    assert (tmp_path / "q.finetune" / "finetune_state.pt").exists()
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(loaded(x), qmodel(x))
