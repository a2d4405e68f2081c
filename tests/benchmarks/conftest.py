"""Shared by the benchmark tests: the benchmarks folder on sys.path, a tiny noise-trained synthetic checkpoint and a
tiny run config (every size a few samples, so a benchmark runs end to end in seconds)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml

from certquant.train import TrainConfig, train

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> str:
    torch.set_num_threads(1)
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


@pytest.fixture(scope="session")
def tiny_config(tiny_checkpoint, tmp_path_factory) -> Path:
    """A run config (YAML) at the smallest sizes that still exercise every stage."""
    path = tmp_path_factory.mktemp("config") / "tiny.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "dataset": "synthetic",
                "checkpoint": tiny_checkpoint,
                "device": "cpu",
                "certify": {"n0": 10, "n": 100, "skip": 100, "max_images": 3, "batch": 50},
                "search": {
                    "budgets": [0.0125],
                    "methods": ["uniform", "arq", "haq", "random"],
                    "episodes": 3,
                    "agent": {"warmup_episodes": 2},
                    "search_images": 4,
                    "final_images": 4,
                    "n_p": 40,
                    "n_fp": 80,
                    "noise_copies": 4,
                    "calib_images": 16,
                },
                "finetune": {"epochs": 1, "images": 128, "batch": 64},
                "quantize": {"calibration_images": 32},
            }
        )
    )
    return path


@pytest.fixture(scope="session")
def tiny_truth(tiny_config, tmp_path_factory) -> Path:
    """A truth pool at the tiny size: 4 policies at budget 0.0125, 2 fine-tune seeds, 5 held-out images."""
    import bench_truth

    root = tmp_path_factory.mktemp("truth")
    bench_truth.main(
        [
            "--config",
            str(tiny_config),
            "--budget",
            "0.0125",
            "--policies",
            "4",
            "--replicates",
            "2",
            "--images",
            "5",
            "--work",
            str(root / "work"),
            "--results",
            str(root),
            "--name",
            "truth-tiny",
            "--no-progress",
        ]
    )
    return root / "truth-tiny.json"
