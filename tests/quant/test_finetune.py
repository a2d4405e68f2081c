"""Noise-aware quantization-aware fine-tuning: reuses noisy_epoch, learns through STE, resumes exactly."""

import pytest
import torch

import certquant.quant.finetuning as finetune_module
from certquant.quant import Policy, finetune, noisy_calibration_batch, quantizable_layers, quantize
from certquant.train import accuracy
from certquant.utils.errors import CertquantError


def _quantized(make_cnn, images, bits=4):
    model = make_cnn()
    layers = quantizable_layers(model, (1, 28, 28))
    return quantize(model, Policy.uniform(layers, bits), noisy_calibration_batch(images, 0.25, 64))


def test_finetune_learns_through_quantizers(make_cnn, synthetic, monkeypatch):
    images, labels = synthetic
    q = _quantized(make_cnn, images)
    scales = {k: v.clone() for k, v in q.state_dict().items() if "quantizer" in k}
    calls = []
    original = finetune_module.noisy_epoch
    monkeypatch.setattr(finetune_module, "noisy_epoch", lambda *a, **k: calls.append(1) or original(*a, **k))
    before = accuracy(q, images, labels, 0.25)
    out = finetune(q, images, labels, sigma=0.25, epochs=3, lr=0.05, batch_size=32, device="cpu")
    assert out is q and not q.training and len(calls) == 3  # the trainer's loop, once per epoch
    assert accuracy(q, images, labels, 0.25) > before + 0.2  # random init -> learns the synthetic classes
    assert all(torch.equal(v, q.state_dict()[k]) for k, v in scales.items())  # calibrated ranges stay fixed


def test_finetune_resumes_exactly(make_cnn, synthetic, tmp_path, monkeypatch):
    images, labels = synthetic
    args = dict(sigma=0.25, epochs=2, lr=0.05, batch_size=64, seed=1, device="cpu")
    straight = finetune(_quantized(make_cnn, images), images, labels, out=tmp_path / "a", **args)

    original, calls = finetune_module.noisy_epoch, []

    def killed_in_second_epoch(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*a, **k)

    monkeypatch.setattr(finetune_module, "noisy_epoch", killed_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        finetune(_quantized(make_cnn, images), images, labels, out=tmp_path / "b", **args)
    monkeypatch.setattr(finetune_module, "noisy_epoch", original)
    with pytest.raises(CertquantError, match="pass --resume"):
        finetune(_quantized(make_cnn, images), images, labels, out=tmp_path / "b", **args)
    with pytest.raises(CertquantError, match="other settings \\(lr: 0.05 there, 0.1 now\\)"):
        finetune(_quantized(make_cnn, images), images, labels, out=tmp_path / "b", resume=True, **{**args, "lr": 0.1})
    resumed = finetune(_quantized(make_cnn, images), images, labels, out=tmp_path / "b", resume=True, **args)
    for (k, v), w in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(v, w), k


def test_finetune_bad_arguments(make_cnn, synthetic):
    images, labels = synthetic
    q = _quantized(make_cnn, images)
    with pytest.raises(CertquantError, match="sigma must be > 0"):
        finetune(q, images, labels, sigma=0.0, epochs=1)
    with pytest.raises(CertquantError, match="matching"):
        finetune(q, images, labels[:10], sigma=0.25, epochs=1)


def _finetuned_at(outer_threads, make_cnn, images, labels, **kwargs):
    torch.set_num_threads(outer_threads)
    q = finetune(
        _quantized(make_cnn, images),
        images,
        labels,
        sigma=0.25,
        epochs=1,
        lr=0.05,
        batch_size=128,
        device="cpu",
        progress=False,
        **kwargs,
    )
    return {k: v.clone() for k, v in q.state_dict().items()}


def test_finetune_gives_the_same_model_whatever_the_thread_count(make_cnn, synthetic):
    """The backward pass splits each batch's gradient sums across threads, so 1 and 2 threads round differently
    (shown here with ``threads=None``, torch's count: weights differ); fine-tuning at FINETUNE_THREADS gives
    bitwise the same model with 1 or 2 threads outside it, and the outer count is restored."""
    images, labels = synthetic
    one = _finetuned_at(1, make_cnn, images, labels)
    two = _finetuned_at(2, make_cnn, images, labels)
    assert torch.get_num_threads() == 2
    assert all(torch.equal(one[k], two[k]) for k in one)
    free_one = _finetuned_at(1, make_cnn, images, labels, threads=None)
    free_two = _finetuned_at(2, make_cnn, images, labels, threads=None)
    assert all(torch.equal(one[k], free_one[k]) for k in one)  # FINETUNE_THREADS is 1
    assert not all(torch.equal(free_one[k], free_two[k]) for k in one)  # what the fixed count removes
