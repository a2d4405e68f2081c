"""certquant certify / predict / analyze on a freshly built checkpoint of the synthetic dataset (tiny n)."""

from __future__ import annotations

import json

import pytest
import torch
from cli_helpers import assert_one_line_error
from typer.testing import CliRunner

from certquant.cli.main import app
from certquant.data import dataset_info
from certquant.models import build, save_checkpoint

runner = CliRunner()
FAST = ["--n0", "10", "--n", "60", "--alpha", "0.01", "--batch", "40", "--skip", "100", "--no-progress"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    info = dataset_info("synthetic")
    torch.manual_seed(0)
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
    return str(save_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt", model, meta))


def _certify(checkpoint, out, *extra):
    return runner.invoke(app, ["certify", "--checkpoint", checkpoint, *FAST, "--out", str(out), *extra])


def _records(out):
    lines = (out / "certificates.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]


def test_certify_writes_results(checkpoint, tmp_path):
    result = _certify(checkpoint, tmp_path)
    assert result.exit_code == 0, result.output
    assert "5 images: clean accuracy" in result.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["indices"] == [0, 100, 200, 300, 400]
    assert summary["arguments"]["sigma"] == 0.25 and summary["arguments"]["dataset"] == "synthetic"
    assert len(summary["checkpoint_sha256"]) == 64 and "torch" in summary["software"]
    assert summary["certified_accuracy"]["0"] == summary["clean_accuracy"]
    record = json.loads((tmp_path / "certificates.jsonl").read_text().splitlines()[0])
    assert {"index", "label", "predicted", "radius", "pa_lower", "correct", "seconds"} <= set(record)
    assert (tmp_path / "certify.tsv").read_text().startswith("idx\tlabel\tpredict\tradius\tcorrect\ttime\n")


def test_interrupted_run_equals_uninterrupted(checkpoint, tmp_path):
    assert _certify(checkpoint, tmp_path / "whole").exit_code == 0
    # interrupted after 2 images (--max), then the full command
    assert _certify(checkpoint, tmp_path / "parts", "--max", "2").exit_code == 0
    assert len(_records(tmp_path / "parts")) == 2
    assert_one_line_error(_certify(checkpoint, tmp_path / "parts"), "already holds a certify run: pass --resume")
    assert _certify(checkpoint, tmp_path / "parts", "--resume").exit_code == 0
    assert _records(tmp_path / "parts") == _records(tmp_path / "whole")
    # lose the last line (a kill), re-run: the same again
    jsonl = tmp_path / "parts" / "certificates.jsonl"
    jsonl.write_text("".join(jsonl.read_text().splitlines(keepends=True)[:-1]))
    assert _certify(checkpoint, tmp_path / "parts", "--resume").exit_code == 0
    assert _records(tmp_path / "parts") == _records(tmp_path / "whole")
    whole = json.loads((tmp_path / "whole" / "summary.json").read_text())
    parts = json.loads((tmp_path / "parts" / "summary.json").read_text())
    for key in ("clean_accuracy", "acr", "certified_accuracy", "abstain_rate", "indices"):
        assert whole[key] == parts[key]
    assert (tmp_path / "whole" / "certify.tsv").read_text().split("\n")[
        0
    ] == "idx\tlabel\tpredict\tradius\tcorrect\ttime"


def test_channels_last_is_recorded_and_gives_the_same_certificates(checkpoint, tmp_path):
    assert _certify(checkpoint, tmp_path / "cl", "--max", "3").exit_code == 0
    assert _certify(checkpoint, tmp_path / "plain", "--max", "3", "--no-channels-last").exit_code == 0
    assert json.loads((tmp_path / "cl" / "run.json").read_text())["identity"]["channels_last"] is True
    assert json.loads((tmp_path / "plain" / "run.json").read_text())["identity"]["channels_last"] is False
    assert _records(tmp_path / "cl") == _records(tmp_path / "plain")


def test_changed_arguments_refused(checkpoint, tmp_path):
    assert _certify(checkpoint, tmp_path, "--max", "1").exit_code == 0
    assert_one_line_error(
        _certify(checkpoint, tmp_path, "--max", "1", "--seed", "1", "--resume"),
        "other settings",
        "seed: 0 there, 1 now",
    )


@pytest.mark.parametrize(
    "extra,fragment",
    [
        (["--alpha", "1.5"], "alpha must be in (0, 1)"),
        (["--alpha", "0"], "alpha must be in (0, 1)"),
        (["--n", "0"], "n0 >= 1 and n >= 1"),
        (["--n0", "0"], "n0 >= 1 and n >= 1"),
        (["--sigma", "0"], "sigma must be > 0"),
        (["--sigma", "-0.5"], "sigma must be > 0"),
        (["--batch", "0"], "batch (noisy samples per noise batch) must be >= 1"),
        (["--skip", "0"], "--skip must be >= 1"),
        (["--max", "0"], "--max must be >= 1"),
        (["--dataset", "mnist"], "trained on synthetic, not mnist"),
    ],
)
def test_bad_inputs_one_line_exit_2(checkpoint, tmp_path, extra, fragment):
    assert_one_line_error(_certify(checkpoint, tmp_path, *extra), fragment)


def test_missing_checkpoint(tmp_path):
    assert_one_line_error(_certify(str(tmp_path / "nope.pt"), tmp_path / "out"), "not found")


def test_predict(checkpoint, tmp_path):
    result = runner.invoke(
        app,
        [
            "predict",
            "--checkpoint",
            checkpoint,
            "--n",
            "60",
            "--alpha",
            "0.05",
            "--batch",
            "30",
            "--skip",
            "100",
            "--max",
            "3",
            "--no-progress",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["num_images"] == 3 and {"accuracy", "abstain_rate", "accuracy_ci95"} <= set(summary)
    assert len((tmp_path / "predictions.jsonl").read_text().splitlines()) == 3
    assert_one_line_error(
        runner.invoke(app, ["predict", "--checkpoint", checkpoint, "--alpha", "2", "--out", str(tmp_path)]),
        "alpha must be in (0, 1)",
    )


def test_analyze(checkpoint, tmp_path):
    assert _certify(checkpoint, tmp_path / "s1", "--max", "3").exit_code == 0
    assert _certify(checkpoint, tmp_path / "s2", "--max", "3", "--seed", "1").exit_code == 0
    plot = tmp_path / "curve.png"
    result = runner.invoke(app, ["analyze", str(tmp_path / "s1"), str(tmp_path / "s2"), "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    assert "| run | images | ACR | r=0 |" in result.output
    assert "| s1 | 3 |" in result.output and "| s2 | 3 |" in result.output
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = runner.invoke(app, ["analyze", str(tmp_path / "s1")])
    assert result.exit_code == 0 and (tmp_path / "s1" / "certified_accuracy.png").is_file()
    assert_one_line_error(runner.invoke(app, ["analyze", str(tmp_path / "absent")]), "not found")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(runner.invoke(app, ["analyze", str(tmp_path / "empty")]), "no certificates.jsonl")


SEQ = ["--n0", "10", "--alpha", "0.01", "--batch", "40", "--skip", "100", "--no-progress"]


def test_sequential_certify_radii_resumes_and_shares_noise(checkpoint, tmp_path):
    """--radii/--n-max: per-image decisions and samples; a resumed run equals a whole one; each image's decisions
    are those of replaying the fixed-n run's predictions (same noise prefix)."""
    args = ["certify", "--checkpoint", checkpoint, *SEQ, "--radii", "0.1,0.25", "--n-max", "400"]
    whole = runner.invoke(app, [*args, "--out", str(tmp_path / "whole")])
    assert whole.exit_code == 0, whole.output
    assert "samples per image" in whole.output and "certified accuracy at radius 0.1:" in whole.output
    summary = json.loads((tmp_path / "whole" / "summary.json").read_text())
    assert summary["sequential"]["radii"] == [0.1, 0.25] and summary["sequential"]["n_max"] == 400
    assert runner.invoke(app, [*args, "--max", "2", "--out", str(tmp_path / "parts")]).exit_code == 0
    assert runner.invoke(app, [*args, "--resume", "--out", str(tmp_path / "parts")]).exit_code == 0
    assert _records(tmp_path / "parts") == _records(tmp_path / "whole")
    fixed = runner.invoke(
        app,
        ["certify", "--checkpoint", checkpoint, *SEQ, "--n", "400", "--keep-cache", "--out", str(tmp_path / "fixed")],
    )
    assert fixed.exit_code == 0, fixed.output
    from certquant.smoothing import CacheStore
    from certquant.smoothing.sequential import SequentialSettings, replay_sequential

    store = CacheStore.open(tmp_path / "fixed")
    for record in _records(tmp_path / "whole"):
        entry = store.entry(record["index"])
        replay = replay_sequential(entry.predictions, entry.c_a, 400, 0.01, 0.25, [0.1, 0.25], SequentialSettings())
        assert (record["certified"], record["n_used"], record["c_a"]) == (replay.certified, replay.n_used, entry.c_a)


def test_sequential_certify_errors_are_one_line(checkpoint, tmp_path):
    base = ["certify", "--checkpoint", checkpoint, *SEQ, "--out", str(tmp_path)]
    assert_one_line_error(runner.invoke(app, [*base, "--radii", "0.25"]), "--n-max")
    assert_one_line_error(runner.invoke(app, [*base, "--radii", "a,b", "--n-max", "100"]), "--radii")
    assert_one_line_error(runner.invoke(app, [*base, "--radii", "-1", "--n-max", "100"]), "radii")
    assert_one_line_error(runner.invoke(app, [*base, "--n-max", "0"]), "n_max")
    assert_one_line_error(
        runner.invoke(app, [*base, "--radii", "0.25", "--n-max", "100", "--curtail", "0.7"]), "curtail"
    )


def test_curtail_option_reaches_the_test_and_the_run_identity(checkpoint, tmp_path):
    """--curtail EPS sets the curtailment of the sequential test (recorded, so resuming with another is refused);
    its decisions are the replay's with that setting; 0 turns it off."""
    args = ["certify", "--checkpoint", checkpoint, *SEQ, "--radii", "0.1,0.25", "--n-max", "400"]
    out = tmp_path / "curtailed"
    assert runner.invoke(app, [*args, "--curtail", "0.2", "--out", str(out)]).exit_code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["arguments"]["curtail"] == 0.2
    refused = runner.invoke(app, [*args, "--curtail", "0", "--resume", "--out", str(out)])
    assert refused.exit_code == 2 and "curtail" in refused.output
    plain = tmp_path / "plain"
    assert runner.invoke(app, [*args, "--curtail", "0", "--out", str(plain)]).exit_code == 0
    a, b = _records(out), _records(plain)
    assert all(x["n_used"] <= y["n_used"] for x, y in zip(a, b))  # curtailment only stops earlier
    assert all(not (x["certified"][k] and not y["certified"][k]) for x, y in zip(a, b) for k in range(2))


def test_sequential_irs_cli(checkpoint, tmp_path):
    """--incremental-from BASE --np N --radii: sequential IRS; the model runs on at most n_p samples per image."""
    base = runner.invoke(
        app,
        ["certify", "--checkpoint", checkpoint, *SEQ, "--n", "400", "--keep-cache", "--out", str(tmp_path / "base")],
    )
    assert base.exit_code == 0, base.output
    args = [
        "certify",
        "--checkpoint",
        checkpoint,
        "--incremental-from",
        str(tmp_path / "base"),
        "--np",
        "300",
        "--no-progress",
    ]
    result = runner.invoke(app, [*args, "--radii", "0.1,0.25", "--out", str(tmp_path / "irs")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "irs" / "summary.json").read_text())
    seq = summary["incremental_sequential"]
    assert seq["n_p_max"] == 300 and seq["radii"] == [0.1, 0.25] and 0 < seq["approx_samples_per_image"] <= 300
    assert set(seq["certified_accuracy_at_radii"]) == {"0.1", "0.25"}
    assert_one_line_error(
        runner.invoke(app, [*args, "--radii", "0.1", "--n-max", "300", "--out", str(tmp_path / "x")]), "--n-max"
    )
