"""bench_fidelity: its statistics on exact cases, and the benchmark end to end at a tiny size (every reward scored
by the search's own evaluator, resumed without re-scoring, the replicate ceiling, the result files)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

import bench_fidelity
from certquant.utils import read_jsonl


def test_fidelity_of_a_perfect_and_a_reversed_ranking():
    truth = [0.50, 0.52, 0.55, 0.58]
    perfect = bench_fidelity.fidelity([1, 2, 3, 4], truth, truth, rounds=200)
    assert perfect["kendall_tau_acr"] == pytest.approx(1) and perfect["spearman_acr"] == pytest.approx(1)
    assert perfect["regret_acr"] == 0
    reversed_ = bench_fidelity.fidelity([4, 3, 2, 1], truth, truth, rounds=200)
    assert reversed_["kendall_tau_acr"] == pytest.approx(-1) and reversed_["regret_acr"] == pytest.approx(0.08)


def test_regret_averages_the_policies_tied_at_the_top():
    assert bench_fidelity.regret(np.array([1.0, 3.0, 3.0]), np.array([0.6, 0.5, 0.4])) == pytest.approx(0.15)


def test_bootstrap_interval_is_reproducible_and_brackets_the_estimate():
    rng = np.random.default_rng(0)
    truth = rng.normal(size=30)
    reward = truth + rng.normal(scale=0.8, size=30)
    a = bench_fidelity.fidelity(reward, truth, truth, rounds=500, seed=1)
    b = bench_fidelity.fidelity(reward, truth, truth, rounds=500, seed=1)
    assert a == b
    low, high = a["kendall_tau_acr_ci95"]
    assert low < a["kendall_tau_acr"] < high and high - low < 1
    assert bench_fidelity.fidelity([1, 1, 1], [1, 2, 3], [1, 2, 3], rounds=50)["kendall_tau_acr"] is None


def test_fidelity_end_to_end(tiny_truth, tiny_config, tmp_path):
    args = [
        "--truth",
        str(tiny_truth),
        "--config",
        str(tiny_config),
        "--rewards",
        "haq",
        "scratch",
        "paired",
        "--finetune-steps",
        "0",
        "2",
        "--bootstrap",
        "50",
        "--work",
        str(tmp_path / "work"),
        "--results",
        str(tmp_path),
        "--name",
        "fidelity-tiny",
        "--no-progress",
    ]
    data = bench_fidelity.main(args)
    rows = {r["name"]: r for r in data["rows"]}
    assert sorted(rows) == sorted(["haq", "scratch", "paired", "haq+ft2", "scratch+ft2", "paired+ft2"])
    # forward samples per candidate: 4 search images x (n0 10 + n_p 40) / n_p 40 / 4 noise copies
    assert rows["scratch"]["forward_samples_per_candidate"] == 4 * 50
    assert rows["paired"]["forward_samples_per_candidate"] == 4 * 40
    assert rows["haq"]["forward_samples_per_candidate"] == 4 * 4
    assert rows["paired+ft2"]["finetune_samples_per_candidate"] == 2 * 64
    assert rows["scratch"]["rewards"] != rows["scratch+ft2"]["rewards"]  # fine-tuning changes the candidates
    assert data["ceiling"] is not None and len(rows["haq"]["rewards"]) == 4
    saved = json.loads((tmp_path / "fidelity-tiny.json").read_text())
    assert [r["name"] for r in saved["rows"]] == [r["name"] for r in data["rows"]]
    assert "| reward |" in (tmp_path / "fidelity-tiny.md").read_text()
    assert (tmp_path / "fidelity-tiny.png").stat().st_size > 0
    # resumed: nothing re-scored, the same rewards
    lines = len(list(read_jsonl(tmp_path / "work" / "scratch" / "scores.jsonl")))
    again = bench_fidelity.main(args)
    assert len(list(read_jsonl(tmp_path / "work" / "scratch" / "scores.jsonl"))) == lines == 4
    assert [r["rewards"] for r in again["rows"]] == [r["rewards"] for r in data["rows"]]


def test_truth_of_another_checkpoint_is_refused(tiny_truth, tiny_config, tmp_path):
    truth = json.loads(tiny_truth.read_text())
    truth["provenance"]["checkpoint_sha256"] = "0" * 64
    other = tmp_path / "truth-other.json"
    other.write_text(json.dumps(truth))
    with pytest.raises(SystemExit, match="^error: the truth pool was made with another checkpoint"):
        bench_fidelity.main(
            [
                "--truth",
                str(other),
                "--config",
                str(tiny_config),
                "--work",
                str(tmp_path / "w"),
                "--results",
                str(tmp_path),
            ]
        )


def test_rewards_are_scored_from_the_pool_folder_before_the_truth_is_done(tiny_truth, tiny_config, tmp_path):
    """--truth WORK (the truth pool's folder) scores every row and writes no result file; the command with the finished
    truth then re-scores nothing and gives the rewards of a straight run."""
    common = ["--config", str(tiny_config), "--rewards", "haq", "scratch", "--finetune-steps", "0", "--bootstrap"]
    common += ["20", "--results", str(tmp_path), "--name", "fid", "--no-progress"]
    early = bench_fidelity.main(["--truth", str(tiny_truth.parent / "work"), "--work", str(tmp_path / "w"), *common])
    assert early == {"scored": ["haq", "scratch"]} and not (tmp_path / "fid.json").exists()
    assert len(list(read_jsonl(tmp_path / "w" / "scratch" / "scores.jsonl"))) == 4
    stamp = (tmp_path / "w" / "scratch" / "scores.jsonl").stat().st_mtime_ns
    done = bench_fidelity.main(["--truth", str(tiny_truth), "--work", str(tmp_path / "w"), *common])
    assert (tmp_path / "w" / "scratch" / "scores.jsonl").stat().st_mtime_ns == stamp
    straight = bench_fidelity.main(["--truth", str(tiny_truth), "--work", str(tmp_path / "w2"), *common])
    assert [r["rewards"] for r in done["rows"]] == [r["rewards"] for r in straight["rows"]]
    with pytest.raises(SystemExit, match="^error: .*neither a truth result file nor a truth pool folder"):
        bench_fidelity.main(["--truth", str(tmp_path), "--work", str(tmp_path / "w3"), *common])


def test_row_specs_round_trip_and_bad_specs_are_refused():
    for spec in ("haq", "paired@16", "paired@16+fp1000", "scratch+ft50", "irs-one-sided@64+fp800+ft5+race0.05"):
        assert bench_fidelity.Row.parse(spec).name == spec
    assert bench_fidelity.Row.parse("paired@16+race0.1") == bench_fidelity.Row("paired", 0, 16, 0.1)
    with pytest.raises(bench_fidelity.CertquantError, match="is not REWARD"):
        bench_fidelity.Row.parse("paired@x")


RACE_SETTINGS = ("search.race_batch=1", "search.search_images=8")  # still disjoint from the truth images


def test_rows_with_their_own_n_p_and_racing(tiny_truth, tiny_config, tmp_path):
    """A row's n_p sets its samples per image; a racing row scores fewer images of a candidate that cannot beat the
    best reward so far, and never reports a raced-out reward above it."""
    args = ["--truth", str(tiny_truth), "--config", str(tiny_config), "--rewards", "--rows", "scratch@20"]
    args += ["scratch+race0.9", "--bootstrap", "20", "--work", str(tmp_path / "w"), "--results", str(tmp_path)]
    data = bench_fidelity.main([*args, "--name", "fid", "--no-progress", *RACE_SETTINGS])
    rows = {r["name"]: r for r in data["rows"]}
    assert rows["scratch@20"]["n_p"] == 20
    assert rows["scratch@20"]["forward_samples_per_candidate"] == 8 * (10 + 20)
    scores = list(read_jsonl(tmp_path / "w" / "scratch+race0.9" / "scores.jsonl"))
    best = scores[0]["reward"]
    for s in scores[1:]:
        if s["raced_out"]:
            assert s["images_scored"] < 8 and s["reward"] <= best
        best = max(best, s["reward"])
    assert any(s["raced_out"] for s in scores)  # the race did stop a candidate here
    assert rows["scratch+race0.9"]["raced_out_share"] == np.mean([bool(s["raced_out"]) for s in scores])


def test_cost_fidelity_front_and_the_tau_gap_to_the_best():
    rows = [
        {"name": "cheap", "cost_per_candidate": 1.0, "kendall_tau_acr": 0.2},
        {"name": "dominated", "cost_per_candidate": 2.0, "kendall_tau_acr": 0.1},
        {"name": "good", "cost_per_candidate": 5.0, "kendall_tau_acr": 0.6},
        {"name": "costly-equal", "cost_per_candidate": 9.0, "kendall_tau_acr": 0.6},
        {"name": "unranked", "cost_per_candidate": 0.1, "kendall_tau_acr": None},
    ]
    assert bench_fidelity.cost_fidelity_front(rows) == {"cheap", "good"}
    # cost: scoring samples + 3 per fine-tuning sample + the one-time FP32 reference over the search's episodes
    assert bench_fidelity.candidate_cost(1600, 3200, 20_000, 150) == pytest.approx(1600 + 9600 + 20_000 / 150)
    settings = SimpleNamespace(noise_copies=16, n_p=400, n_fp=100)
    assert bench_fidelity.fp32_forward_samples("haq", settings, 100, 10) == 160
    assert bench_fidelity.fp32_forward_samples("scratch", settings, 100, 10) == 5000
    assert bench_fidelity.fp32_forward_samples("paired-margin", settings, 100, 10) == 2000
    truth = np.arange(20.0)
    assert bench_fidelity.tau_gap(truth, truth, truth, rounds=100) == [0.0, 0.0]  # a row against itself
    low, high = bench_fidelity.tau_gap(-truth, truth, truth, rounds=100)
    assert low == pytest.approx(-2.0) and high == pytest.approx(-2.0)  # reversed against perfect: always 2 below
