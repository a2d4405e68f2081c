"""The search benchmark across seeds (issue 18, item 5): statistics and report of ``bench_search.py --seeds``.

Each search seed S is one run of the benchmark's grid in ``WORK/seed-S/`` with ``seed_overrides(S)``: the search
(agent, search set, scoring noise, random policies), the calibration draw and the fine-tune all take seed S, for every
method alike; the test subset and its certification noise stay fixed, so methods are paired over test images within a
seed. This module only reads finished runs (``results.json`` and the per-image certificates), so it works whatever
executes the grid (processes or Ray tasks):

- per budget and method, over the seeds: mean ACR, clean smoothed accuracy, certified accuracy at r = 0.25 / 0.5,
  BitOPs fraction and search wall time, each with a Student-t 95% interval over the seeds;
- ARQ minus each baseline, paired: per seed the mean over the common test images of the per-image radius
  difference, then the mean over seeds with a Student-t 95% interval over seeds (the seed is the unit that varies
  the search and the fine-tune; an interval over images alone would ignore that). "ARQ better" / "ARQ worse" only
  when the interval excludes 0, else "tied";
- ARQ's search wall time over HAQ's per budget (same machine, same run), each the sum of its episodes, its one-time
  FP32 reference (ARQ's paired and IRS estimators: the FP32 certification cache; a process that already holds the
  cache of the same search set reuses it) and its final selection;
- an ACR-versus-BitOPs plot, one panel per budget, every seed's point and each method's mean.
"""

from __future__ import annotations

import json
import shutil
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from certquant.data import index_count
from certquant.pipeline.run import budget_dir
from certquant.smoothing.metrics import mean_ci
from certquant.utils.tables import markdown_table
from common import save_figure

METRICS = (
    "acr",
    "clean_accuracy",
    "cert_acc_0.25",
    "cert_acc_0.5",
    "bitops_fraction",
    "search_seconds",
    "reference_seconds",
    "selection_seconds",
    "search_cost_seconds",
)
TIME_PARTS = ("search_seconds", "reference_seconds", "selection_seconds")  # episodes, FP32 reference, final selection
ORDER = ("arq", "haq", "random", "uniform")


def seed_overrides(seed: int) -> list[str]:
    """Run-config overrides of search seed ``seed``: search, calibration and fine-tune seeds (not the test subset's
    certification seed, so methods stay paired over the same noise)."""
    return [f"search.seed={seed}", f"quantize.seed={seed}", f"finetune.seed={seed}"]


def seed_work(work: Path, seed: int) -> Path:
    return Path(work) / f"seed-{seed}"


def share_fp32_certificates(work: Path, seed: int, run_name: str) -> Path | None:
    """Copy another seed's FP32 certification of the same grid (``WORK/seed-*/<run_name>/fp32/certify``) into seed
    ``seed``'s run before it starts, and return where it came from. The seeds share the FP32 model, the test subset
    and its certification noise, so certifying it again gives the same certificates (13 CPU-minutes per seed on the
    small CNN at 200 images); the certification resumes from the copy, and its identity check refuses one made with
    other settings."""
    target = seed_work(work, seed) / run_name / "fp32" / "certify"
    if target.exists():
        return None
    for source in sorted(Path(work).glob(f"seed-*/{run_name}/fp32/certify")):
        if (source / "certificates.jsonl").is_file():
            partial = target.with_name("certify.copying")
            shutil.rmtree(partial, ignore_errors=True)
            shutil.copytree(source, partial)
            partial.rename(target)  # whole or not at all
            return source
    return None


def _metrics(row: dict) -> dict[str, Any]:
    cert = row.get("certified_accuracy", {})
    return {
        "acr": row["acr"],
        "clean_accuracy": row["clean_accuracy"],
        "cert_acc_0.25": cert.get("0.25", 0.0),
        "cert_acc_0.5": cert.get("0.5", 0.0),
        "bitops_fraction": row["bitops_fraction"],
        "search_seconds": row.get("search_seconds"),
        "reference_seconds": row.get("reference_seconds"),
        "selection_seconds": row.get("selection_seconds"),
        # what a search costs end to end: its episodes, its one-time FP32 reference, its final selection
        "search_cost_seconds": (
            None if row.get("search_seconds") is None else sum(row.get(k) or 0.0 for k in TIME_PARTS)
        ),
    }


def collect_runs(work: Path, image_radii: Callable[[Path], dict[int, float]]) -> list[dict[str, Any]]:
    """One record per (seed, budget, method) of every finished run under ``WORK/seed-*/``: metrics and per-image
    counted radii (``image_radii(certify_dir)``)."""
    records = []
    for seed_dir in sorted(Path(work).glob("seed-*")):
        seed = int(seed_dir.name.split("-", 1)[1])
        for results_path in sorted(seed_dir.glob("budget*/results.json")):
            run = results_path.parent
            results = json.loads(results_path.read_text())
            for row in results["rows"]:
                folder = run / "fp32" if row["method"] == "fp32" else budget_dir(run, row["budget"]) / row["method"]
                records.append(
                    {
                        "seed": seed,
                        "budget": row["budget"],
                        "method": row["method"],
                        "run": str(run),
                        **_metrics(row),
                        "radii": image_radii(folder / "certify"),
                        "provenance": results.get("provenance"),
                    }
                )
    return records


def interval(values: list[float]) -> dict[str, Any]:
    """Mean and Student-t 95% interval over seeds (None below two seeds)."""
    present = [v for v in values if v is not None]
    return {
        "mean": statistics.fmean(present) if present else None,
        "ci95": mean_ci(present),
        "n": len(present),
        "values": values,
    }


def verdict(ci: list[float] | None) -> str:
    if ci is None:
        return "one seed: no interval"
    return "ARQ better" if ci[0] > 0 else "ARQ worse" if ci[1] < 0 else "tied"


def paired_difference(arq: dict[int, dict[int, float]], base: dict[int, dict[int, float]]) -> dict[str, Any]:
    """ARQ minus a baseline: per seed the mean per-image radius difference over their common test images, then the
    mean over seeds with its 95% interval over seeds. ``arq[seed][image]`` = counted radius."""
    per_seed = {}
    for seed in sorted(set(arq) & set(base)):
        common = sorted(set(arq[seed]) & set(base[seed]))
        if common:
            per_seed[seed] = statistics.fmean(arq[seed][i] - base[seed][i] for i in common)
    stats = interval(list(per_seed.values()))
    return {
        "per_seed": per_seed,
        "mean": stats["mean"],
        "ci95": stats["ci95"],
        "seeds": len(per_seed),
        "verdict": verdict(stats["ci95"]),
    }


def seed_ratios(top: list[dict[str, Any]], bottom: list[dict[str, Any]], key: str) -> dict[int, float]:
    """top[key] / bottom[key] per seed where both ran (a search's time over another's of the same seed and grid)."""
    below = {r["seed"]: r[key] for r in bottom if r[key]}
    return {r["seed"]: r[key] / below[r["seed"]] for r in top if r[key] is not None and r["seed"] in below}


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per (budget, method) statistics over seeds, ARQ minus each baseline, ARQ / HAQ search time."""
    fp32 = [r for r in records if r["method"] == "fp32"]
    rows, diffs, times = [], [], []
    for budget in sorted({r["budget"] for r in records if r["method"] != "fp32"}, reverse=True):
        at = [r for r in records if r["budget"] == budget]
        methods = sorted({r["method"] for r in at}, key=lambda m: (ORDER.index(m) if m in ORDER else 9, m))
        by_method = {m: sorted((r for r in at if r["method"] == m), key=lambda r: r["seed"]) for m in methods}
        for method, runs in by_method.items():
            rows.append(
                {
                    "budget": budget,
                    "method": method,
                    "seeds": [r["seed"] for r in runs],
                    **{k: interval([r[k] for r in runs]) for k in METRICS},
                }
            )
        if "arq" in by_method:
            arq = {r["seed"]: r["radii"] for r in by_method["arq"]}
            for method, runs in by_method.items():
                if method != "arq":
                    diffs.append(
                        {
                            "budget": budget,
                            "baseline": method,
                            **paired_difference(arq, {r["seed"]: r["radii"] for r in runs}),
                        }
                    )
        if "arq" in by_method and "haq" in by_method:
            mean = {
                (m, k): interval([r[k] for r in by_method[m]])["mean"]
                for m in ("arq", "haq")
                for k in (*TIME_PARTS, "search_cost_seconds")
            }
            t_arq, t_haq = mean["arq", "search_cost_seconds"], mean["haq", "search_cost_seconds"]
            per_seed = seed_ratios(by_method["arq"], by_method["haq"], "search_cost_seconds")
            times.append(
                {
                    "budget": budget,
                    **{f"{m}_{k}": mean[m, k] for m in ("arq", "haq") for k in TIME_PARTS},
                    "arq_seconds": t_arq,
                    "haq_seconds": t_haq,
                    "ratio": t_arq / t_haq if t_arq is not None and t_haq else None,
                    "ratio_per_seed": per_seed,
                    "ratio_ci95": interval(list(per_seed.values()))["ci95"],
                }
            )
    fp = interval([r["acr"] for r in fp32]) if fp32 else None
    return {
        "fp32_acr": fp,
        "rows": rows,
        "differences": diffs,
        "search_time": times,
        "points": [
            {k: r[k] for k in ("seed", "budget", "method", "acr", "bitops_fraction", "clean_accuracy")}
            for r in records
            if r["method"] != "fp32"
        ],
        "provenance": next((r["provenance"] for r in records if r.get("provenance")), None),
        "runs": sorted({r["run"] for r in records}),
    }


def collect_matrix(work: Path, image_radii: Callable[[Path], dict[int, float]]) -> dict[str, Any]:
    records = collect_runs(work, image_radii)
    if not records:
        raise SystemExit(f"no finished run under {work}/seed-*: run the benchmark with --seeds first")
    return summarize(records)


def _fmt(stat: dict[str, Any], digits: int = 4, scale: float = 1.0) -> str:
    if stat["mean"] is None:
        return "-"
    text = f"{scale * stat['mean']:.{digits}f}"
    if stat["ci95"]:
        text += f" [{scale * stat['ci95'][0]:.{digits}f}, {scale * stat['ci95'][1]:.{digits}f}]"
    return text


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def results_table(data: dict[str, Any]) -> str:
    """Per (budget, method): the seeds, each metric's mean [95% interval over seeds], the search's cost."""
    return markdown_table(
        ["budget", "method", "seeds", "ACR", "clean acc", "cert acc r=0.25", "cert acc r=0.5", "BitOPs %", "search s"],
        [
            [
                f"{r['budget']:g}",
                r["method"],
                len(r["seeds"]),
                _fmt(r["acr"]),
                _fmt(r["clean_accuracy"], 3),
                _fmt(r["cert_acc_0.25"], 3),
                _fmt(r["cert_acc_0.5"], 3),
                _fmt(r["bitops_fraction"], 3, 100),
                _fmt(r["search_cost_seconds"], 0),
            ]
            for r in data["rows"]
        ],
    )


def differences_table(data: dict[str, Any]) -> str:
    """ARQ minus each baseline per budget: mean paired dACR, its interval over seeds, each seed's, the verdict."""
    return markdown_table(
        ["budget", "ARQ minus", "seeds", "mean dACR", "95% CI over seeds", "per seed", "verdict"],
        [
            [
                f"{d['budget']:g}",
                d["baseline"],
                d["seeds"],
                "-" if d["mean"] is None else f"{d['mean']:+.4f}",
                "-" if not d["ci95"] else f"[{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}]",
                ", ".join(f"{v:+.4f}" for v in d["per_seed"].values()),
                d["verdict"],
            ]
            for d in data["differences"]
        ],
    )


def markdown(data: dict[str, Any], plot: str | None = None) -> str:
    p = data.get("provenance") or {}
    c, s, f = p.get("certify", {}), p.get("search", {}), p.get("finetune", {})
    seeds = sorted({pt["seed"] for pt in data["points"]})
    head = (
        f"{p.get('arch', '?')} on {p.get('dataset', '?')}, sigma = {p.get('sigma', '?')}; search seeds "
        f"{seeds} (search, calibration and fine-tune seeded alike for every method); CERTIFY n0 = {c.get('n0')}, "
        f"n = {c.get('n')}, alpha = {c.get('alpha')} on {index_count(p.get('test_indices', []))} test images. Search: "
        f"{s.get('episodes')} episodes on {s.get('search_images')} validation images, n_p = {s.get('n_p')} "
        f"({s.get('estimator')}), pin first/last: {s.get('pin_first_last')}, final top-k {s.get('final_top_k')}; "
        f"fine-tune {f.get('epochs')} epoch(s) on {f.get('images')} noisy images. Intervals: Student-t 95% over "
        "seeds."
    )
    fp = data.get("fp32_acr")
    table, diffs = results_table(data), differences_table(data)
    parts = ("episodes", "FP32 reference", "final selection", "total")
    times = markdown_table(
        [
            "budget",
            *(f"{m} {part} s" for m in ("ARQ", "HAQ") for part in parts),
            "ARQ / HAQ (total)",
            "per seed",
            "95% CI over seeds",
        ],
        [
            [
                f"{t['budget']:g}",
                *(_seconds(t.get(f"{m}_{k}")) for m in ("arq", "haq") for k in (*TIME_PARTS, "seconds")),
                "-" if t["ratio"] is None else f"{t['ratio']:.2f}",
                ", ".join(f"{v:.2f}" for v in t.get("ratio_per_seed", {}).values()) or "-",
                "-" if not t.get("ratio_ci95") else f"[{t['ratio_ci95'][0]:.2f}, {t['ratio_ci95'][1]:.2f}]",
            ]
            for t in data["search_time"]
        ],
    )
    fp_line = f"FP32 ACR {fp['mean']:.4f}.\n\n" if fp and fp["mean"] is not None else ""
    figure = f"\n\n![ACR vs BitOPs]({plot})\n" if plot else "\n"
    return (
        f"# Search benchmark across seeds\n\n{head}\n\n{fp_line}{table}\n\n## ARQ minus each baseline (paired over "
        f"test images within a seed, interval over seeds)\n\n{diffs}\n\n## Search wall time\n\nMean over seeds; search s above = episodes + FP32 "
        f"reference + final selection; the ratio of the mean totals, each seed's ratio and their interval.\n\n{times}{figure}"
    )


def plot(data: dict[str, Any], path: Path) -> Path:
    """ACR against BitOPs %, one panel per budget: every seed's point (small) and each method's mean (large)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = sorted({pt["budget"] for pt in data["points"]}, reverse=True)
    methods = [m for m in ORDER if any(pt["method"] == m for pt in data["points"])]
    colors = dict(zip(ORDER, ("tab:red", "tab:blue", "tab:gray", "tab:green")))
    fig, axes = plt.subplots(1, len(budgets), figsize=(4.2 * len(budgets), 3.6), squeeze=False)
    for ax, budget in zip(axes[0], budgets):
        for method in methods:
            pts = [pt for pt in data["points"] if pt["budget"] == budget and pt["method"] == method]
            if not pts:
                continue
            xs, ys = [100 * pt["bitops_fraction"] for pt in pts], [pt["acr"] for pt in pts]
            ax.scatter(xs, ys, s=14, alpha=0.5, color=colors.get(method))
            ax.scatter(
                [statistics.fmean(xs)],
                [statistics.fmean(ys)],
                s=90,
                marker="D",
                color=colors.get(method),
                edgecolor="black",
                label=method,
            )
        ax.axvline(100 * budget, color="black", lw=0.6, ls=":")
        ax.set_title(f"budget {budget:g}")
        ax.set_xlabel("BitOPs % of FP32")
        ax.set_ylabel("ACR (test subset)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
