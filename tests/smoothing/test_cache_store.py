"""The IRS cache on disk: written by certify_dataset(keep_cache=True), read back identical (no pickle), regenerates
the noise bit-identically, refuses mismatches; and the dataset-level IRS run on top of it."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from certquant.data import load_dataset
from certquant.models import build
from certquant.smoothing import (
    CacheStore,
    CacheWriter,
    certify,
    certify_dataset,
    certify_dataset_incremental,
    image_seed,
    noisy_batches,
)
from certquant.smoothing.cache_store import CACHE_DIR, cache_key, model_fingerprint
from certquant.utils.errors import CertquantError

ARGS = dict(sigma=0.25, n0=10, n=60, alpha=0.01, batch_size=40, seed=3)
INDICES = [0, 7, 21]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    images, labels = load_dataset("synthetic", "test")
    return build("small-cnn").eval(), images, labels


@pytest.fixture(scope="module")
def base_run(setup, tmp_path_factory):
    model, images, labels = setup
    out = tmp_path_factory.mktemp("base")
    certify_dataset(
        model,
        images,
        labels,
        INDICES,
        out,
        identity={"checkpoint_sha256": "a" * 64, "dataset": "synthetic"},
        progress=False,
        keep_cache=True,
        **ARGS,
    )
    return out


def test_cache_files_and_round_trip(setup, base_run):
    model, images, _ = setup
    folder = base_run / CACHE_DIR
    key = json.loads((folder / "key.json").read_text())
    assert key["checkpoint_sha256"] == "a" * 64 and key["model_sha256"] == model_fingerprint(model)
    assert (key["sigma"], key["n0"], key["n"], key["alpha"], key["batch_size"], key["seed"], key["device"]) == (
        0.25,
        10,
        60,
        0.01,
        40,
        3,
        "cpu",
    )
    assert len((folder / "entries.jsonl").read_text().splitlines()) == len(INDICES)
    with np.load(folder / "predictions" / "00000007.npz", allow_pickle=False) as data:
        assert data["predictions"].dtype == np.uint8 and data["predictions"].shape == (60,)
    store = CacheStore.open(base_run)
    assert store.indices == INDICES
    for index in INDICES:
        fresh = certify(model, images[index], 0.25, 10, 60, 0.01, 40, image_seed(3, index), keep_cache=True).cache
        entry = store.entry(index)
        assert torch.equal(entry.predictions, fresh.predictions)
        for field in (
            "c_a",
            "n_a",
            "pa_lower",
            "n",
            "sigma",
            "alpha",
            "seed",
            "stage",
            "batch_size",
            "batch_seeds",
            "device",
        ):
            assert getattr(entry, field) == getattr(fresh, field), field


def test_regenerated_noise_is_bit_identical(setup, base_run):
    model, images, _ = setup
    entry = CacheStore.open(base_run).entry(21)
    x = images[21]
    regenerated = torch.cat(list(entry.noisy_batches(x, limit=50)))  # cuts through the second batch of 40
    original = torch.cat(list(noisy_batches(x, 0.25, image_seed(3, 21), 1, 60, 40)))[:50]
    assert torch.equal(regenerated, original)
    with torch.inference_mode():
        assert torch.equal(model(regenerated).argmax(1).to(torch.uint8), entry.predictions[:50])


def test_mismatches_are_refused_in_one_line(setup, base_run, tmp_path):
    store = CacheStore.open(base_run)
    refusals = [
        (lambda: store.check(checkpoint_sha256="b" * 64), "made with checkpoint aaaaaaaaaaaa, not bbbbbbbbbbbb"),
        (lambda: store.check(model_sha256="0" * 64), "other model weights"),
        (lambda: store.check(sigma=0.5), "sigma 0.25 there, 0.5 here"),
        (lambda: store.check(n=100, alpha=0.001), "n 60 there, 100 here; alpha 0.01 there, 0.001 here"),
        (lambda: store.require([0, 8]), "not image(s) 8"),
        (lambda: CacheStore.open(tmp_path), "holds no IRS cache"),
        (
            lambda: CacheWriter(base_run / CACHE_DIR, cache_key(0.5, 10, 60, 0.01, 40, 3, "cpu", "a" * 64)),
            "other arguments",
        ),
    ]
    store.check(sigma=0.25, n=60, checkpoint_sha256="a" * 64, seed=None)  # matching (None = any) passes
    for call, message in refusals:
        with pytest.raises(CertquantError) as info:
            call()
        assert message in str(info.value) and "\n" not in str(info.value)


def test_keep_cache_is_part_of_the_run(setup, base_run):
    model, images, labels = setup
    with pytest.raises(CertquantError, match="keep_cache"):
        certify_dataset(
            model,
            images,
            labels,
            INDICES,
            base_run,
            identity={"checkpoint_sha256": "a" * 64, "dataset": "synthetic"},
            progress=False,
            resume=True,
            **ARGS,
        )


def test_resumed_run_keeps_one_entry_per_image(setup, tmp_path):
    model, images, labels = setup
    ident = {"checkpoint_sha256": "c" * 64, "dataset": "synthetic"}
    certify_dataset(
        model, images, labels, INDICES[:2], tmp_path, identity=ident, progress=False, keep_cache=True, **ARGS
    )
    jsonl = tmp_path / "certificates.jsonl"
    jsonl.write_text("".join(jsonl.read_text().splitlines(keepends=True)[:1]))  # killed after its cache entry
    certify_dataset(
        model, images, labels, INDICES, tmp_path, identity=ident, progress=False, keep_cache=True, resume=True, **ARGS
    )
    store = CacheStore.open(tmp_path)
    assert store.indices == INDICES
    assert len((tmp_path / CACHE_DIR / "entries.jsonl").read_text().splitlines()) == 4  # 7 twice, identical


def test_dataset_irs_of_the_base_itself(setup, base_run, tmp_path):
    model, images, labels = setup
    store = CacheStore.open(base_run)
    summary = certify_dataset_incremental(
        model,
        images,
        labels,
        INDICES,
        tmp_path / "irs",
        store,
        n_p=50,
        disparity="one-sided",
        progress=False,
        base_run=base_run,
    )
    records = [json.loads(line) for line in (tmp_path / "irs" / "certificates.jsonl").read_text().splitlines()]
    assert [r["index"] for r in records] == INDICES
    assert all(r["n_d"] == 0 and math.isclose(r["zeta"], 1 - 0.001 ** (1 / 50)) for r in records)
    inc = summary["incremental"]
    assert inc["n_p"] == 50 and inc["disparity"] == "one-sided" and inc["confidence"] == pytest.approx(1 - 0.011)
    assert sum(inc["branch_counts"].values()) == len(INDICES) and "base_acr" in inc
    # f' ran on the samples that can count: all n_p in the direct branch, where f said c_A in the zeta branch
    for r in records:
        entry = store.entry(r["index"])
        expected = 50 if r["branch"] == "direct" else int((entry.predictions[:50].long() == entry.c_a).sum()) or 50
        assert r["evaluated"] == expected
    assert inc["evaluated_fraction"] == pytest.approx(sum(r["evaluated"] for r in records) / (50 * len(records)))
    assert summary["num_images"] == len(INDICES) and "certified_accuracy" in summary
    again = certify_dataset_incremental(
        model,
        images,
        labels,
        INDICES,
        tmp_path / "irs",
        store,
        n_p=50,
        disparity="one-sided",
        progress=False,
        base_run=base_run,
        resume=True,
    )
    assert again["acr"] == summary["acr"]
    with pytest.raises(CertquantError, match="other settings"):
        certify_dataset_incremental(
            model, images, labels, INDICES, tmp_path / "irs", store, n_p=40, progress=False, resume=True
        )
    with pytest.raises(CertquantError, match="differs from the image the IRS cache was made for"):
        certify_dataset_incremental(
            model, images.flip(0), labels, INDICES, tmp_path / "other", store, n_p=50, progress=False
        )
    with pytest.raises(CertquantError, match="exceeds the 60 cached"):
        certify_dataset_incremental(model, images, labels, INDICES, tmp_path / "x", store, n_p=61, progress=False)


def test_model_fingerprint_of_quantized_and_channels_last_models(setup):
    from certquant.quant import Policy, quantizable_layers, quantize

    model, images, _ = setup
    layers = quantizable_layers(model, (1, 28, 28))
    qmodel = quantize(model, Policy.uniform(layers, 8), images[:32])  # holds 0-dim quantizer buffers
    assert model_fingerprint(qmodel) == model_fingerprint(quantize(model, Policy.uniform(layers, 8), images[:32]))
    assert model_fingerprint(qmodel) != model_fingerprint(quantize(model, Policy.uniform(layers, 4), images[:32]))
    import copy

    assert model_fingerprint(copy.deepcopy(model).to(memory_format=torch.channels_last)) == model_fingerprint(model)
