"""Does the search's winner's curse favour one kind of policy? Its best policies re-scored on several fresh image sets.

The search keeps the maximum of hundreds of noisy rewards, each measured on one small search set, so its best
policies are flattered by that set. On ResNet-20 ARQ's search converged on policies with 2-bit activations in many
layers whose search-set rewards fell on fresh images (README, *In progress*). This measures, for the ``--policies``
best distinct policies of a finished search (``selection.top_policies``) and uniform bits under the budget: the
search's own reward on ``--sets`` disjoint sets of fresh held-out validation images of the search set's size (the
seeded draw after the search set and the final selection's images), its mean and standard deviation over the sets,
and its optimism (search-set reward minus that mean); then Spearman's rho of the 2-bit-activation layer count with
the mean, the spread and the optimism.

    python benchmarks/reward_spread.py --run benchmarks/state/search-matrix-resnet20/seed-1/budgets-0.015625 \\
        --budget 0.015625 --method arq --policies 10 --sets 4 --name reward-spread-resnet20

Writes ``benchmarks/results/<name>.{json,md}``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

from bench_fidelity import spearman_rho
from certquant.pipeline.config import RunConfig
from certquant.pipeline.run import budget_dir
from certquant.quant import Policy
from certquant.search import BitWidthEnv
from certquant.search.job import SearchJob, validation_indices
from certquant.search.runner import uniform_policy
from certquant.search.selection import top_policies
from certquant.utils import read_jsonl
from common import RESULTS, heading, write_results
from rescore_choices import open_run, two_bit_layers


def measure(
    run: Path, cfg: RunConfig, job: SearchJob, budget: float, method: str, count: int, sets: int
) -> list[dict[str, Any]]:
    """The best ``count`` policies of ``method``'s search at ``budget`` in the finished run ``run`` (its config and job:
    ``open_run``) and uniform bits, scored with the method's reward on ``sets`` disjoint fresh image sets."""
    s = cfg.search
    history = list(read_jsonl(budget_dir(run, budget) / method / "search" / "history.jsonl"))
    first = s.search_images + s.final_images  # the search set's and the final selection's images come first
    evaluators = [
        job.evaluator(method, validation_indices(job.info, s.search_images, s.seed, offset=first + j * s.search_images))
        for j in range(sets)
    ]
    layers = evaluators[0].layers
    candidates = [
        (line["episode"], line["w_bits"], line["a_bits"], line["reward"]) for line in top_policies(history, count)
    ]
    uniform = uniform_policy(BitWidthEnv(layers, s.env(budget), arch=job.info["arch"]))
    candidates.append((None, uniform.w_bits, uniform.a_bits, None))
    rows = []
    for episode, w_bits, a_bits, search_reward in candidates:
        policy = Policy.from_lists(layers, w_bits, a_bits, arch=job.info["arch"])
        rewards = [evaluate(policy)["reward"] for evaluate in evaluators]
        mean = statistics.fmean(rewards)
        rows.append(
            {
                "episode": episode,  # None: uniform bits
                "two_bit_layers": two_bit_layers(a_bits),
                "w_bits": list(w_bits),
                "a_bits": list(a_bits),
                "search_reward": search_reward,
                "rewards": rewards,
                "mean": mean,
                "sd": statistics.stdev(rewards),
                # how far the search set flattered it: the winner's curse, per policy
                "optimism": None if search_reward is None else search_reward - mean,
            }
        )
        print(
            f"episode {episode}: {rows[-1]['two_bit_layers']} 2-bit layers, mean {rows[-1]['mean']:+.4f}, sd {rows[-1]['sd']:.4f}"
        )
    return rows


def markdown(data: dict[str, Any]) -> str:
    lines = [
        *heading("A reward's spread over image sets, per policy", data["command"]),
        f"{data['method']}'s reward on {data['sets']} disjoint sets of {data['images_per_set']} fresh validation images; "
        "episode '-': uniform bits under the budget.",
        "",
        "| episode | 2-bit activation layers | search-set reward | mean over sets | sd over sets | optimism |",
        "|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        search = "-" if r["search_reward"] is None else f"{r['search_reward']:+.4f}"
        episode = "-" if r["episode"] is None else r["episode"]
        optimism = "-" if r["optimism"] is None else f"{r['optimism']:+.4f}"
        lines.append(
            f"| {episode} | {r['two_bit_layers']} | {search} | {r['mean']:+.4f} | {r['sd']:.4f} | {optimism} |"
        )
    lines += [
        "",
        "Spearman rho with the 2-bit-activation layer count (all rows; optimism: the searched ones): "
        f"mean {data['rho_mean']:+.2f}, sd {data['rho_sd']:+.2f}, optimism {data['rho_optimism']:+.2f}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a finished run folder (one seed of a search matrix)")
    parser.add_argument("--budget", type=float, required=True)
    parser.add_argument("--method", default="arq", help="whose search history and reward (default arq)")
    parser.add_argument("--policies", type=int, default=10, help="the search's best distinct policies to re-score")
    parser.add_argument("--sets", type=int, default=4, help="disjoint fresh image sets (>= 2)")
    parser.add_argument("--name", required=True, help="results stem under --results")
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args(argv)
    run = Path(args.run)
    if not (budget_dir(run, args.budget) / args.method / "search" / "history.jsonl").is_file():
        raise SystemExit(f"no {args.method} search at budget {args.budget:g} under {run}: give a finished run folder")
    if args.sets < 2 or args.policies < 2:
        raise SystemExit("--sets and --policies must be >= 2 (a spread needs two values)")
    cfg, job = open_run(run)
    rows = measure(run, cfg, job, args.budget, args.method, args.policies, args.sets)
    count = np.array([r["two_bit_layers"] for r in rows])
    searched = [r for r in rows if r["optimism"] is not None]
    data = {
        "command": "python benchmarks/reward_spread.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "method": args.method,
        "budget": args.budget,
        "sets": args.sets,
        "images_per_set": cfg.search.search_images,
        "rows": rows,
        "rho_sd": spearman_rho(count, np.array([r["sd"] for r in rows])),
        "rho_mean": spearman_rho(count, np.array([r["mean"] for r in rows])),
        "rho_optimism": spearman_rho(
            np.array([r["two_bit_layers"] for r in searched]), np.array([r["optimism"] for r in searched])
        ),
    }
    write_results(args.name, data, markdown(data), Path(args.results))
    print(markdown(data))
    return data


if __name__ == "__main__":
    main()
