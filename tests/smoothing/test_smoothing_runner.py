"""Dataset runs: files, metrics, resume after a kill (torn line included), refusal of changed arguments."""

from __future__ import annotations

import json

import pytest
import torch

from certquant.data import load_dataset
from certquant.models import build
from certquant.smoothing import certify_dataset, certify_metrics, predict_dataset, radius_grid
from certquant.utils.errors import CertquantError

ARGS = dict(sigma=0.25, n0=10, n=60, alpha=0.01, batch_size=40, seed=3)
INDICES = [0, 7, 21, 33]


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    images, labels = load_dataset("synthetic", "test")
    return build("small-cnn"), images, labels


def _stable(records):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_run_writes_files_and_resumes_identically(setup, tmp_path):
    model, images, labels = setup
    whole = certify_dataset(model, images, labels, INDICES, tmp_path / "a", progress=False, **ARGS)
    assert whole["indices"] == INDICES and whole["num_images"] == 4
    assert set(whole) >= {
        "clean_accuracy",
        "clean_accuracy_ci95",
        "acr",
        "acr_ci95",
        "certified_accuracy",
        "abstain_rate",
        "software",
        "total_seconds",
        "samples_per_second",
        "arguments",
    }
    tsv = (tmp_path / "a" / "certify.tsv").read_text().splitlines()
    assert tsv[0] == "idx\tlabel\tpredict\tradius\tcorrect\ttime" and len(tsv) == 5

    # interrupted: first two images, then a torn half line as a kill mid-write leaves it
    certify_dataset(model, images, labels, INDICES[:2], tmp_path / "b", progress=False, **ARGS)
    with open(tmp_path / "b" / "certificates.jsonl", "a") as handle:
        handle.write('{"index": 21, "lab')
    with pytest.raises(CertquantError, match="already holds a certify run: pass --resume"):
        certify_dataset(model, images, labels, INDICES, tmp_path / "b", progress=False, **ARGS)
    resumed = certify_dataset(model, images, labels, INDICES, tmp_path / "b", progress=False, resume=True, **ARGS)
    assert _stable(_lines(tmp_path / "a" / "certificates.jsonl")) == _stable(
        _lines(tmp_path / "b" / "certificates.jsonl")
    )
    for key in ("clean_accuracy", "acr", "certified_accuracy", "abstain_rate", "indices"):
        assert resumed[key] == whole[key]


def test_order_does_not_matter(setup, tmp_path):
    model, images, labels = setup
    certify_dataset(model, images, labels, INDICES, tmp_path / "a", progress=False, **ARGS)
    certify_dataset(model, images, labels, INDICES[::-1], tmp_path / "b", progress=False, **ARGS)
    by_index = lambda p: {r["index"]: {k: v for k, v in r.items() if k != "seconds"} for r in _lines(p)}  # noqa: E731
    assert by_index(tmp_path / "a" / "certificates.jsonl") == by_index(tmp_path / "b" / "certificates.jsonl")


def test_changed_arguments_are_refused(setup, tmp_path):
    model, images, labels = setup
    certify_dataset(model, images, labels, INDICES[:1], tmp_path, progress=False, **ARGS)
    with pytest.raises(CertquantError, match="other settings \\(n: 60 there, 61 now\\)"):
        certify_dataset(model, images, labels, INDICES[:1], tmp_path, progress=False, resume=True, **{**ARGS, "n": 61})


def test_predict_dataset(setup, tmp_path):
    model, images, labels = setup
    summary = predict_dataset(
        model, images, labels, INDICES, tmp_path, sigma=0.25, n=50, alpha=0.05, batch_size=50, progress=False
    )
    assert summary["num_images"] == 4 and 0 <= summary["accuracy"] <= 1 and 0 <= summary["abstain_rate"] <= 1
    assert (tmp_path / "predict.tsv").read_text().startswith("idx\tlabel\tpredict\tcorrect\ttime\n")


def test_metrics_by_hand():
    records = [
        {"radius": 0.6, "correct": True, "predicted": 1},
        {"radius": 0.3, "correct": True, "predicted": 2},
        {"radius": 0.9, "correct": False, "predicted": 3},  # wrong: counts as 0
        {"radius": 0.0, "correct": False, "predicted": -1},
    ]
    m = certify_metrics(records)
    assert m["clean_accuracy"] == 0.5 and m["abstain_rate"] == 0.25
    assert abs(m["acr"] - 0.225) < 1e-12
    assert m["certified_accuracy"] == {"0": 0.5, "0.25": 0.5, "0.5": 0.25, "0.75": 0.0}
    assert m["acr_ci95"][0] >= 0 and m["acr_ci95"][1] > m["acr"]
    lo, hi = m["clean_accuracy_ci95"]
    assert lo < 0.5 < hi
    assert radius_grid([{"radius": 0.5, "correct": True}]) == [0.0, 0.25, 0.5, 0.75]
    assert radius_grid([{"radius": 0.0, "correct": False}]) == [0.0]
