"""benchmarks/reward_spread.py: a search's best policies re-scored on disjoint fresh image sets."""

from __future__ import annotations

import statistics

import pytest

import bench_search
import reward_spread
from certquant.search.job import SearchJob, validation_indices
from certquant.search.selection import top_policies
from certquant.utils import read_jsonl


@pytest.fixture(scope="module")
def finished_run(tiny_config, tmp_path_factory):
    work = tmp_path_factory.mktemp("spread") / "work"
    bench_search.main(
        ["--config", str(tiny_config), "--budgets", "0.0125", "--seeds", "0", "--work", str(work), "--run-only"]
        + ["--methods", "arq", "uniform", "--set", "certify.max_images=2"]
    )
    return next(work.glob("seed-0/budget*"))


def test_rescores_the_best_policies_and_uniform_on_disjoint_fresh_sets(finished_run, tmp_path, monkeypatch):
    seen: list[list[int]] = []
    original = SearchJob.evaluator

    def recording(self, method, indices, *args, **kwargs):
        seen.append(list(indices))
        return original(self, method, indices, *args, **kwargs)

    monkeypatch.setattr(SearchJob, "evaluator", recording)
    args = ["--run", str(finished_run), "--budget", "0.0125", "--policies", "2", "--sets", "2"]
    data = reward_spread.main([*args, "--name", "spread", "--results", str(tmp_path)])

    history = list(read_jsonl(finished_run / "budget-0.0125" / "arq" / "search" / "history.jsonl"))
    best = top_policies(history, 2)
    rows = data["rows"]
    assert [r["episode"] for r in rows] == [line["episode"] for line in best] + [None]  # uniform last
    assert len(set(rows[-1]["w_bits"])) == 1 and rows[-1]["optimism"] is None
    for r in rows:
        assert r["two_bit_layers"] == sum(a <= 2 for a in r["a_bits"]) and len(r["rewards"]) == 2
        assert r["mean"] == pytest.approx(statistics.fmean(r["rewards"]))
        assert r["sd"] == pytest.approx(statistics.stdev(r["rewards"]))
    assert rows[0]["optimism"] == pytest.approx(best[0]["reward"] - rows[0]["mean"])
    # the sets: disjoint from each other, from the search set and from the final selection's images
    sets = [set(s) for s in seen[:2]]
    search_set = set(validation_indices(_info(finished_run), 4, 0))
    final_set = set(validation_indices(_info(finished_run), 4, 0, offset=4))
    assert all(len(s) == 4 for s in sets) and not sets[0] & sets[1]
    assert not (sets[0] | sets[1]) & (search_set | final_set)
    # deterministic: the same seeds give the same rewards
    again = reward_spread.main([*args, "--name", "again", "--results", str(tmp_path)])
    assert [r["rewards"] for r in again["rows"]] == [r["rewards"] for r in rows]
    assert "| - | 0 | - |" in (tmp_path / "spread.md").read_text()


def _info(run):
    from rescore_choices import open_run

    return open_run(run)[1].info


def test_refuses_a_run_without_that_search(finished_run, tmp_path):
    with pytest.raises(SystemExit, match="no haq search at budget 0.0125"):
        reward_spread.main(
            ["--run", str(finished_run), "--budget", "0.0125", "--method", "haq", "--name", "x"]
            + ["--results", str(tmp_path)]
        )
