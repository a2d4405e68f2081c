"""Why did one method's final model certify below another's? Re-score every method's chosen policy of a finished search
matrix with ARQ's and with HAQ's reward, both on the final selection's fresh validation images, beside the ACR its
fine-tuned model certified on the test subset.

The search and the final selection rank candidates *before* fine-tuning; the matrix certifies them *after*. If a
reward ranks the methods' chosen policies unlike their certificates, the choice was lost to fine-tuning (or to the
reward); if it ranks them alike, the search itself found the worse policy. Per (seed, budget): each chosen policy's
rewards, its activation and weight bits, its certified ACR, and Kendall tau between each reward and the certified ACR.

    python benchmarks/rescore_choices.py --work benchmarks/state/search-matrix-resnet20 --name rescore-resnet20

Writes ``benchmarks/results/<name>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from bench_fidelity import kendall_tau
from certquant.pipeline.config import config_from_dict
from certquant.pipeline.run import Pipeline, budget_dir
from certquant.quant import Policy
from certquant.search.job import validation_indices
from common import RESULTS, write_results

REWARDS = ("arq", "haq")


def chosen_policy(search_dir: Path) -> Policy:
    """The policy the pipeline fine-tuned: the final selection's choice, else the search's best (uniform)."""
    selection = search_dir / "final_selection.json"
    if selection.is_file():
        return Policy.from_dict(json.loads(selection.read_text())["policy"])
    return Policy.load(search_dir / "best_policy.json")


def rescore_run(run: Path) -> list[dict[str, Any]]:
    """Every method's chosen policy of the finished run folder ``run``, scored with each reward in ``REWARDS`` on the
    final selection's fresh images (the pipeline's own evaluators, no fine-tuning steps)."""
    identity = json.loads((run / "run.json").read_text())["identity"]
    results = json.loads((run / "results.json").read_text())
    cfg = config_from_dict(identity["config"])
    job = Pipeline(cfg, run, resume=True).job
    s = cfg.search
    indices = validation_indices(job.info, s.final_images, s.seed, offset=s.search_images)
    evaluators = {reward: job.evaluator(reward, indices, finetune_steps=0) for reward in REWARDS}
    rows = []
    for row in results["rows"]:
        if row["method"] == "fp32":
            continue
        policy = chosen_policy(budget_dir(run, row["budget"]) / row["method"] / "search")
        scored = {reward: evaluate(policy) for reward, evaluate in evaluators.items()}
        rows.append(
            {
                "seed": s.seed,
                "budget": row["budget"],
                "method": row["method"],
                "certified_acr": row["acr"],
                "w_bits": list(policy.w_bits),
                "a_bits": list(policy.a_bits),
                **{f"{reward}_reward": scored[reward]["reward"] for reward in REWARDS},
                "arq_acr_term": scored["arq"]["acr"],
                "arq_clean_term": scored["arq"]["clean_accuracy"],
            }
        )
    return rows


def rank_agreement(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (seed, budget): Kendall tau between each reward and the certified ACR over the methods' chosen policies."""
    out = []
    for key in sorted({(r["seed"], r["budget"]) for r in rows}):
        group = [r for r in rows if (r["seed"], r["budget"]) == key]
        truth = [r["certified_acr"] for r in group]
        taus = {}
        for reward in REWARDS:
            tau = kendall_tau(np.array([r[f"{reward}_reward"] for r in group]), np.array(truth))
            taus[f"tau_{reward}"] = None if np.isnan(tau) else tau  # all ties: no ranking to compare
        out.append({"seed": key[0], "budget": key[1], **taus})
    return out


def markdown(data: dict[str, Any]) -> str:
    lines = [
        "# The methods' chosen policies, re-scored on the final selection's fresh images",
        "",
        f"`{data['command']}`",
        "",
        "Rewards before fine-tuning (ARQ's: 0.1 x [dACR + dclean] against FP32; HAQ's: 0.1 x d noisy top-1); "
        "certified ACR after fine-tuning, on the test subset. a_bits <= 2: layers with 2-bit activations.",
        "",
        "| seed | budget | method | ARQ reward | ARQ ACR term | ARQ clean term | HAQ reward | a_bits <= 2 | "
        "mean a_bits | mean w_bits | certified ACR |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        lines.append(
            f"| {r['seed']} | {r['budget']:g} | {r['method']} | {r['arq_reward']:+.4f} | {r['arq_acr_term']:.4f} | "
            f"{r['arq_clean_term']:.3f} | {r['haq_reward']:+.4f} | {sum(a <= 2 for a in r['a_bits'])} / "
            f"{len(r['a_bits'])} | {np.mean(r['a_bits']):.2f} | {np.mean(r['w_bits']):.2f} | "
            f"{r['certified_acr']:.4f} |"
        )
    lines += [
        "",
        "| seed | budget | tau ARQ reward vs certified ACR | tau HAQ reward vs certified ACR |",
        "|---|---|---|---|",
    ]
    for a in data["agreement"]:
        taus = ["-" if a[f"tau_{reward}"] is None else f"{a[f'tau_{reward}']:+.2f}" for reward in REWARDS]
        lines.append(f"| {a['seed']} | {a['budget']:g} | " + " | ".join(taus) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, help="a search matrix's work folder (bench_search.py --seeds)")
    parser.add_argument("--seeds", type=int, nargs="*", default=None, help="default: every finished seed")
    parser.add_argument("--name", required=True, help="results stem under --results")
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args(argv)
    runs = [
        path.parent
        for path in sorted(Path(args.work).glob("seed-*/budget*/results.json"))
        if args.seeds is None or int(path.parts[-3].split("-", 1)[1]) in args.seeds
    ]
    if not runs:
        raise SystemExit(f"no finished run under {args.work}/seed-*/: run the search matrix first")
    rows = [row for run in runs for row in rescore_run(run)]
    command = "python benchmarks/rescore_choices.py " + " ".join(argv if argv is not None else sys.argv[1:])
    data = {"command": command, "rows": rows, "agreement": rank_agreement(rows)}
    write_results(args.name, data, markdown(data), Path(args.results))
    print(markdown(data))
    return data


if __name__ == "__main__":
    main()
