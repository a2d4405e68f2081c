"""The final selection: the top-k distinct policies of a search re-scored on fresh images, the best there kept."""

from __future__ import annotations

import json

import pytest

from certquant.quant import Policy
from certquant.search.selection import SELECTION_FILE, reselect, top_policies
from certquant.utils.errors import CertquantError
from certquant.utils.io import append_jsonl

NAMES = ["a", "b"]


def line(episode, w, a, reward):
    return {"episode": episode, "w_bits": w, "a_bits": a, "reward": reward}


HISTORY = [
    line(0, [4, 4], [4, 4], -0.3),
    line(1, [8, 2], [4, 4], -0.1),
    line(2, [4, 4], [4, 4], -0.2),
    line(3, [2, 8], [4, 4], -0.1),
    line(4, [3, 3], [3, 3], -0.5),
]


def test_top_policies_are_distinct_best_first_ties_by_episode():
    top = top_policies(HISTORY, 3)
    assert [t["episode"] for t in top] == [1, 3, 2]  # [4, 4] counted once, at its best reward (episode 2)
    assert len(top_policies(HISTORY, 10)) == 4
    with pytest.raises(CertquantError, match="k >= 1"):
        top_policies(HISTORY, 0)


def test_reselect_keeps_the_best_on_fresh_images_and_reads_it_back(tmp_path):
    for entry in HISTORY:
        append_jsonl(tmp_path / "history.jsonl", entry)
    fresh = {(8, 2): -0.4, (2, 8): -0.3, (4, 4): -0.05}  # the fresh images reverse the search's order
    scored = []

    def evaluator(policy: Policy):
        w = tuple(policy.w_bits)
        scored.append(w)
        return {"reward": fresh[w]}

    chosen = reselect(tmp_path, NAMES, evaluator, 3)
    assert chosen.w_bits == [4, 4] and len(scored) == 3
    saved = json.loads((tmp_path / SELECTION_FILE).read_text())
    assert saved["chosen_episode"] == 2 and [c["episode"] for c in saved["candidates"]] == [1, 3, 2]
    again = reselect(tmp_path, NAMES, evaluator, 3)  # resume: read back, nothing re-scored
    assert again == chosen and len(scored) == 3
    assert saved["finetune_steps"] == 0
    with pytest.raises(CertquantError, match="top 3 after 0 fine-tuning step"):
        reselect(tmp_path, NAMES, evaluator, 2)
    with pytest.raises(CertquantError, match="not the top 3 after 50"):  # other fine-tuning: refused, not reused
        reselect(tmp_path, NAMES, evaluator, 3, finetune_steps=50)


def test_reselect_without_history_is_a_clear_error(tmp_path):
    with pytest.raises(CertquantError, match="no search history"):
        reselect(tmp_path, NAMES, lambda p: {"reward": 0.0}, 2)


def _history(tmp_path):
    for entry in HISTORY:
        append_jsonl(tmp_path / "history.jsonl", entry)


def test_a_fallback_joins_the_candidates_and_wins_only_when_strictly_better(tmp_path):
    _history(tmp_path)
    uniform = Policy.from_lists(NAMES, [3, 3], [3, 3])  # the search's worst (episode 4), not in its top 2
    fresh = {(8, 2): -0.2, (2, 8): -0.3, (3, 3): -0.1}
    chosen = reselect(tmp_path, NAMES, lambda p: {"reward": fresh[tuple(p.w_bits)]}, 2, fallback=uniform)
    saved = json.loads((tmp_path / SELECTION_FILE).read_text())
    assert chosen == uniform and saved["fallback"] is True and saved["chosen_episode"] is None
    assert [c["episode"] for c in saved["candidates"]] == [1, 3, None]
    with pytest.raises(CertquantError, match="with a fallback, not the top 2 after 0 without one"):
        reselect(tmp_path, NAMES, lambda p: {"reward": 0.0}, 2)  # resumed without it: refused, not reused

    tied = tmp_path / "tied"  # a tie keeps the searched policy
    _history(tied)
    fresh[(3, 3)] = -0.2
    assert reselect(tied, NAMES, lambda p: {"reward": fresh[tuple(p.w_bits)]}, 2, fallback=uniform).w_bits == [8, 2]


def test_a_fallback_already_among_the_top_k_is_scored_once(tmp_path):
    _history(tmp_path)
    scored = []

    def evaluator(policy: Policy):
        scored.append(tuple(policy.w_bits))
        return {"reward": 0.0}

    reselect(tmp_path, NAMES, evaluator, 3, fallback=Policy.from_lists(NAMES, [4, 4], [4, 4]))
    assert sorted(scored) == [(2, 8), (4, 4), (8, 2)]
