"""benchmarks/rescore_choices.py: the methods' chosen policies of a finished matrix, re-scored with both rewards."""

from __future__ import annotations

import json

import pytest

import bench_search
import rescore_choices


def _row(method: str, arq: float, haq: float, acr: float) -> dict:
    return {"seed": 0, "budget": 0.0125, "method": method, "arq_reward": arq, "haq_reward": haq, "certified_acr": acr}


def test_rank_agreement_is_kendall_tau_per_seed_and_budget():
    rows = [_row("a", 0.3, 0.1, 0.60), _row("b", 0.2, 0.2, 0.55), _row("c", 0.1, 0.3, 0.50)]
    assert rescore_choices.rank_agreement(rows) == [{"seed": 0, "budget": 0.0125, "tau_arq": 1.0, "tau_haq": -1.0}]
    tied = [_row("a", 0.3, 0.1, 0.5), _row("b", 0.2, 0.2, 0.5)]  # every certificate equal: no ranking, no NaN
    assert rescore_choices.rank_agreement(tied)[0]["tau_arq"] is None


def test_rescores_every_method_of_a_finished_matrix(tiny_config, tmp_path):
    work = tmp_path / "work"
    bench_search.main(
        ["--config", str(tiny_config), "--budgets", "0.0125", "--seeds", "0", "--work", str(work), "--run-only"]
        + ["--set", "certify.max_images=2", "search.final_top_k=2"]
    )
    data = rescore_choices.main(["--work", str(work), "--name", "rescore", "--results", str(tmp_path)])
    rows = {r["method"]: r for r in data["rows"]}
    assert sorted(rows) == ["arq", "haq", "random", "uniform"]
    run = next(work.glob("seed-0/budget*"))
    certified = {r["method"]: r["acr"] for r in json.loads((run / "results.json").read_text())["rows"]}
    assert all(rows[m]["certified_acr"] == certified[m] for m in rows)
    # the fine-tuned policy is the final selection's choice (uniform: its one policy)
    chosen = json.loads((run / "budget-0.0125" / "arq" / "search" / "final_selection.json").read_text())["policy"]
    assert rows["arq"]["w_bits"] == [layer["w_bits"] for layer in chosen["layers"]]
    assert set(rows["uniform"]["a_bits"]) == {rows["uniform"]["a_bits"][0]}
    tau = data["agreement"][0]["tau_arq"]
    assert len(data["agreement"]) == 1 and (tau is None or -1.0 <= tau <= 1.0)
    # deterministic: the same seeds give the same rewards
    again = rescore_choices.main(["--work", str(work), "--name", "again", "--results", str(tmp_path)])
    assert [r["arq_reward"] for r in again["rows"]] == [r["arq_reward"] for r in data["rows"]]
    assert "| 0 | 0.0125 | arq |" in (tmp_path / "rescore.md").read_text()


def test_refuses_a_work_folder_without_finished_runs(tmp_path):
    with pytest.raises(SystemExit, match="no finished run"):
        rescore_choices.main(["--work", str(tmp_path), "--name", "x", "--results", str(tmp_path)])
