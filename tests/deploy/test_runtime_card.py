"""The ONNX file as the certifier's base classifier, its certificate card, and one-line refusals."""

import json
import sys

import onnx
import pytest
import torch
from typer.testing import CliRunner

from certquant.cli.main import app
from certquant.data import dataset_info, load_dataset
from certquant.deploy import check_card, export_onnx, load_onnx, prediction_agreement, write_card
from certquant.deploy.runtime import OnnxClassifier
from certquant.models import load_checkpoint, save_checkpoint
from certquant.quant import Policy, quantizable_layers
from certquant.quant.checkpoint import quantize_checkpoint
from certquant.quant.config import QuantizeConfig
from certquant.smoothing import certify
from certquant.utils.errors import CertquantError

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "cli"))
from cli_helpers import assert_one_line_error  # noqa: E402
from deploy_models import make_model, quantized  # noqa: E402

runner = CliRunner()
SHAPE = (1, 28, 28)


@pytest.fixture
def exported(tmp_path):
    """A W4A4 quantized checkpoint of a small CNN on the synthetic data set and its ONNX export (via the CLI)."""
    info = dataset_info("synthetic")
    base = tmp_path / "base.pt"
    save_checkpoint(
        base,
        make_model("small-cnn"),
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
    model, _ = load_checkpoint(base)
    policy = Policy.uniform(quantizable_layers(model, SHAPE), 4, 4)
    quantize_checkpoint(base, policy, tmp_path / "q.pt", QuantizeConfig(calibration_images=64))
    result = runner.invoke(app, ["export", "--checkpoint", str(tmp_path / "q.pt"), "--out", str(tmp_path / "q.onnx")])
    assert result.exit_code == 0, result.output
    return tmp_path / "q.pt", tmp_path / "q.onnx"


def test_onnx_classifier_certifies_like_the_fake_quantized_model(exported):
    q_path, onnx_path = exported
    qmodel, _ = load_checkpoint(q_path)
    classifier, info = load_checkpoint(onnx_path)  # load_checkpoint dispatches .onnx files to onnxruntime
    assert isinstance(classifier, OnnxClassifier) and info["sigma"] == 0.25 and info["dataset"] == "synthetic"
    images, _ = load_dataset("synthetic", "test")
    for i in (0, 7):
        a = certify(qmodel, images[i], 0.25, n0=20, n=300, alpha=0.001, batch_size=100, seed=i)
        b = certify(classifier, images[i], 0.25, n0=20, n=300, alpha=0.001, batch_size=100, seed=i)
        assert (a.label, a.counts) == (b.label, b.counts)  # exact levels: same noise, same counts
    agreement = prediction_agreement(qmodel, classifier, images, list(range(10)), 0.25, samples=500, seed=3)
    assert agreement["total"] == 500 and agreement["share"] == 1.0


def test_certify_cli_on_onnx_resumes_and_card_checks_the_hash(exported, tmp_path):
    _, onnx_path = exported
    args = [
        "certify",
        "--checkpoint",
        str(onnx_path),
        "--n0",
        "10",
        "--n",
        "100",
        "--max",
        "3",
        "--skip",
        "50",
        "--batch",
        "50",
        "--out",
        str(tmp_path / "run"),
        "--no-progress",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    result = runner.invoke(app, ["card", str(onnx_path), "--from", str(tmp_path / "run")])
    assert result.exit_code == 0 and "MATCHES" in result.output, result.output
    card, digest, matches = check_card(onnx_path)
    assert matches and card["acr"] == summary["acr"] and card["test_indices"] == [0, 50, 100]
    assert card["n"] == 100 and card["sigma"] == 0.25 and card["dataset"] == "synthetic"
    assert [layer["w_bits"] for layer in card["policy"]["layers"]] == [4, 4, 4, 4]
    # the card does not change the graph's identity: the certify run resumes on the carded file
    result = runner.invoke(app, args + ["--resume"])
    assert result.exit_code == 0, result.output
    # an edited graph no longer matches its card
    proto = onnx.load(str(onnx_path))
    scale = next(t for t in proto.graph.initializer if t.name.endswith("output_scale"))
    scale.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(scale) * 0.5, scale.name))
    onnx.save(proto, str(onnx_path))
    result = runner.invoke(app, ["card", str(onnx_path)])
    assert result.exit_code == 1 and "DOES NOT MATCH" in result.output


def test_card_refuses_a_run_of_another_graph(exported, tmp_path):
    _, onnx_path = exported
    summary = {
        "arguments": {"sigma": 0.25, "n0": 10, "n": 100, "alpha": 0.001},
        "indices": [0],
        "checkpoint_sha256": "0" * 64,
        "acr": 0.1,
    }
    with pytest.raises(CertquantError, match="certified graph 000000000000"):
        write_card(onnx_path, summary)


def test_onnx_of_another_input_shape_is_refused_in_one_line(tmp_path):
    model = quantized(make_model("resnet20", in_channels=3, size=32), "W8A8", shape=(3, 32, 32))
    export_onnx(model, (3, 32, 32), tmp_path / "cifar.onnx", info={"dataset": "cifar10", "sigma": 0.25})
    result = runner.invoke(
        app,
        [
            "certify",
            "--checkpoint",
            str(tmp_path / "cifar.onnx"),
            "--dataset",
            "synthetic",
            "--n",
            "10",
            "--out",
            str(tmp_path / "run"),
        ],
    )
    assert_one_line_error(result, "exported for cifar10, not synthetic")
    # a foreign ONNX file (no certquant metadata) whose input is not the data set's images
    proto = onnx.load(str(tmp_path / "cifar.onnx"))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "foreign.onnx"))
    result = runner.invoke(
        app,
        [
            "certify",
            "--checkpoint",
            str(tmp_path / "foreign.onnx"),
            "--dataset",
            "synthetic",
            "--sigma",
            "0.25",
            "--n",
            "10",
            "--out",
            str(tmp_path / "run2"),
        ],
    )
    assert_one_line_error(result, "not images (N, 1, 28, 28)")
    result = runner.invoke(
        app, ["certify", "--checkpoint", str(tmp_path / "foreign.onnx"), "--n", "10", "--out", str(tmp_path / "run3")]
    )
    assert_one_line_error(result, "no certquant metadata")


def test_wrong_number_of_classes_is_refused(tmp_path):
    model = make_model("small-cnn")
    model[1][-1] = torch.nn.Linear(128, 7)
    export_onnx(model.eval(), SHAPE, tmp_path / "seven.onnx", info={"dataset": "synthetic", "sigma": 0.25})
    with pytest.raises(CertquantError, match=r"not \(N, 10\) logits"):
        load_onnx(tmp_path / "seven.onnx")


def test_unsupported_opset_in_a_file_is_refused_in_one_line(exported, tmp_path):
    _, onnx_path = exported
    proto = onnx.load(str(onnx_path))
    proto.opset_import[0].version = 99
    onnx.save(proto, str(tmp_path / "future.onnx"))
    result = runner.invoke(
        app, ["predict", "--checkpoint", str(tmp_path / "future.onnx"), "--n", "10", "--out", str(tmp_path / "p")]
    )
    assert_one_line_error(result, "onnxruntime", "cannot load the model")
    result = runner.invoke(
        app, ["export", "--checkpoint", str(exported[0]), "--opset", "10", "--out", str(tmp_path / "x.onnx")]
    )
    assert_one_line_error(result, "opset 10 is not supported")


def test_missing_onnxruntime_is_one_line(exported, tmp_path, monkeypatch):
    _, onnx_path = exported
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed: import raises ImportError
    result = runner.invoke(
        app,
        [
            "certify",
            "--checkpoint",
            str(onnx_path),
            "--n",
            "10",
            "--max",
            "1",
            "--no-progress",
            "--out",
            str(tmp_path / "r"),
        ],
    )
    assert_one_line_error(result, "onnxruntime is not installed", "certquant[deploy]")
