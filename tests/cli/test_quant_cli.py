"""certquant quantize / cost / evaluate on a quantized checkpoint, through the typer app."""

import json

import pytest
import torch
from cli_helpers import assert_one_line_error
from typer.testing import CliRunner

from certquant.cli.main import app
from certquant.data import dataset_info
from certquant.models import build, load_checkpoint, save_checkpoint
from certquant.quant import Policy, QuantLinear, quantizable_layers

runner = CliRunner()


@pytest.fixture
def base(tmp_path):
    torch.manual_seed(0)
    info = dataset_info("synthetic")
    model = build("small-cnn", 10, 1, 28, info.mean, info.std)
    path = tmp_path / "base.pt"
    save_checkpoint(
        path,
        model,
        {
            "arch": "small-cnn",
            "num_classes": 10,
            "in_channels": 1,
            "input_size": 28,
            "mean": list(info.mean),
            "std": list(info.std),
            "dataset": "synthetic",
            "sigma": 0.25,
        },
    )
    return path


def test_help_lists_quant_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "quantize" in result.output and "cost" in result.output


def test_cost_table_and_json(base, tmp_path):
    result = runner.invoke(app, ["cost", "--checkpoint", str(base), "--uniform", "4"])
    assert result.exit_code == 0, result.output
    assert "1.5625%" in result.output and "3,612,672" in result.output and "WARNING" not in result.output
    result = runner.invoke(app, ["cost", "--checkpoint", str(base), "--uniform", "4/8", "--json"])
    data = json.loads(result.output)
    assert data["bitops_fraction"] == 32 / 1024 and [r["a_bits"] for r in data["layers"]] == [8] * 4
    assert data["bitops"] == 4_241_152 * 32


def test_cost_of_policy_file_marks_unquantized_layer(base, tmp_path):
    layers = quantizable_layers(build("small-cnn"), (1, 28, 28))
    path = Policy.from_lists(layers, [8, 4, 4, 32], [8, 4, 4, 32], arch="small-cnn").save(tmp_path / "p.json")
    result = runner.invoke(app, ["cost", "--checkpoint", str(base), "--policy", str(path)])
    assert result.exit_code == 0, result.output
    assert "FP32 <- not quantized" in result.output and "left at 32 bits (not quantized): 1.9" in result.output


def test_quantize_then_load_and_evaluate(base, tmp_path):
    out = tmp_path / "q.pt"
    result = runner.invoke(
        app,
        [
            "quantize",
            "--checkpoint",
            str(base),
            "--uniform",
            "4/8",
            "--first-last",
            "8",
            "--calib-images",
            "64",
            "--device",
            "cpu",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output
    model, info = load_checkpoint(out)
    assert info["kind"] == "quantized" and isinstance(model[1][9], QuantLinear)
    assert model[1][3].weight_quantizer.bits == 4 and model[1][9].weight_quantizer.bits == 8
    result = runner.invoke(app, ["evaluate", "--checkpoint", str(out), "--max", "50", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "q.pt" in result.output and "small-cnn" in result.output
    result = runner.invoke(
        app,
        [
            "quantize",
            "--checkpoint",
            str(base),
            "--uniform",
            "4",
            "--calib-images",
            "32",
            "--finetune-epochs",
            "1",
            "--finetune-images",
            "64",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "ft.pt"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert load_checkpoint(tmp_path / "ft.pt")[1]["finetune"]["images"] == 64


def test_bad_inputs_are_one_line_exit_2(base, tmp_path):
    layers = quantizable_layers(build("small-cnn"), (1, 28, 28))
    unknown = Policy({**{l.name: (4, 4) for l in layers}, "1.fc": (4, 4)}).save(tmp_path / "unknown.json")
    assert_one_line_error(
        runner.invoke(app, ["cost", "--checkpoint", str(base), "--policy", str(unknown)]), "does not have", "1.fc"
    )
    resnet = quantizable_layers(build("resnet20", in_channels=1), (1, 32, 32))
    other = Policy.uniform(resnet, 4, arch="resnet20").save(tmp_path / "resnet.json")
    assert_one_line_error(
        runner.invoke(
            app, ["quantize", "--checkpoint", str(base), "--policy", str(other), "--out", str(tmp_path / "x.pt")]
        ),
        "made for architecture 'resnet20'",
    )
    bad_bits = json.loads(Policy.uniform(layers, 4).to_json())
    bad_bits["layers"][1]["w_bits"] = 33
    (tmp_path / "bits.json").write_text(json.dumps(bad_bits))
    assert_one_line_error(
        runner.invoke(app, ["cost", "--checkpoint", str(base), "--policy", str(tmp_path / "bits.json")]),
        "[1, 32]",
        "1.3",
    )
    assert_one_line_error(runner.invoke(app, ["cost", "--checkpoint", str(base), "--uniform", "0"]), "[1, 32]")
    assert_one_line_error(runner.invoke(app, ["cost", "--checkpoint", str(base), "--uniform", "4/40"]), "[1, 32]")
    assert_one_line_error(runner.invoke(app, ["cost", "--checkpoint", str(base), "--uniform", "four"]), "--uniform")
    assert_one_line_error(runner.invoke(app, ["cost", "--checkpoint", str(base)]), "exactly one of --policy")
    assert_one_line_error(
        runner.invoke(app, ["cost", "--checkpoint", str(base), "--uniform", "4", "--policy", str(unknown)]),
        "exactly one of --policy",
    )
    assert_one_line_error(
        runner.invoke(app, ["cost", "--checkpoint", str(tmp_path / "none.pt"), "--uniform", "4"]), "not found"
    )
    assert not (tmp_path / "x.pt").exists()
