"""Why did one method's final model certify below another's? Re-score every method's chosen policy of a finished search
matrix with ARQ's and with HAQ's reward, both on the final selection's fresh validation images, beside the ACR its
fine-tuned model certified on the test subset.

The search and the final selection rank candidates *before* fine-tuning; the matrix certifies them *after*. If a
reward ranks the methods' chosen policies unlike their certificates, the choice was lost to fine-tuning (or to the
reward); if it ranks them alike, the search itself found the worse policy. Per (seed, budget): each chosen policy's
rewards, its activation and weight bits, its certified ACR, and Kendall tau between each reward and the certified ACR.

It also answers a what-if without new runs: a *uniform fallback* in every searched method's final selection (uniform
bits under the budget as one more candidate, kept when the method's own reward scores it above the method's choice on
the same fresh images). The fallback's outcome needs no new fine-tune: every method's model is calibrated and
fine-tuned with the same seeds, so a method that falls back certifies exactly what the uniform method certified in
that seed. The matrix with the fallback is summarized like the matrix itself (means over seeds, ARQ minus each
baseline paired over test images, interval over seeds).

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

import search_matrix
from bench_fidelity import kendall_tau
from bench_search import image_radii
from certquant.pipeline.config import RunConfig, config_from_dict
from certquant.pipeline.run import Pipeline, budget_dir
from certquant.quant import Policy
from certquant.search.job import SearchJob, validation_indices
from common import RESULTS, heading, write_results

REWARDS = ("arq", "haq")


def open_run(run: Path) -> tuple[RunConfig, SearchJob]:
    """The config of the finished run folder ``run`` and its ``SearchJob`` (the pipeline's evaluators, as it built them)."""
    cfg = config_from_dict(json.loads((run / "run.json").read_text())["identity"]["config"])
    return cfg, Pipeline(cfg, run, resume=True).job


def two_bit_layers(a_bits: list[int]) -> int:
    """Layers whose activations are quantized to 2 bits or fewer (where ResNet-20's ARQ searches converged)."""
    return sum(a <= 2 for a in a_bits)


def chosen_policy(search_dir: Path) -> Policy:
    """The policy the pipeline fine-tuned: the final selection's choice, else the search's best (uniform)."""
    selection = search_dir / "final_selection.json"
    if selection.is_file():
        return Policy.from_dict(json.loads(selection.read_text())["policy"])
    return Policy.load(search_dir / "best_policy.json")


def rescore_run(run: Path) -> list[dict[str, Any]]:
    """Every method's chosen policy of the finished run folder ``run``, scored with each reward in ``REWARDS`` on the
    final selection's fresh images (the pipeline's own evaluators, no fine-tuning steps)."""
    cfg, job = open_run(run)
    results = json.loads((run / "results.json").read_text())
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
                "selection_reward": s.reward_of(row["method"]),  # what its search and final selection ranked by
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


def falls_back(rows: list[dict[str, Any]]) -> dict[tuple[int, float, str], bool]:
    """Per (seed, budget, searched method): whether the uniform fallback replaces the method's choice, i.e. its own
    reward scores the uniform policy strictly above its chosen one on the final selection's fresh images."""
    uniform = {(r["seed"], r["budget"]): r for r in rows if r["method"] == "uniform"}
    out = {}
    for r in rows:
        key = (r["seed"], r["budget"])
        if r["method"] != "uniform" and key in uniform:
            reward = f"{r['selection_reward']}_reward"
            out[(*key, r["method"])] = uniform[key][reward] > r[reward]
    return out


def with_fallback(records: list[dict[str, Any]], fallback: dict[tuple[int, float, str], bool]) -> list[dict[str, Any]]:
    """The matrix's records (``search_matrix.collect_runs``) as they would be with the uniform fallback: a method that
    falls back takes the uniform run's certificates and BitOPs of the same seed and budget (its search time stays)."""
    uniform = {(r["seed"], r["budget"]): r for r in records if r["method"] == "uniform"}
    taken = ("acr", "clean_accuracy", "cert_acc_0.25", "cert_acc_0.5", "bitops_fraction", "radii")
    out = []
    for r in records:
        if fallback.get((r["seed"], r["budget"], r["method"])):
            r = {**r, **{k: uniform[r["seed"], r["budget"]][k] for k in taken}}
        out.append(r)
    return out


def fallback_summary(work: Path, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The matrix in ``work`` with the uniform fallback, summarized like ``search_matrix.summarize`` (same seeds as
    ``rows``), and which (seed, budget, method) fell back."""
    seeds = {r["seed"] for r in rows}
    records = [r for r in search_matrix.collect_runs(work, image_radii) if r["seed"] in seeds]
    fallback = falls_back(rows)
    summary = search_matrix.summarize(with_fallback(records, fallback))
    return {
        "fell_back": [{"seed": k[0], "budget": k[1], "method": k[2]} for k, v in sorted(fallback.items()) if v],
        "rows": summary["rows"],
        "differences": summary["differences"],
    }


def markdown(data: dict[str, Any]) -> str:
    lines = [
        *heading("The methods' chosen policies, re-scored on the final selection's fresh images", data["command"]),
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
            f"{r['arq_clean_term']:.3f} | {r['haq_reward']:+.4f} | {two_bit_layers(r['a_bits'])} / "
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
    f = data["fallback"]
    fell = ", ".join(f"{x['method']} (seed {x['seed']}, {x['budget']:g})" for x in f["fell_back"]) or "none"
    lines += [
        "",
        "## What-if: a uniform fallback in every searched method's final selection",
        "",
        "Uniform bits join each final selection as one more candidate, scored with the method's own reward on the "
        "same fresh images; a method that falls back certifies what uniform certified in that seed (same seeds, "
        f"same fine-tune). Fell back: {fell}.",
        "",
        search_matrix.results_table(f),
        "",
        search_matrix.differences_table(f),
    ]
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
    data = {
        "command": command,
        "rows": rows,
        "agreement": rank_agreement(rows),
        "fallback": fallback_summary(Path(args.work), rows),
    }
    write_results(args.name, data, markdown(data), Path(args.results))
    print(markdown(data))
    return data


if __name__ == "__main__":
    main()
