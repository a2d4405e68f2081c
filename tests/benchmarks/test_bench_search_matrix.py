"""The search benchmark across seeds (bench_search.py --seeds, search_matrix.py): paired differences and intervals
over seeds on exact cases, and the whole matrix end to end at a tiny size (2 seeds, 4 methods)."""

from __future__ import annotations

import json

import pytest
from scipy.stats import t as student_t

import bench_search
import search_matrix
from certquant.utils.errors import CertquantError


def test_paired_difference_is_the_mean_over_seeds_of_per_image_means():
    arq = {0: {1: 0.5, 2: 0.6, 3: 0.9}, 1: {1: 0.4, 2: 0.4}, 2: {1: 0.7, 2: 0.7}}
    base = {0: {1: 0.4, 2: 0.5}, 1: {1: 0.5, 2: 0.3}, 2: {1: 0.6, 2: 0.6}}  # image 3 of seed 0 is not shared
    d = search_matrix.paired_difference(arq, base)
    assert d["per_seed"] == pytest.approx({0: 0.1, 1: 0.0, 2: 0.1})
    assert d["mean"] == pytest.approx(0.2 / 3)
    sd = (((0.1 - 0.2 / 3) ** 2 * 2 + (0.2 / 3) ** 2) / 2) ** 0.5
    half = student_t.ppf(0.975, 2) * sd / 3**0.5
    assert d["ci95"] == pytest.approx([0.2 / 3 - half, 0.2 / 3 + half])
    assert d["verdict"] == "tied"  # the interval includes 0


def test_verdicts():
    assert search_matrix.verdict([0.001, 0.01]) == "ARQ better"
    assert search_matrix.verdict([-0.01, -0.001]) == "ARQ worse"
    assert search_matrix.verdict([-0.01, 0.001]) == "tied"
    assert search_matrix.verdict(None) == "one seed: no interval"


def test_search_time_ratio_is_per_seed_with_an_interval_over_seeds():
    def run(seed, method, seconds):
        return {"seed": seed, "method": method, "search_cost_seconds": seconds}

    arq = [run(0, "arq", 90.0), run(1, "arq", 120.0), run(2, "arq", 50.0)]
    haq = [run(0, "haq", 100.0), run(1, "haq", 100.0), run(3, "haq", 70.0)]  # seed 2 / 3 ran one method only
    assert search_matrix.seed_ratios(arq, haq, "search_cost_seconds") == pytest.approx({0: 0.9, 1: 1.2})
    ratios = [0.9, 1.2]
    half = student_t.ppf(0.975, 1) * (sum((r - 1.05) ** 2 for r in ratios) ** 0.5) / 2**0.5
    assert search_matrix.interval(ratios)["ci95"] == pytest.approx([1.05 - half, 1.05 + half])


def test_seed_overrides_vary_search_calibration_and_finetune_only():
    assert search_matrix.seed_overrides(2) == ["search.seed=2", "quantize.seed=2", "finetune.seed=2"]


def test_matrix_end_to_end(tiny_config, tmp_path, capsys):
    bench_search.main(
        [
            "--config",
            str(tiny_config),
            "--budgets",
            "0.0125",
            "--seeds",
            "0",
            "1",
            "--work",
            str(tmp_path / "work"),
            "--results",
            str(tmp_path),
            "--name",
            "search-tiny",
            "--set",
            "certify.max_images=2",
        ]
    )
    data = json.loads((tmp_path / "search-tiny.json").read_text())
    # FP32 is certified once: seed 1 resumes from seed 0's certificates (the same model, test images and noise)
    assert "seed 1: FP32's certificates copied from" in capsys.readouterr().out
    fp32 = [
        tmp_path / "work" / f"seed-{s}" / "budgets-0.0125" / "fp32" / "certify" / "certificates.jsonl" for s in (0, 1)
    ]
    assert fp32[0].read_text() == fp32[1].read_text()
    assert (tmp_path / "search-tiny.png").stat().st_size > 0
    report = (tmp_path / "search-tiny.md").read_text()
    assert "![ACR vs BitOPs](search-tiny.png)" in report
    assert "on 2 test images" in report  # counted from the compact index set
    rows = {r["method"]: r for r in data["rows"]}
    assert sorted(rows) == ["arq", "haq", "random", "uniform"]
    assert all(r["seeds"] == [0, 1] and r["acr"]["n"] == 2 and r["acr"]["ci95"] is not None for r in rows.values())
    assert sorted(d["baseline"] for d in data["differences"]) == ["haq", "random", "uniform"]
    assert all(d["seeds"] == 2 for d in data["differences"])
    assert data["search_time"][0]["ratio"] > 0
    assert sorted(data["search_time"][0]["ratio_per_seed"]) == ["0", "1"]  # JSON keys
    assert data["search_time"][0]["ratio_ci95"] is not None
    assert len(data["points"]) == 8
    # each seed is its own run with its own search seed; the test subset is the same
    ids = [
        json.loads((tmp_path / "work" / f"seed-{s}" / "budgets-0.0125" / "run.json").read_text())["identity"]
        for s in (0, 1)
    ]
    assert [i["config"]["search"]["seed"] for i in ids] == [0, 1]
    assert [i["config"]["finetune"]["seed"] for i in ids] == [0, 1]
    assert ids[0]["test_indices"] == ids[1]["test_indices"] and len(ids[0]["test_indices"]) == 2  # --set applied
    # a finished seed is not resumed (its models, not committed with benchmarks/state, are not re-made) ...
    finished = tmp_path / "work" / "seed-0" / "budgets-0.0125"
    (finished / "budget-0.0125" / "arq" / "model.pt").unlink()
    again = ["--config", str(tiny_config), "--budgets", "0.0125", "--work", str(tmp_path / "work"), "--run-only"]
    bench_search.main([*again, "--seeds", "0", "--set", "certify.max_images=2"])
    assert not (finished / "budget-0.0125" / "arq" / "model.pt").exists()
    assert "finished, not run again" in capsys.readouterr().out
    # ... and one made with other settings is still refused
    with pytest.raises(CertquantError, match="other settings"):
        bench_search.main([*again, "--seeds", "0", "--set", "certify.max_images=3"])
    # the report alone, from the finished runs, is the same
    bench_search.main(
        [
            "--config",
            str(tiny_config),
            "--seeds",
            "--report-only",
            "--work",
            str(tmp_path / "work"),
            "--results",
            str(tmp_path / "again"),
            "--name",
            "search-tiny",
        ]
    )
    assert json.loads((tmp_path / "again" / "search-tiny.json").read_text())["rows"] == data["rows"]
