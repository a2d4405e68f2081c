"""benchmarks/rescore_choices.py: the methods' chosen policies of a finished matrix, re-scored with both rewards."""

from __future__ import annotations

import json

import pytest

import bench_search
import rescore_choices
import search_matrix


def _row(method: str, arq: float, haq: float, acr: float, seed: int = 0) -> dict:
    return {
        "seed": seed,
        "budget": 0.0125,
        "method": method,
        "selection_reward": "haq" if method == "haq" else "arq",
        "arq_reward": arq,
        "haq_reward": haq,
        "certified_acr": acr,
    }


def _record(method: str, seed: int, radii: dict[int, float]) -> dict:
    acr = sum(radii.values()) / len(radii)
    metrics = {"clean_accuracy": 0.9, "cert_acc_0.25": 0.8, "cert_acc_0.5": 0.7, "bitops_fraction": 0.01}
    times = {"search_seconds": 10.0, "reference_seconds": 1.0, "selection_seconds": 2.0, "search_cost_seconds": 13.0}
    return {
        "seed": seed,
        "budget": 0.0125,
        "method": method,
        "acr": acr,
        "radii": radii,
        "run": "r",
        **metrics,
        **times,
    }


def test_falls_back_when_the_methods_own_reward_scores_uniform_higher():
    rows = [_row("uniform", 0.2, 0.2, 0.6), _row("arq", 0.1, 0.3, 0.5), _row("haq", 0.3, 0.1, 0.5)]
    rows += [_row("random", 0.2, 0.0, 0.5)]  # a tie keeps the method's own choice
    assert rescore_choices.falls_back(rows) == {
        (0, 0.0125, "arq"): True,  # ARQ's reward: uniform 0.2 > 0.1
        (0, 0.0125, "haq"): True,  # HAQ's reward: uniform 0.2 > 0.1, though ARQ's would keep HAQ's choice
        (0, 0.0125, "random"): False,
    }


def test_a_method_that_falls_back_certifies_what_uniform_certified():
    records = [_record("uniform", s, {0: 0.6, 1: 0.4}) for s in (0, 1)]
    records += [_record("arq", s, {0: 0.2, 1: 0.2}) for s in (0, 1)]
    records += [_record("haq", s, {0: 0.5, 1: 0.3}) for s in (0, 1)]
    fallback = {(0, 0.0125, "arq"): True, (1, 0.0125, "arq"): False, (0, 0.0125, "haq"): False}
    out = rescore_choices.with_fallback(records, fallback)
    arq = {r["seed"]: r for r in out if r["method"] == "arq"}
    assert arq[0]["radii"] == {0: 0.6, 1: 0.4} and arq[0]["acr"] == 0.5 and arq[0]["search_seconds"] == 10.0
    assert arq[1]["radii"] == {0: 0.2, 1: 0.2}  # kept its own
    assert [r for r in out if r["method"] != "arq"] == [r for r in records if r["method"] != "arq"]
    summary = search_matrix.summarize(out)
    minus_uniform = next(d for d in summary["differences"] if d["baseline"] == "uniform")
    assert minus_uniform["per_seed"] == {0: 0.0, 1: pytest.approx(-0.3)}


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
    # the what-if with a uniform fallback: every method summarized, each fallback taking uniform's certificate
    fallback = {r["method"]: r["acr"]["mean"] for r in data["fallback"]["rows"]}
    assert sorted(fallback) == ["arq", "haq", "random", "uniform"]
    fell = {x["method"] for x in data["fallback"]["fell_back"]}
    assert all(fallback[m] == (certified["uniform"] if m in fell else certified[m]) for m in fallback)


def test_refuses_a_work_folder_without_finished_runs(tmp_path):
    with pytest.raises(SystemExit, match="no finished run"):
        rescore_choices.main(["--work", str(tmp_path), "--name", "x", "--results", str(tmp_path)])
