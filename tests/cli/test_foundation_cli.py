import json

from cli_helpers import assert_one_line_error
from typer.testing import CliRunner

from certquant.cli.main import app
from certquant.models import build, save_checkpoint

runner = CliRunner()


def test_help_lists_every_command():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("data", "models", "train", "evaluate", "zoo"):
        assert command in result.output


def test_data_list_and_fetch_synthetic():
    assert "fashion-mnist" in runner.invoke(app, ["data", "list"]).output
    result = runner.invoke(app, ["data", "fetch", "synthetic"])
    assert result.exit_code == 0 and "2000 train / 500 test" in result.output


def test_unknown_dataset_and_model(tmp_path):
    assert_one_line_error(runner.invoke(app, ["data", "fetch", "imagenette"]), "unknown dataset 'imagenette'")
    assert_one_line_error(
        runner.invoke(app, ["train", "--model", "vgg", "--dataset", "synthetic", "--out", str(tmp_path)]),
        "unknown model 'vgg'",
    )


def test_sigma_must_be_positive(tmp_path):
    assert_one_line_error(
        runner.invoke(app, ["train", "--sigma", "0", "--dataset", "synthetic", "--out", str(tmp_path)]),
        "sigma must be > 0",
    )


def test_corrupt_and_mismatched_checkpoints(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert_one_line_error(runner.invoke(app, ["evaluate", "--checkpoint", str(bad)]), "corrupt")
    model = build("small-cnn")
    info = {
        "arch": "small-cnn",
        "num_classes": 10,
        "in_channels": 1,
        "input_size": 28,
        "mean": [0.0],
        "std": [1.0],
        "dataset": "synthetic",
        "sigma": 0.25,
    }
    good = save_checkpoint(tmp_path / "good.pt", model, info)
    assert_one_line_error(
        runner.invoke(app, ["evaluate", "--checkpoint", str(good), "--dataset", "mnist"]),
        "trained on synthetic, not mnist",
    )
    result = runner.invoke(app, ["evaluate", "--checkpoint", str(good), "--max", "50"])
    assert result.exit_code == 0 and "| good.pt | small-cnn | synthetic |" in result.output


def test_zoo_json_lists_loadable_checkpoints():
    result = runner.invoke(app, ["zoo", "--json"])
    assert result.exit_code == 0
    entries = json.loads(result.output)
    for entry in entries:
        assert set(entry) == {"name", "path", "dataset", "model", "sigma", "clean_accuracy", "noisy_accuracy"}
    from certquant.models import load_checkpoint

    for entry in entries:
        model, info = load_checkpoint(entry["path"])
        assert info["arch"] == entry["model"] and info["sigma"] == entry["sigma"]
