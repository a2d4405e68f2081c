"""certquant search on a freshly trained small CNN of the synthetic dataset (tiny n, few episodes)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from certquant.cli.main import app
from certquant.data import dataset_info, load_dataset
from certquant.models import build, save_checkpoint
from certquant.quant import Policy
from certquant.train.trainer import noisy_epoch
from cli_helpers import assert_one_line_error

runner = CliRunner()
FAST = ["--search-images", "4", "--n0", "10", "--n-p", "50", "--batch", "60", "--calib-images", "32", "--warmup", "1",
        "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """small-cnn trained one noisy epoch on 640 synthetic images, with a 500-image validation split recorded."""
    torch.set_num_threads(1)
    info = dataset_info("synthetic")
    images, labels = load_dataset("synthetic", "train")
    torch.manual_seed(0)
    model = build("small-cnn", 10, 1, 28, info.mean, info.std)
    noisy_epoch(model, images[:640], labels[:640], torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), 0.25, 32,
                0, torch.device("cpu"))
    meta = {"arch": "small-cnn", "num_classes": 10, "in_channels": 1, "input_size": 28, "mean": list(info.mean),
            "std": list(info.std), "dataset": "synthetic", "sigma": 0.25, "train_args": {"val_size": 500, "seed": 0}}
    return str(save_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt", model.eval(), meta))


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield


def _search(checkpoint, out, *extra):
    return runner.invoke(app, ["search", "--checkpoint", checkpoint, "--out", str(out), *FAST, *extra])


def test_arq_search_writes_a_loadable_best_policy_and_resumes(checkpoint, tmp_path):
    out = tmp_path / "arq"
    result = _search(checkpoint, out, "--budget", "0.03", "--episodes", "3")
    assert result.exit_code == 0, result.output
    assert "best reward" in result.output and "BitOPs" in result.output
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert len(history) == 3 and all("acr" in r["terms"] and r["bitops_fraction"] <= 0.03 for r in history)
    config = json.loads((out / "config.json").read_text())
    assert config["search_split"] == "train" and len(config["evaluator"]["search_indices"]) == 4
    policy = Policy.load(out / "best_policy.json")
    assert policy.arch == "small-cnn"

    quantized = runner.invoke(app, ["quantize", "--checkpoint", checkpoint, "--policy", str(out / "best_policy.json"),
                                    "--calib-images", "32", "--device", "cpu", "--out", str(tmp_path / "q.pt")])
    assert quantized.exit_code == 0, quantized.output

    assert_one_line_error(_search(checkpoint, out, "--budget", "0.03", "--episodes", "3"), "--resume")
    assert_one_line_error(_search(checkpoint, out, "--budget", "0.05", "--episodes", "3", "--resume"), "other arguments")
    again = _search(checkpoint, out, "--budget", "0.03", "--episodes", "3", "--resume")
    assert again.exit_code == 0, again.output
    assert len((out / "history.jsonl").read_text().splitlines()) == 3  # nothing re-run


@pytest.mark.parametrize("method", ["uniform", "random"])
def test_baselines_with_haq_reward(checkpoint, tmp_path, method):
    result = _search(checkpoint, tmp_path, "--budget", "0.015625", "--no-pin-first-last", "--method", method,
                     "--reward", "haq", "--noise-copies", "2", "--episodes", "2")
    assert result.exit_code == 0, result.output
    history = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert len(history) == (1 if method == "uniform" else 2)
    assert "noisy_accuracy" in history[0]["terms"]
    if method == "uniform":
        assert history[0]["w_bits"] == [4, 4, 4, 4]


@pytest.mark.parametrize("budget", ["0", "-0.5", "1.5"])
def test_bad_budget(checkpoint, tmp_path, budget):
    assert_one_line_error(_search(checkpoint, tmp_path, f"--budget={budget}"), "budget")


def test_unreachable_budget(checkpoint, tmp_path):
    assert_one_line_error(_search(checkpoint, tmp_path, "--budget", "0.001"), "unreachable")


def test_unknown_method(checkpoint, tmp_path):
    assert_one_line_error(_search(checkpoint, tmp_path, "--budget", "0.03", "--method", "grid"), "unknown search method")


def test_search_set_overlapping_the_test_subset(checkpoint, tmp_path):
    assert_one_line_error(_search(checkpoint, tmp_path, "--budget", "0.03", "--search-split", "test", "--test-skip", "20"),
                    "test subset")
    # a disjoint part of test is accepted: test subset = every 20th image, search set = images 1, 3, 5, 7
    result = _search(checkpoint, tmp_path, "--budget", "0.03", "--search-split", "test", "--test-skip", "20",
                     "--search-start", "1", "--search-skip", "2", "--method", "uniform")
    assert result.exit_code == 0, result.output


def test_candidates_can_be_fine_tuned(checkpoint, tmp_path):
    result = _search(checkpoint, tmp_path, "--budget", "0.03", "--method", "uniform", "--reward", "haq",
                     "--noise-copies", "2", "--finetune-steps", "2", "--finetune-batch", "8")
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["evaluator"]["finetune_steps"] == 2


def test_final_selection_writes_a_loadable_final_policy(checkpoint, tmp_path):
    out = tmp_path / "final"
    result = _search(checkpoint, out, "--budget", "0.03", "--episodes", "4", "--final-top-k", "2", "--final-images", "5")
    assert result.exit_code == 0, result.output
    selection = json.loads((out / "final_selection.json").read_text())
    best = max(selection["candidates"], key=lambda c: c["final_reward"])
    final = Policy.load(out / "final_policy.json")
    assert len(selection["candidates"]) == 2 and final.w_bits == best["w_bits"] and final.a_bits == best["a_bits"]
    assert_one_line_error(_search(checkpoint, tmp_path / "x", "--budget", "0.03", "--final-top-k", "0"),
                          "--final-top-k")
    assert_one_line_error(_search(checkpoint, tmp_path / "y", "--budget", "0.03", "--final-top-k", "2",
                                  "--search-split", "test"), "--search-split train")
