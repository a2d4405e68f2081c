"""bench_sequential end to end at a tiny size: the settings are chosen on held-out validation images (never the
test run's), the chosen settings are the fewest samples within the allowed loss, the test rows use them, and the
real sequential code decides as the replay from stored predictions."""

from __future__ import annotations

import json

from typer.testing import CliRunner

import bench_sequential
from certquant.cli.main import app
from certquant.models import load_checkpoint
from certquant.search.job import validation_indices


def test_settings_chosen_on_validation_images(tiny_checkpoint, tmp_path):
    run = tmp_path / "run"
    made = CliRunner().invoke(
        app,
        ["certify", "--checkpoint", tiny_checkpoint, "--skip", "50", "--max", "4", "--n", "800", "--n0", "20",
         "--batch", "200", "--keep-cache", "--no-progress", "--out", str(run)],
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    argv = [
        "--run", str(run), "--checkpoint", tiny_checkpoint, "--radii", "0.1", "0.25", "--also-n", "400",
        "--policies", "W8A8", "--np", "200", "--irs-images", "3", "--check-images", "2", "--time-n", "200",
        "--validation", "5", "--growths", "1.5", "2", "--final-shares", "0.5", "0.9", "--np-max-multiples", "1", "2",
        "--curtails", "none", "0.1",
        "--max-loss", "0.2", "--work", str(tmp_path / "work"), "--results", str(tmp_path / "results"),
        "--name", "seq-tiny",
    ]  # fmt: skip
    data = bench_sequential.main(argv)
    _, info = load_checkpoint(tiny_checkpoint)
    validation = sorted(
        json.loads(line)["index"]
        for line in (tmp_path / "work" / "validation-run-5" / "certificates.jsonl").read_text().splitlines()
    )
    assert validation == validation_indices(info, 5, 0)  # the checkpoint's held-out images, not the test run's
    grid = data["tuning"]["certify"]
    assert len(grid) == 8 and sum(r["chosen"] for r in grid) == 1
    chosen = next(r for r in grid if r["chosen"])
    allowed = [r for r in grid if r["largest_loss"] <= 0.2 + 1e-12]
    assert chosen["samples_per_image"] == min(r["samples_per_image"] for r in allowed)
    assert [data["settings"][k] for k in ("growth", "final_share", "curtail")] == [
        chosen["growth"],
        chosen["final_share"],
        chosen["curtail"],
    ]
    irs = data["tuning"]["irs"]
    best = next(r for r in irs if r["chosen"])
    assert best["largest_loss"] == min(r["largest_loss"] for r in irs)
    assert data["irs_settings"]["n_p_max"] == best["n_p_max"] and data["irs"]["W8A8"]["n_p_max"] == best["n_p_max"]
    # the replay from stored predictions is what the real code decides, with the chosen settings
    assert data["check"]["identical_decisions"] and data["irs"]["W8A8"]["check"]["identical_decisions"]
    assert data["rows"]["sequential"]["samples"] <= data["rows"]["fixed-n 800"]["samples"]
    assert "chosen on 5 held-out validation images" in (tmp_path / "results" / "seq-tiny.md").read_text()
