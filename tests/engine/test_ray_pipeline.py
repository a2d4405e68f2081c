"""``certquant run`` with ``engine: ray``: the stages as Ray tasks give the local engine's results, and a run started
by one engine is resumed by the other (tiny synthetic setup)."""

from __future__ import annotations

import dataclasses
import shutil

import pytest
import torch

from certquant.engine import EngineConfig
from certquant.pipeline.config import config_from_dict
from certquant.pipeline.run import run_pipeline
from certquant.train import TrainConfig, train
from run_results import without

TIMING_KEYS = ("seconds", "started", "software", "machine", "checkpoint_sha256")  # wall clock, when made
PATH_KEYS = {"search", "checkpoint", "state_dir"}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def config(tmp_path_factory):
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
    checkpoint = str(train(cfg, tmp_path_factory.mktemp("ckpt")))
    return config_from_dict(
        {
            "dataset": "synthetic",
            "checkpoint": checkpoint,
            "device": "cpu",
            "certify": {"n0": 10, "n": 100, "skip": 100, "max_images": 3, "batch": 50},
            "search": {
                "budgets": [0.015625],
                "methods": ["arq", "uniform"],
                "episodes": 3,
                "agent": {"warmup_episodes": 2},
                "search_images": 3,
                "final_images": 3,
                "n_p": 40,
            },
            "finetune": {"epochs": 1, "images": 128, "batch": 64},
            "quantize": {"calibration_images": 32},
            "engine": {"engine": "local", "threads_per_worker": 1},
        }
    )


def strip_timing(value):
    """results.json without wall-clock fields and run paths (they differ between two runs of the same work)."""
    return without(value, TIMING_KEYS, PATH_KEYS)


def test_ray_stages_give_the_local_results_and_either_engine_resumes(ray_cluster, config, tmp_path):
    local = run_pipeline(config, tmp_path / "local", progress=False)
    ray_config = dataclasses.replace(config, engine=EngineConfig(engine="ray", workers=2))
    on_ray = run_pipeline(ray_config, tmp_path / "ray", progress=False)
    assert strip_timing(on_ray) == strip_timing(local)
    assert [row["name"] for row in on_ray["rows"]] == ["FP32", "arq@0.015625", "uniform@0.015625"]

    # a local run stopped after the arq search: the Ray engine resumes it (same folder identity) to the same results
    partial = tmp_path / "partial"
    shutil.copytree(tmp_path / "local", partial)
    for stage in ("model.pt", "certify"):
        path = partial / "budget-0.015625" / "arq" / stage
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    (partial / "results.json").unlink()
    resumed = run_pipeline(ray_config, partial, resume=True, progress=False)
    assert strip_timing(resumed) == strip_timing(local)
