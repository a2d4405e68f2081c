"""certquant certify --keep-cache, then certify --incremental-from on a quantized checkpoint (synthetic data, tiny n)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from cli_helpers import assert_one_line_error
from typer.testing import CliRunner

from certquant.cli.main import app
from certquant.data import dataset_info
from certquant.models import build, save_checkpoint

runner = CliRunner()
BASE = ["--n0", "10", "--n", "200", "--alpha", "0.01", "--batch", "50", "--skip", "100", "--no-progress"]


def _checkpoint(folder, seed: int) -> str:
    info = dataset_info("synthetic")
    torch.manual_seed(seed)
    model = build("small-cnn", 10, 1, 28, info.mean, info.std)
    meta = {
        "arch": "small-cnn",
        "num_classes": 10,
        "in_channels": 1,
        "input_size": 28,
        "mean": list(info.mean),
        "std": list(info.std),
        "dataset": "synthetic",
        "sigma": 0.25,
    }
    return str(save_checkpoint(folder / f"model{seed}.pt", model, meta))


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("irs")
    base = _checkpoint(root, 0)
    other = _checkpoint(root, 1)
    run = root / "base_run"
    result = _invoke("certify", "--checkpoint", base, *BASE, "--keep-cache", "--out", run)
    assert result.exit_code == 0, result.output
    quantized = {}
    for name, ckpt in (("q", base), ("q_other", other)):
        result = _invoke(
            "quantize", "--checkpoint", ckpt, "--uniform", "8", "--calib-images", "64", "--out", root / f"{name}.pt"
        )
        assert result.exit_code == 0, result.output
        quantized[name] = str(root / f"{name}.pt")
    return {"root": root, "base": base, "run": run, **quantized}


def _records(out):
    return [json.loads(line) for line in (out / "certificates.jsonl").read_text().splitlines()]


def test_keep_cache_writes_the_cache(setup):
    cache = setup["run"] / "irs_cache"
    key = json.loads((cache / "key.json").read_text())
    assert key["n"] == 200 and key["sigma"] == 0.25 and len(key["checkpoint_sha256"]) == 64
    assert len((cache / "entries.jsonl").read_text().splitlines()) == 5
    assert len(list((cache / "predictions").glob("*.npz"))) == 5


def test_irs_of_a_quantized_checkpoint(setup, tmp_path):
    out = tmp_path / "irs"
    result = _invoke(
        "certify",
        "--checkpoint",
        setup["q"],
        "--incremental-from",
        setup["run"],
        "--np",
        100,
        "--out",
        out,
        "--no-progress",
    )
    assert result.exit_code == 0, result.output
    assert "mean zeta" in result.output and "base model: ACR" in result.output and "of the n_p samples" in result.output
    summary = json.loads((out / "summary.json").read_text())
    inc = summary["incremental"]
    assert (
        summary["indices"] == [0, 100, 200, 300, 400] and inc["n_p"] == 100 and inc["disparity"] == "one-sided"
    )  # the default
    assert sum(inc["branch_counts"].values()) == 5 and 0 < inc["mean_zeta"] <= 1
    assert summary["arguments"]["sigma"] == 0.25 and summary["base_checkpoint_sha256"]
    records = _records(out)
    assert {"zeta", "n_d", "n_p", "branch", "base_pa_lower", "radius", "correct", "evaluated"} <= set(records[0])
    assert 0 < inc["evaluated_fraction"] <= 1
    assert (out / "certify.tsv").exists()
    # resuming changes nothing; a subset (--max) reuses the finished records
    again = _invoke(
        "certify",
        "--checkpoint",
        setup["q"],
        "--incremental-from",
        setup["run"],
        "--np",
        100,
        "--out",
        out,
        "--no-progress",
        "--resume",
    )
    assert again.exit_code == 0 and [r["zeta"] for r in _records(out)] == [r["zeta"] for r in records]
    # one-sided: never looser
    one = tmp_path / "one"
    result = _invoke(
        "certify",
        "--checkpoint",
        setup["q"],
        "--incremental-from",
        setup["run"],
        "--np",
        100,
        "--disparity",
        "one-sided",
        "--out",
        one,
        "--no-progress",
    )
    assert result.exit_code == 0, result.output
    for a, b in zip(_records(one), records):
        assert a["zeta"] <= b["zeta"] and a["radius"] >= b["radius"]


def test_irs_of_the_base_itself_has_the_zeta_floor(setup, tmp_path):
    result = _invoke(
        "certify",
        "--checkpoint",
        setup["base"],
        "--incremental-from",
        setup["run"],
        "--np",
        150,
        "--alpha-zeta",
        "0.01",
        "--out",
        tmp_path,
        "--no-progress",
    )
    assert result.exit_code == 0, result.output
    assert all(r["n_d"] == 0 and math.isclose(r["zeta"], 1 - 0.01 ** (1 / 150)) for r in _records(tmp_path))


def test_bad_irs_arguments_exit_2_with_one_line(setup, tmp_path):
    q, run = setup["q"], setup["run"]
    irs = ["certify", "--checkpoint", q, "--incremental-from", run, "--out", tmp_path / "x", "--no-progress"]
    assert_one_line_error(_invoke(*irs, "--np", 500), "--np 500 exceeds the 200 cached")
    assert_one_line_error(_invoke(*irs, "--np", 100, "--disparity", "sideways"), "unknown disparity 'sideways'")
    assert_one_line_error(_invoke(*irs, "--np", 100, "--sigma", 0.5), "--sigma 0.5 differs from the base run's cache")
    assert_one_line_error(_invoke(*irs, "--np", 100, "--n", 1000), "--n 1000 differs")
    assert_one_line_error(_invoke(*irs), "needs --np")
    assert_one_line_error(_invoke(*irs, "--np", 100, "--keep-cache"), "--keep-cache applies to a full certification")
    assert_one_line_error(_invoke(*irs, "--np", 100, "--gamma", 0), "gamma must be in (0, 1]")
    assert_one_line_error(
        _invoke(
            "certify",
            "--checkpoint",
            setup["q_other"],
            "--incremental-from",
            run,
            "--np",
            100,
            "--out",
            tmp_path / "y",
            "--no-progress",
        ),
        "was quantized from checkpoint",
        "certify its base",
    )
    assert_one_line_error(
        _invoke(
            "certify",
            "--checkpoint",
            q,
            "--incremental-from",
            tmp_path,
            "--np",
            100,
            "--out",
            tmp_path / "z",
            "--no-progress",
        ),
        "holds no IRS cache",
        "--keep-cache",
    )
    assert_one_line_error(
        _invoke("certify", "--checkpoint", q, "--np", 100, "--out", tmp_path / "w", "--no-progress"),
        "--np is an IRS option",
    )
    assert_one_line_error(_invoke(*irs, "--np", 100, "--skip", 7, "--max", 3), "not image(s) 7, 14")
