"""Every path a user gives goes through one check: a missing file, a folder, a text file, another binary format, an
empty file and a truncated checkpoint give one line naming what is wrong and exit status 2, in every command that
takes a checkpoint (and the other inputs: policies, configs, run folders)."""

from __future__ import annotations

import pytest
import torch
from cli_helpers import assert_one_line_error
from typer.testing import CliRunner

from certquant.cli.main import app
from certquant.data import dataset_info
from certquant.models import build, save_checkpoint

runner = CliRunner()

# bad checkpoint -> what the one line must say about it
BAD_CHECKPOINTS = {
    "missing": "not found",
    "folder": "is a folder, not a file",
    "passwd": "is a text file, not a certquant checkpoint",
    "binary": "is a file of another format, not a certquant checkpoint",
    "empty": "is empty",
    "truncated": "is truncated or damaged",
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A good checkpoint, an IRS base run certified from it, and one file of every bad kind."""
    root = tmp_path_factory.mktemp("paths")
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
    good = save_checkpoint(root / "good.pt", model, meta)
    base_run = root / "base_run"
    result = runner.invoke(
        app,
        [
            "certify",
            "--checkpoint",
            str(good),
            "--n0",
            "10",
            "--n",
            "50",
            "--batch",
            "50",
            "--max",
            "1",
            "--keep-cache",
            "--no-progress",
            "--device",
            "cpu",
            "--out",
            str(base_run),
        ],
    )
    assert result.exit_code == 0, result.output
    bad = {
        "missing": root / "missing.pt",
        "folder": root / "a_folder",
        "passwd": root / "passwd",
        "binary": root / "binary.pt",
        "empty": root / "empty.pt",
        "truncated": root / "truncated.pt",
    }
    bad["folder"].mkdir()
    bad["passwd"].write_text("root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n")
    bad["binary"].write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 4)
    bad["empty"].write_bytes(b"")
    data = good.read_bytes()
    bad["truncated"].write_bytes(data[: len(data) // 2])
    return {"root": root, "good": good, "base_run": base_run, "bad": bad}


def _commands(files, checkpoint, tmp_path) -> dict[str, list[str]]:
    """Every command that takes a checkpoint, with ``checkpoint`` in that place and otherwise valid arguments."""
    config = tmp_path / "run.yaml"
    config.write_text(f"dataset: synthetic\ncheckpoint: '{checkpoint}'\n")
    out = str(tmp_path / "out")
    return {
        "certify": ["certify", "--checkpoint", checkpoint, "--n", "50", "--out", out],
        "certify-incremental": [
            "certify",
            "--checkpoint",
            checkpoint,
            "--incremental-from",
            str(files["base_run"]),
            "--np",
            "20",
            "--device",
            "cpu",
            "--out",
            out,
        ],
        "predict": ["predict", "--checkpoint", checkpoint, "--n", "50", "--out", out],
        "cost": ["cost", "--checkpoint", checkpoint, "--uniform", "4"],
        "quantize": ["quantize", "--checkpoint", checkpoint, "--uniform", "4", "--out", str(tmp_path / "q.pt")],
        "search": ["search", f"checkpoint={checkpoint}", "dataset=synthetic", "--out", out],
        "evaluate": ["evaluate", "--checkpoint", checkpoint],
        "run": ["run", "--config", str(config), "--out", out],
    }


COMMANDS = ["certify", "certify-incremental", "predict", "cost", "quantize", "search", "evaluate", "run"]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("kind", list(BAD_CHECKPOINTS))
def test_every_command_names_what_is_wrong_with_a_checkpoint(files, tmp_path, command, kind):
    path = str(files["bad"][kind])
    result = runner.invoke(app, _commands(files, path, tmp_path)[command])
    assert_one_line_error(result, f"checkpoint '{path}' {BAD_CHECKPOINTS[kind]}")
    assert not (tmp_path / "q.pt").exists()


def test_a_damaged_checkpoint_is_named_in_whole_words(files, tmp_path):
    """An intact zip whose pickle is damaged reaches torch.load: the reason is torch's own, never cut mid-word."""
    data = bytearray(files["good"].read_bytes())
    start = data.index(b"data.pkl") + 200
    data[start : start + 40] = b"A" * 40
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(bytes(data))
    result = runner.invoke(app, ["cost", "--checkpoint", str(damaged), "--uniform", "4"])
    assert_one_line_error(result, f"checkpoint '{damaged}' is corrupt or not a certquant checkpoint (")
    assert result.output.rstrip().endswith("): re-create it") and "weights_only" not in result.output


def test_good_checkpoint_still_works(files, tmp_path):
    result = runner.invoke(app, ["cost", "--checkpoint", str(files["good"]), "--uniform", "4"])
    assert result.exit_code == 0 and "uniform W4A4" in result.output, result.output


def test_other_input_paths(files, tmp_path):
    """Policies, configs, base runs and run folders go through the same check."""
    good, bad = str(files["good"]), files["bad"]
    for policy, fragment in (
        (bad["missing"], "not found"),
        (bad["folder"], "is a folder, not a file"),
        (bad["binary"], "is a binary file, not text"),
        (bad["empty"], "is empty"),
        (bad["passwd"], "not valid JSON"),
    ):
        assert_one_line_error(
            runner.invoke(app, ["cost", "--checkpoint", good, "--policy", str(policy)]), f"'{policy}'", fragment
        )
    for config, fragment in (
        (bad["folder"], "is a folder, not a file"),
        (bad["binary"], "is a binary file, not text"),
        (bad["missing"], "not found"),
    ):
        assert_one_line_error(
            runner.invoke(app, ["run", "--config", str(config), "--out", str(tmp_path / "o")]),
            f"config '{config}' {fragment}",
        )
    assert_one_line_error(
        runner.invoke(
            app,
            [
                "certify",
                "--checkpoint",
                good,
                "--incremental-from",
                str(bad["passwd"]),
                "--np",
                "20",
                "--out",
                str(tmp_path / "o"),
            ],
        ),
        f"base run '{bad['passwd']}' is a file, not a folder",
    )
    assert_one_line_error(
        runner.invoke(app, ["analyze", str(bad["missing"])]), f"certify run '{bad['missing']}' not found"
    )
    assert_one_line_error(runner.invoke(app, ["report", str(bad["passwd"])]), f"run folder '{bad['passwd']}' is a file")
    assert not (tmp_path / "o").exists()
