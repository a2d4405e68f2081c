"""The search loop: run folder, best policy, exact resume after an interruption, random and uniform baselines."""

from __future__ import annotations

import json

import pytest
import torch

from certquant.models import build
from certquant.quant import Policy, bitops_fraction, quantizable_layers
from certquant.search.ddpg import DDPGConfig
from certquant.search.env import EnvConfig
from certquant.search.evaluators import EvalConfig, PolicyEvaluator
from certquant.search.runner import Search, SearchConfig, run_search
from certquant.smoothing.config import CertifyConfig
from certquant.utils.errors import CertquantError
from certquant.utils.io import read_jsonl

SIGMA = 0.25  # the noise the search fixtures' CNN was trained with (tests/search/conftest.py)

SMALL_AGENT = DDPGConfig(hidden=32, batch_size=16, warmup_episodes=4, replay_episodes=8)


@pytest.fixture(scope="module")
def layers():
    return quantizable_layers(build("lenet5"), (1, 28, 28))  # 5 layers: 3 searched, 6 steps


def fake_reward(policy: Policy) -> dict:
    """Deterministic and cheap: prefers more bits in the middle layers, like a real accuracy proxy."""
    terms = {"score": float(sum(w * (i + 1) + a for i, (w, a) in enumerate(zip(policy.w_bits, policy.a_bits))))}
    terms["reward"] = 0.01 * terms["score"]
    return terms


class Interrupt(Exception):
    pass


def interrupting(after: int):
    count = {"n": 0}

    def evaluate(policy: Policy) -> dict:
        count["n"] += 1
        if count["n"] > after:
            raise Interrupt
        return fake_reward(policy)

    return evaluate


def without_seconds(records):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


@pytest.mark.parametrize("method", ["arq", "random"])
def test_interrupted_and_resumed_search_equals_straight_run(tmp_path, layers, method):
    config = SearchConfig(EnvConfig(budget=0.03), method=method, episodes=14, ddpg=SMALL_AGENT, seed=3)
    straight = run_search(layers, fake_reward, config, tmp_path / "straight", arch="lenet5", progress=False)

    with pytest.raises(Interrupt):
        run_search(layers, interrupting(after=7), config, tmp_path / "resumed", arch="lenet5", progress=False)
    evaluated = len(list(read_jsonl(tmp_path / "resumed" / "history.jsonl")))
    assert 0 < evaluated < 14
    with open(tmp_path / "resumed" / "history.jsonl", "a") as handle:  # a kill after the history line, before state.pt
        handle.write(json.dumps({"episode": evaluated, "torn": True}) + "\n")
    resumed = run_search(layers, fake_reward, config, tmp_path / "resumed", resume=True, arch="lenet5", progress=False)

    assert without_seconds(resumed.history) == without_seconds(straight.history)
    assert len(resumed.history) == 14
    assert resumed.best_policy == straight.best_policy and resumed.best_reward == straight.best_reward
    best_files = [json.loads((tmp_path / d / "best_policy.json").read_text()) for d in ("straight", "resumed")]
    assert best_files[0]["layers"] == best_files[1]["layers"]
    states = [torch.load(tmp_path / d / "state.pt", weights_only=True) for d in ("straight", "resumed")]
    assert states[0]["rng"] == states[1]["rng"]
    if method == "arq":
        for key, value in states[0]["agent"]["actor"].items():
            assert torch.equal(value, states[1]["agent"]["actor"][key])
        assert states[0]["agent"]["numpy_rng"] == states[1]["agent"]["numpy_rng"]


def test_history_and_best_policy(tmp_path, layers):
    config = SearchConfig(EnvConfig(budget=0.03), method="haq", episodes=10, ddpg=SMALL_AGENT)
    result = run_search(layers, fake_reward, config, tmp_path, arch="lenet5", progress=False)
    history = result.history
    assert [r["episode"] for r in history] == list(range(10))
    for record in history:
        assert record["bitops_fraction"] <= 0.03 * (1 + 1e-12)
        assert record["terms"]["score"] > 0 and "seconds" in record and len(record["actions"]) == 6
    assert result.best_reward == max(r["reward"] for r in history)
    assert history[-1]["best_reward"] == result.best_reward
    loaded = Policy.load(tmp_path / "best_policy.json")  # the format `certquant quantize --policy` reads
    loaded.validate(layers, "lenet5")
    assert loaded.meta["reward"] == result.best_reward
    assert bitops_fraction(layers, loaded) <= 0.03 * (1 + 1e-12)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["episodes"] == 10 and summary["best_reward"] == result.best_reward


def test_uniform_baseline_picks_the_largest_fitting_width(tmp_path, layers):
    config = SearchConfig(EnvConfig(budget=0.015625, pin_first_last=False), method="uniform", episodes=50)
    result = run_search(layers, fake_reward, config, tmp_path, progress=False)
    assert len(result.history) == 1
    assert result.best_policy.w_bits == [4] * 5 == result.best_policy.a_bits


def test_existing_run_and_changed_arguments_are_refused(tmp_path, layers):
    config = SearchConfig(EnvConfig(budget=0.03), method="random", episodes=2)
    run_search(layers, fake_reward, config, tmp_path, progress=False)
    with pytest.raises(CertquantError, match="--resume"):
        run_search(layers, fake_reward, config, tmp_path, progress=False)
    other = SearchConfig(EnvConfig(budget=0.05), method="random", episodes=2)
    with pytest.raises(CertquantError, match="other settings"):
        run_search(layers, fake_reward, other, tmp_path, resume=True, progress=False)


@pytest.mark.parametrize("method", ["best", "grid"])
def test_unknown_method(tmp_path, layers, method):
    with pytest.raises(CertquantError, match="unknown search method"):
        Search(layers, fake_reward, SearchConfig(EnvConfig(budget=0.03), method=method), tmp_path)


def test_real_arq_search_end_to_end(tmp_path, trained_cnn, search_set):
    images, labels, idx = search_set
    evaluate = PolicyEvaluator(
        trained_cnn,
        SIGMA,
        images[:6],
        labels[:6],
        idx[:6],
        EvalConfig(n_p=50, calib_images=32),
        certify_config=CertifyConfig(n0=10, batch=60),
        arch="small-cnn",
    )
    config = SearchConfig(
        EnvConfig(budget=0.02), method="arq", episodes=4, ddpg=DDPGConfig(hidden=16, batch_size=4, warmup_episodes=2)
    )
    result = run_search(
        evaluate.layers, evaluate, config, tmp_path, arch="small-cnn", progress=False, reference=evaluate.reference()
    )
    assert len(result.history) == 4
    assert all("acr" in r["terms"] and "acr_fp32" in r["terms"] for r in result.history)
    assert json.loads((tmp_path / "summary.json").read_text())["reference"]["acr"] > 0
