"""Fault injection: `certquant run` killed with SIGKILL (kill -9) at 10 random moments of one run and resumed with
--resume each time gives the results of an uninterrupted run (timings and paths aside). Every stage writes through
``RunFolder`` (atomic files, fsynced JSONL lines, identity checked on resume), so no moment may lose or corrupt one."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from certquant.train import TrainConfig, train
from run_results import without

KILLS = 10
# wall-clock fields, the machine, and checkpoint hashes (a quantized checkpoint records when it was made)
TIMING_KEYS = ("seconds", "started", "software", "created", "machine", "checkpoint_sha256")
PATH_KEYS = {"search", "checkpoint", "state_dir", "checkpoint_path", "base_run"}


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fault")
    checkpoint = train(
        TrainConfig(
            dataset="synthetic",
            model="small-cnn",
            sigma=0.25,
            epochs=1,
            lr=0.05,
            val_size=200,
            train_limit=600,
            device="cpu",
        ),
        root / "ckpt",
    )
    config = {
        "dataset": "synthetic",
        "checkpoint": str(checkpoint),
        "device": "cpu",
        "certify": {"n0": 10, "n": 200, "skip": 100, "max_images": 4, "batch": 50},
        "search": {
            "budgets": [0.015625],
            "methods": ["arq", "uniform"],
            "episodes": 4,
            "search_images": 3,
            "final_images": 3,
            "n_p": 40,
            "agent": {"warmup_episodes": 2},
        },
        "finetune": {"epochs": 2, "images": 256, "batch": 64},
        "quantize": {"calibration_images": 32},
    }
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _command(config: Path, out: Path, resume: bool) -> list[str]:
    return [
        sys.executable,
        "-m",
        "certquant.cli.main",
        "run",
        "--config",
        str(config),
        "--out",
        str(out),
        "--no-progress",
        *(["--resume"] if resume else []),
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _stable(value):
    """results.json without wall-clock fields and run paths (they differ between two runs of the same work)."""
    return without(value, TIMING_KEYS, PATH_KEYS)


def _run_straight(config: Path, out: Path) -> tuple[float, float]:
    """The uninterrupted run; returns (start-up seconds until run.json exists, total seconds)."""
    started, startup = time.monotonic(), None
    process = subprocess.Popen(
        _command(config, out, False), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    while process.poll() is None:
        if startup is None and (out / "run.json").exists():
            startup = time.monotonic() - started
        time.sleep(0.02)
    assert process.returncode == 0, process.stderr.read().decode()[-2000:]
    duration = time.monotonic() - started
    return (startup if startup is not None else 0.0), duration


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_gives_identical_results(config_file, tmp_path):
    startup, duration = _run_straight(config_file, tmp_path / "straight")

    # Each attempt pays the start-up again and then gets a random slice of at most a fifth of the run's work, so the
    # kills fall at moments spread over the whole run however loaded the machine is (a slice of a fixed share of the
    # total lets the resumed attempts finish before their moment once most work is done).
    out, rng, kills = tmp_path / "killed", random.Random(0), 0
    for _ in range(KILLS):
        process = subprocess.Popen(
            _command(config_file, out, (out / "run.json").exists()),
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            process.wait(timeout=startup + rng.uniform(0.02, 0.2) * (duration - startup))
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
            kills += 1
        else:
            assert process.returncode == 0, process.stderr.read().decode()[-2000:]
    finished = subprocess.run(_command(config_file, out, True), env=_env(), capture_output=True)
    assert finished.returncode == 0, finished.stderr.decode()[-2000:]
    assert kills >= 3  # attempts really interrupted mid-run (on a loaded machine some finish before their moment)

    straight = json.loads((tmp_path / "straight" / "results.json").read_text())
    resumed = json.loads((out / "results.json").read_text())
    assert _stable(resumed) == _stable(straight)
