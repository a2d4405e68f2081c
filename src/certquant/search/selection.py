"""Final selection: re-score the search's top-k policies on fresh validation images and keep the best there.

The search keeps the maximum of many noisy rewards measured on a small search set, so its best policy is biased
upward (the winner's curse). Measured on ResNet-20 (Fashion-MNIST, sigma 0.25, 150 ARQ episodes on 50 images): the
best ARQ policy's reward beat uniform W4A4's on the search set (-0.0009 vs -0.0055) and lost on 200 fresh images
(-0.0035 vs -0.0010), and after fine-tuning it certified 0.011 ACR below uniform. Re-scoring the k best distinct
policies on images the search never saw removes that bias from the final choice; k = 1 is the search's own choice.

A *fallback* policy from outside the search (the pipeline's ``search.final_uniform_fallback``: uniform bits under the
budget) can join the candidates, scored alike and kept only when strictly better than every searched one: the final
choice then never scores below that baseline on the fresh images by the method's own reward. Measured on ResNet-20
seed 0 at the W4A4 budget: ARQ's top five all ran 11-14 of 20 layers on 2-bit activations and scored -0.0040 to
-0.0051 on the fresh images, uniform W4A4 -0.0012 (``benchmarks/results/rescore-resnet20.md``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from certquant.quant import LayerInfo, Policy
from certquant.utils.errors import CertquantError
from certquant.utils.io import append_jsonl, atomic_write_json, read_jsonl

SELECTION_FILE = "final_selection.json"
FINAL_POLICY_FILE = "final_policy.json"  # `certquant search --final-top-k`: the chosen policy alone
SCORES_FILE = "acr_scores.jsonl"  # ARQ's terms of every policy of a search whose reward did not measure them (HAQ)

Evaluator = Callable[[Policy], dict[str, Any]]


def top_policies(history: Sequence[dict], k: int) -> list[dict]:
    """The ``k`` history lines with the highest search reward, one per distinct policy, best first (ties: earlier)."""
    if k < 1:
        raise CertquantError(f"the final selection needs k >= 1 policies, got {k}")
    best: dict[tuple, dict] = {}
    for line in history:
        key = (tuple(line["w_bits"]), tuple(line["a_bits"]))
        if key not in best or line["reward"] > best[key]["reward"]:
            best[key] = line
    return sorted(best.values(), key=lambda line: (-line["reward"], line["episode"]))[:k]


def reselect(
    search_dir: str | Path,
    layers: Sequence[LayerInfo],
    evaluator: Evaluator,
    k: int,
    arch: str | None = None,
    finetune_steps: int = 0,
    fallback: Policy | None = None,
) -> Policy:
    """Re-score the top-``k`` policies of the finished search in ``search_dir`` with ``evaluator`` (built on fresh
    images; ``finetune_steps``: the fine-tuning steps it gives each policy, recorded), and ``fallback`` after them
    unless it is one of them, and return the best (ties: the earlier); writes ``final_selection.json`` there (read
    back instead of re-scoring on resume)."""
    path = Path(search_dir) / SELECTION_FILE
    if path.exists():
        saved = _read(path)
        was = (saved.get("k"), saved.get("finetune_steps", finetune_steps), saved.get("fallback", False))
        if was != (k, finetune_steps, fallback is not None):
            with_or_not = ["without", "with"]
            raise CertquantError(
                f"{path} holds a final selection of the top {was[0]} after {was[1]} fine-tuning step(s) "
                f"{with_or_not[was[2]]} a fallback, not the top {k} after {finetune_steps} "
                f"{with_or_not[fallback is not None]} one: delete it to redo the selection with the new settings"
            )
        return Policy.from_dict(saved["policy"])
    history = list(read_jsonl(Path(search_dir) / "history.jsonl"))
    if not history:
        raise CertquantError(f"{search_dir} holds no search history: run the search before the final selection")
    lines = top_policies(history, k)
    if fallback is not None and (fallback.w_bits, fallback.a_bits) not in [(x["w_bits"], x["a_bits"]) for x in lines]:
        lines.append({"episode": None, "w_bits": fallback.w_bits, "a_bits": fallback.a_bits, "reward": None})
    candidates = []
    for line in lines:
        policy = Policy.from_lists(layers, line["w_bits"], line["a_bits"], arch=arch)
        started = time.perf_counter()
        terms = evaluator(policy)
        candidates.append(
            {
                "episode": line["episode"],  # None: the fallback, which the search did not propose
                "w_bits": line["w_bits"],
                "a_bits": line["a_bits"],
                "search_reward": line["reward"],
                "final_reward": terms["reward"],
                "final_terms": terms,
                "seconds": time.perf_counter() - started,
            }
        )
    chosen = max(candidates, key=lambda c: c["final_reward"])  # first maximum: the better search reward among ties
    policy = Policy.from_lists(layers, chosen["w_bits"], chosen["a_bits"], arch=arch)
    atomic_write_json(
        path,
        {
            "k": k,
            "finetune_steps": finetune_steps,
            "fallback": fallback is not None,
            "chosen_episode": chosen["episode"],
            "candidates": candidates,
            "policy": policy.to_dict(),
        },
    )
    return policy


def score_history(
    search_dir: str | Path,
    layers: Sequence[LayerInfo],
    evaluator: Evaluator,
    arch: str | None = None,
    progress: bool = False,
) -> list[dict]:
    """Score every distinct policy the finished search in ``search_dir`` evaluated with ``evaluator`` and return one
    record per policy (episode, bits, BitOPs fraction, terms). Used to put HAQ's policies, whose reward is noisy
    accuracy, on the same BitOPs-versus-ACR axes as ARQ's: the evaluator is ARQ's, on the same search set and noise.
    Each record is appended to ``SCORES_FILE`` as soon as it is measured, so a killed run resumes at the next one."""
    path = Path(search_dir) / SCORES_FILE
    history = list(read_jsonl(Path(search_dir) / "history.jsonl"))
    if not history:
        raise CertquantError(f"{search_dir} holds no search history: run the search before scoring its policies")
    done = {(tuple(r["w_bits"]), tuple(r["a_bits"])): r for r in read_jsonl(path)}
    todo: dict[tuple, dict] = {}
    for line in history:  # each distinct policy once, at its first episode
        key = (tuple(line["w_bits"]), tuple(line["a_bits"]))
        if key not in done:
            todo.setdefault(key, line)
    for key, line in tqdm(todo.items(), total=len(todo), desc="score policies", unit="policy", disable=not progress):
        policy = Policy.from_lists(layers, line["w_bits"], line["a_bits"], arch=arch)
        terms = evaluator(policy)
        done[key] = {
            "episode": line["episode"],
            "w_bits": line["w_bits"],
            "a_bits": line["a_bits"],
            "bitops_fraction": line["bitops_fraction"],
            "terms": terms,
        }
        append_jsonl(path, done[key])
    return list(done.values())


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise CertquantError(f"{path} is corrupt: delete it to redo the final selection") from None
