"""certquant search (the searches of certquant run, alone) on a freshly trained small CNN of the synthetic dataset
(tiny n, few episodes): the same settings give the same search as certquant run; overrides; bad input."""

from __future__ import annotations

import json

import pytest
import torch
from cli_helpers import assert_one_line_error
from typer.testing import CliRunner

from certquant.cli.main import app
from certquant.data import dataset_info, load_dataset
from certquant.models import build, save_checkpoint
from certquant.quant import Policy
from certquant.train.trainer import noisy_epoch

runner = CliRunner()
FAST = [
    "dataset=synthetic",
    "device=cpu",
    "search.search_images=4",
    "certify.n0=10",
    "certify.n=60",
    "certify.max_images=2",
    "search.n_p=50",
    "certify.batch=60",
    "search.calib_images=32",
    "search.agent.warmup_episodes=1",
    "search.episodes=3",
    "search.budgets=[0.03]",
    "search.methods=[arq]",
    "finetune.images=64",
    "quantize.calibration_images=32",
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """small-cnn trained one noisy epoch on 640 synthetic images, with a 500-image validation split recorded."""
    torch.set_num_threads(1)
    info = dataset_info("synthetic")
    images, labels = load_dataset("synthetic", "train")
    torch.manual_seed(0)
    model = build("small-cnn", 10, 1, 28, info.mean, info.std)
    noisy_epoch(
        model,
        images[:640],
        labels[:640],
        torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
        0.25,
        32,
        0,
        torch.device("cpu"),
    )
    meta = {
        "arch": "small-cnn",
        "num_classes": 10,
        "in_channels": 1,
        "input_size": 28,
        "mean": list(info.mean),
        "std": list(info.std),
        "dataset": "synthetic",
        "sigma": 0.25,
        "train_args": {"val_size": 500, "seed": 0},
    }
    return str(save_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt", model.eval(), meta))


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield


def _invoke(command, checkpoint, out, *extra):
    return runner.invoke(app, [command, "--out", str(out), "--no-progress", f"checkpoint={checkpoint}", *FAST, *extra])


def _untimed(value):
    """``value`` without wall-clock fields (they differ between two runs of the same work)."""
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if not k.startswith("seconds")}
    return value


def _history(folder):
    return [_untimed(json.loads(line)) for line in (folder / "history.jsonl").read_text().splitlines()]


def test_search_writes_a_loadable_best_policy_and_resumes(checkpoint, tmp_path):
    out = tmp_path / "arq"
    result = _invoke("search", checkpoint, out)
    assert result.exit_code == 0, result.output
    assert "BitOPs" in result.output
    folder = out / "budget-0.03" / "arq" / "search"
    history = _history(folder)
    assert len(history) == 3 and all("acr" in r["terms"] and r["bitops_fraction"] <= 0.03 for r in history)
    identity = json.loads((folder / "run.json").read_text())["identity"]
    assert identity["kind"] == "search" and len(identity["evaluator"]["search_indices"]) == 4
    policy = Policy.load(folder / "best_policy.json")
    assert policy.arch == "small-cnn"

    quantized = runner.invoke(
        app,
        [
            "quantize",
            "--checkpoint",
            checkpoint,
            "--policy",
            str(folder / "best_policy.json"),
            "--calib-images",
            "32",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "q.pt"),
        ],
    )
    assert quantized.exit_code == 0, quantized.output

    assert_one_line_error(_invoke("search", checkpoint, out), "--resume")
    assert_one_line_error(
        _invoke("search", checkpoint, out, "search.n_p=40", "--resume"), "other settings", "n_p: 50 there, 40 now"
    )
    again = _invoke("search", checkpoint, out, "--resume")
    assert again.exit_code == 0, again.output
    assert len(_history(folder)) == 3  # nothing re-run


def test_search_and_run_give_the_same_search(checkpoint, tmp_path):
    """One schema, one code path: the searches of `certquant run` are those of `certquant search` with the same
    settings, episode by episode (policies, rewards, every term)."""
    methods = "search.methods=[arq,uniform]"
    assert _invoke("search", checkpoint, tmp_path / "s", methods).exit_code == 0
    result = _invoke("run", checkpoint, tmp_path / "r", methods)
    assert result.exit_code == 0, result.output
    for method in ("arq", "uniform"):
        searched = _history(tmp_path / "s" / "budget-0.03" / method / "search")
        ran = _history(tmp_path / "r" / "budget-0.03" / method / "search")
        assert searched == ran and len(searched) == (3 if method == "arq" else 1)
    for name in ("results.json", "report.md"):
        assert (tmp_path / "r" / name).is_file()


@pytest.mark.parametrize("method", ["uniform", "random"])
def test_baselines_with_haq_reward(checkpoint, tmp_path, method):
    result = _invoke(
        "search",
        checkpoint,
        tmp_path,
        "search.budgets=[0.015625]",
        f"search.methods=[{method}]",
        "search.baseline_reward=haq",
        "search.noise_copies=2",
        "search.episodes=2",
    )
    assert result.exit_code == 0, result.output
    history = _history(tmp_path / "budget-0.015625" / method / "search")
    assert len(history) == (1 if method == "uniform" else 2)
    assert "noisy_accuracy" in history[0]["terms"] and history[0]["terms"]["reward_kind"] == "haq"
    if method == "uniform":
        assert history[0]["w_bits"] == [4, 4, 4, 4]


@pytest.mark.parametrize(
    "override,fragment",
    [
        ("search.budgets=[0]", "budget 0"),
        ("search.budgets=[-0.5]", "budget -0.5"),
        ("search.budgets=[1.5]", "budget 1.5"),
        ("search.budgets=[0.001]", "unreachable"),
        ("search.methods=[grid]", "unknown or no method(s) grid"),
        ("search.n_q=3", "unknown config key 'search.n_q'"),
        ("certify.n=lots", "could not be converted to Integer"),
        ("search.final_top_k=0", "final_top_k"),
        ("sigma=0", "sigma must be > 0"),
        ("n_p", "not a KEY=VALUE override"),
    ],
)
def test_bad_settings_are_refused_before_anything_is_written(checkpoint, tmp_path, override, fragment):
    out = tmp_path / "out"
    assert_one_line_error(_invoke("search", checkpoint, out, override), fragment)
    assert_one_line_error(_invoke("run", checkpoint, out, override), fragment)
    assert not out.exists()  # a refused run leaves --out usable (issue 16)


def test_candidates_can_be_fine_tuned(checkpoint, tmp_path):
    result = _invoke(
        "search",
        checkpoint,
        tmp_path,
        "search.methods=[uniform]",
        "search.baseline_reward=haq",
        "search.noise_copies=2",
        "search.finetune_steps=2",
        "search.finetune_batch=8",
    )
    assert result.exit_code == 0, result.output
    identity = json.loads((tmp_path / "budget-0.03" / "uniform" / "search" / "run.json").read_text())["identity"]
    assert identity["evaluator"]["finetune_steps"] == 2


def test_final_selection_writes_a_loadable_final_policy(checkpoint, tmp_path):
    out = tmp_path / "final"
    result = _invoke(
        "search",
        checkpoint,
        out,
        "search.episodes=4",
        "search.final_top_k=2",
        "search.final_images=5",
        "search.final_uniform_fallback=false",
    )
    assert result.exit_code == 0, result.output
    folder = out / "budget-0.03" / "arq" / "search"
    selection = json.loads((folder / "final_selection.json").read_text())
    best = max(selection["candidates"], key=lambda c: c["final_reward"])
    final = Policy.load(folder / "final_policy.json")
    assert len(selection["candidates"]) == 2 and final.w_bits == best["w_bits"] and final.a_bits == best["a_bits"]
