"""``export: onnx`` in a run config: each final model exported, certified as exported, compared, carded, reported."""

import json

import pytest
import torch

from certquant.data.subsets import expand_indices
from certquant.deploy import check_card
from certquant.deploy.export import ExportConfig
from certquant.pipeline.config import config_from_dict
from certquant.pipeline.run import run_pipeline
from certquant.train import TrainConfig, train
from certquant.utils.errors import CertquantError


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    cfg = TrainConfig(
        dataset="synthetic",
        model="small-cnn",
        sigma=0.25,
        epochs=1,
        lr=0.05,
        val_size=200,
        train_limit=600,
        device="cpu",
    )
    return str(train(cfg, tmp_path_factory.mktemp("ckpt")))


def config(checkpoint: str, export, runtime: str = "torch"):
    return config_from_dict(
        {
            "dataset": "synthetic",
            "checkpoint": checkpoint,
            "device": "cpu",
            "certify": {"n0": 10, "n": 100, "skip": 100, "max_images": 3, "batch": 50, "runtime": runtime},
            "search": {
                "budgets": [0.015625],
                "methods": ["uniform"],
                "episodes": 1,
                "agent": {"warmup_episodes": 1},
                "search_images": 3,
                "final_images": 3,
                "n_p": 40,
            },
            "finetune": {"epochs": 1, "images": 128, "batch": 64},
            "quantize": {"calibration_images": 32},
            "export": export,
        }
    )


def test_export_config_forms():
    assert config("c.pt", "onnx").export == ExportConfig(format="onnx")
    assert not config_from_dict({}).export.enabled
    assert config("c.pt", {"format": "onnx", "opset": 13}).export == ExportConfig(format="onnx", opset=13)
    assert config_from_dict({}, ["export=onnx", "export.agreement_samples=50"]).export == ExportConfig(
        format="onnx", agreement_samples=50
    )
    with pytest.raises(CertquantError, match="unknown config key 'export.speed'"):
        config("c.pt", {"speed": 1})
    with pytest.raises(CertquantError, match="opset 9 is not supported"):
        config("c.pt", {"opset": 9})
    with pytest.raises(CertquantError, match="format 'tflite' is not supported"):
        config("c.pt", "tflite")


def test_run_exports_certifies_and_reports_side_by_side(checkpoint, tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "run"
    results = run_pipeline(config(checkpoint, {"format": "onnx", "agreement_samples": 300}), out, progress=False)
    folder = out / "budget-0.015625" / "uniform"
    card, _, matches = check_card(folder / "model.onnx")
    assert matches and card["n"] == 100
    assert card["test_indices"] == expand_indices(results["provenance"]["test_indices"])  # the report writes ranges
    (row,) = results["exported"]
    agreement = json.loads((folder / "agreement.json").read_text())
    assert agreement["total"] == 300 and row["agreement"] == agreement["share"] >= 0.95
    onnx_summary = json.loads((folder / "onnx-certify" / "summary.json").read_text())
    assert row["onnx_acr"] == onnx_summary["acr"] and row["acr"] == results["rows"][1]["acr"]
    report = (out / "report.md").read_text()
    assert "Exported ONNX models, certified as onnxruntime runs them" in report
    # resume: nothing is redone, the same results
    again = run_pipeline(
        config(checkpoint, {"format": "onnx", "agreement_samples": 300}), out, resume=True, progress=False
    )
    assert again["exported"] == results["exported"]


def test_certify_runtime_onnx_certifies_the_exported_files(checkpoint, tmp_path):
    """certify.runtime onnx: FP32 and each final model are certified as their ONNX exports (onnxruntime), with the
    quantized model's certificates identical to PyTorch's (integer kernels are bit-exact); with export on, the card
    is that certification and the report shows no PyTorch certification beside it."""
    torch.set_num_threads(1)
    torch_run = run_pipeline(config(checkpoint, {}), tmp_path / "torch", progress=False)
    onnx_run = run_pipeline(config(checkpoint, "onnx", runtime="onnx"), tmp_path / "onnx", progress=False)
    folder = tmp_path / "onnx" / "budget-0.015625" / "uniform"
    assert (tmp_path / "onnx" / "fp32" / "model.onnx").is_file() and (folder / "model.onnx").is_file()
    assert not (folder / "onnx-certify").exists()  # certified once, as the file
    quantized = [json.loads(line) for line in (folder / "certify" / "certificates.jsonl").read_text().splitlines()]
    reference = tmp_path / "torch" / "budget-0.015625" / "uniform" / "certify" / "certificates.jsonl"
    expected = [json.loads(line) for line in reference.read_text().splitlines()]
    assert [(r["c_a"], r["n_a"], r["pa_lower"]) for r in quantized] == [
        (r["c_a"], r["n_a"], r["pa_lower"]) for r in expected
    ]
    assert onnx_run["rows"][1]["acr"] == torch_run["rows"][1]["acr"]
    card, _, matches = check_card(folder / "model.onnx")
    assert matches and card["acr"] == onnx_run["rows"][1]["acr"]
    (row,) = onnx_run["exported"]
    assert row["acr"] is None and row["onnx_acr"] == onnx_run["rows"][1]["acr"]
    with pytest.raises(CertquantError, match="certify.runtime must be one of torch, onnx"):
        config(checkpoint, {}, runtime="tflite")
