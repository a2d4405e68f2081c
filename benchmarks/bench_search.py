"""The search benchmark (issue 6): ARQ against HAQ's reward, random policies and uniform bits at the same budgets.

The grid is one ``certquant run`` (the pipeline: FP32 certified once, each (budget, method) searched, its best policy
calibrated and fine-tuned the same way, then certified with full CERTIFY on the same test subset) in
``WORK/budgets-<F1>-<F2>[-<methods>]``. With ``--engine ray`` its searches, fine-tunes and certifications run as Ray
tasks in dependency order (``--workers`` at a time, ``--gpus-per-worker`` of a GPU each; see ``certquant.engine``),
else one after another. ``--report-only`` merges whatever runs exist under WORK (also the per-budget folders
``budget-<F>`` of earlier versions) into one table with the full-precision model on the first row:

    python benchmarks/bench_search.py [--config configs/bench-search.yaml] [--budgets 0.015625 0.0125]
        [--methods arq haq] [--engine ray [--workers K] [--gpus-per-worker G]] [--work runs/bench_search]
        [--name search] [--report-only] [--seeds 0 1 2] [--set KEY=VALUE ...] [--results DIR]

With ``--seeds`` the grid runs once per search seed in ``WORK/seed-S`` and the report is the across-seeds one of
``search_matrix.py`` (means and intervals over seeds, ARQ minus each baseline paired, search time, ACR-vs-BitOPs plot).

Writes benchmarks/results/<name>.json and <name>.md: per model clean smoothed accuracy, ACR, certified accuracy at
r = 0.25 / 0.5, BitOPs fraction, search seconds; then the aims of issue 6 checked (ARQ vs FP32 at the W4A4 budget,
ARQ vs every baseline at each budget), with the margins.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import search_matrix
from certquant.data import index_count
from certquant.engine import EngineConfig
from certquant.pipeline import load_config
from certquant.pipeline.run import Pipeline, budget_dir
from certquant.search.selection import SELECTION_FILE
from certquant.smoothing.metrics import counted_radius, mean_ci
from certquant.train import resolve_device
from certquant.utils import atomic_write_json, read_jsonl
from certquant.utils.tables import markdown_table
from common import RESULTS, ROOT, device_name, write_results

W4A4 = 16 / 1024
BENCH_FILE = "bench.json"  # a grid run's device, engine and wall time, written when the whole run is done
ACR_MARGIN, CLEAN_MARGIN = 0.02, 0.015  # issue 6: ARQ within 0.02 ACR and 1.5 points of clean accuracy of FP32


def run_folder(work: Path, budgets: list[float], methods: list[str] | None) -> Path:
    """``WORK/budgets-<F1>-<F2>`` for all the config's methods, ``WORK/budgets-<F1>-<F2>-<m1>-<m2>`` for a subset."""
    name = "budgets-" + "-".join(f"{float(b):g}" for b in budgets)
    return work / (f"{name}-{'-'.join(methods)}" if methods else name)


def run_grid(
    config: str,
    budgets: list[float],
    work: Path,
    methods: list[str] | None = None,
    engine: EngineConfig | None = None,
    overrides: list[str] | None = None,
) -> Path:
    """One pipeline run over ``budgets`` x the config's methods (or ``methods``) on ``engine`` (default: the config's);
    resumable: rerunning continues where it stopped; ``overrides``: run-config KEY=VALUE (a search seed:
    ``search_matrix.seed_overrides``). Writes ``bench.json`` (device, engine, wall seconds)."""
    cfg = load_config(config, overrides)
    search = dataclasses.replace(cfg.search, budgets=list(budgets), methods=methods or cfg.search.methods)
    cfg = dataclasses.replace(cfg, search=search, engine=engine or cfg.engine)
    out = run_folder(work, budgets, methods)
    device = resolve_device(cfg.device)
    pipeline = Pipeline(cfg, out, resume=True)
    if (out / BENCH_FILE).is_file():  # finished (bench.json is written last): not resumed, so no model is re-made
        pipeline.folder.claim(resume=True)  # ... but a finished run of other settings is still refused
        print(f"{out}: finished, not run again")
        return out
    started = time.time()
    pipeline.run()
    atomic_write_json(
        out / BENCH_FILE,
        {
            "device": device_name(device),
            "engine": dataclasses.asdict(cfg.engine),
            "seconds": time.time() - started,
            "date": time.strftime("%Y-%m-%d %H:%M"),
        },
    )
    return out


def collect(work: Path) -> dict[str, Any]:
    """Merge every finished run of ``work``: one FP32 row (checked identical across runs), then each method."""
    runs = sorted(p.parent for p in work.glob("budget*/results.json"))
    seen: set[str] = set()
    if not runs:
        raise SystemExit(f"no finished run under {work}: run the benchmark first")
    fp32, rows, runs_info, radii = None, [], [], {}
    for run in runs:
        results = json.loads((run / "results.json").read_text())
        bench = json.loads((run / BENCH_FILE).read_text()) if (run / BENCH_FILE).exists() else {}
        runs_info.append({"folder": run.name, **bench})
        for row in results["rows"]:
            if row["method"] == "fp32":
                if fp32 is not None and (row["acr"], row["clean_accuracy"]) != (fp32["acr"], fp32["clean_accuracy"]):
                    print(
                        f"note: FP32 of {run.name} differs from the first run's (ACR {row['acr']:.4f} vs "
                        f"{fp32['acr']:.4f}); the first is reported"
                    )
                radii.setdefault("FP32", image_radii(run / "fp32" / "certify"))
                fp32 = fp32 or row
            else:
                if row["name"] in seen:
                    raise SystemExit(
                        f"{row['name']} is in two runs under {work} (e.g. budgets-<F> and "
                        f"budgets-<F>-{row['method']}): keep one, then rerun --report-only"
                    )
                seen.add(row["name"])
                rows.append({**row, **selection_summary(budget_dir(run, row["budget"]) / row["method"] / "search")})
                radii[row["name"]] = image_radii(budget_dir(run, row["budget"]) / row["method"] / "certify")
    rows.sort(key=lambda r: (-r["budget"], r["method"] != "arq", r["method"]))
    return {
        "provenance": results["provenance"],
        "runs": runs_info,
        "rows": [fp32, *rows],
        "aims": aims(fp32, rows, radii),
    }


def selection_summary(search_dir: Path) -> dict[str, Any]:
    """The final selection of a search, when it made one: each candidate's search reward and its reward on the fresh
    images (how much of the search's best was luck on the search set)."""
    path = search_dir / SELECTION_FILE
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    return {
        "final_selection": {
            "chosen_episode": data["chosen_episode"],
            "candidates": [{k: c[k] for k in ("episode", "search_reward", "final_reward")} for c in data["candidates"]],
        }
    }


def image_radii(certify_dir: Path) -> dict[int, float]:
    """Per test image, the certified radius counted when correct (0 otherwise): the terms of the ACR."""
    return {int(r["index"]): counted_radius(r) for r in read_jsonl(certify_dir / "certificates.jsonl")}


def paired_ci(a: dict[int, float], b: dict[int, float]) -> list[float] | None:
    """95% CI of ACR(a) - ACR(b) from the per-image differences on the same test images (paired, so the images'
    own difficulty cancels)."""
    return mean_ci([a[i] - b[i] for i in sorted(a) if i in b])


def aims(fp32: dict, rows: list[dict], radii: dict[str, dict[int, float]]) -> list[dict]:
    """Issue 6's aims, each with its margin, the paired 95% CI of ACR differences and whether it holds."""
    out = []
    for budget in sorted({r["budget"] for r in rows}, reverse=True):
        at = {r["method"]: r for r in rows if r["budget"] == budget}
        arq = at.get("arq")
        if arq is None:
            continue
        if abs(budget - W4A4) < 1e-12:
            d_acr, d_clean = arq["acr"] - fp32["acr"], arq["clean_accuracy"] - fp32["clean_accuracy"]
            out.append(
                {
                    "aim": f"ARQ ACR within {ACR_MARGIN} of FP32",
                    "budget": budget,
                    "difference": d_acr,
                    "ci95": paired_ci(radii[arq["name"]], radii["FP32"]),
                    "holds": d_acr >= -ACR_MARGIN,
                }
            )
            out.append(
                {
                    "aim": f"ARQ clean accuracy within {CLEAN_MARGIN * 100:g} points of FP32",
                    "budget": budget,
                    "difference": d_clean,
                    "holds": d_clean >= -CLEAN_MARGIN,
                }
            )
        for method, row in at.items():
            if method != "arq":
                d = arq["acr"] - row["acr"]
                out.append(
                    {
                        "aim": f"ARQ ACR >= {method}",
                        "budget": budget,
                        "difference": d,
                        "ci95": paired_ci(radii[arq["name"]], radii[row["name"]]),
                        "holds": d >= 0,
                    }
                )
    return out


def markdown(data: dict) -> str:
    p = data["provenance"]
    c, s, f = p["certify"], p["search"], p["finetune"]
    warmup = s["agent"]["warmup_episodes"] if "agent" in s else s["warmup"]  # result files before the typed configs
    bits = [s["min_bits"], s["max_bits"]] if "min_bits" in s else s["w_bits"]
    calibration = p["quantize"]["calibration_images"] if "quantize" in p else f["calibration_images"]
    devices = sorted({r.get("device", "?") for r in data["runs"]})
    k = s.get("final_top_k", 1)
    selection = (
        f" Final selection: each search's {k} best policies re-scored on {s['final_images']} fresh validation "
        "images, the best there kept."
        if k > 1
        else ""
    )
    head = (
        f"{p['arch']} on {p['dataset']}, sigma = {p['sigma']}; CERTIFY n0 = {c['n0']}, n = {c['n']}, alpha = "
        f"{c['alpha']} on {index_count(p['test_indices'])} test images (every {c['skip']}th). Search: {s['episodes']} "
        f"episodes ({warmup} warm-up) on {s['search_images']} held-out validation images, n_p = {s['n_p']} "
        f"({s['estimator']}), ARQ reward 0.1 * (dACR + {s['clean_weight']} * d clean accuracy), bits in "
        f"{bits}, pin first/last: {s['pin_first_last']}; random: the same number of evaluations.{selection} "
        f"Every chosen policy: calibrated on {calibration} noisy images, fine-tuned {f['epochs']} epoch(s) on "
        f"{f['images']} noisy training images (lr {f['lr']}). Device: {', '.join(devices)}."
    )
    rows = [
        [
            r["name"],
            f"{100 * r['bitops_fraction']:.3f}",
            f"{r['clean_accuracy']:.3f}",
            f"{r['acr']:.3f}",
            f"{r['certified_accuracy']['0.25']:.3f}",
            f"{r['certified_accuracy']['0.5']:.3f}",
            "-" if r["search_seconds"] is None else f"{r['search_seconds']:.0f}",
        ]
        for r in data["rows"]
    ]
    table = markdown_table(
        ["model", "BitOPs %", "clean acc", "ACR", "cert acc r=0.25", "cert acc r=0.5", "search s"], rows
    )
    checks = markdown_table(
        ["aim", "budget", "difference", "paired 95% CI", "holds"],
        [
            [
                a["aim"],
                f"{a['budget']:g}",
                f"{a['difference']:+.4f}",
                _interval(a.get("ci95")),
                "yes" if a["holds"] else "NO",
            ]
            for a in data["aims"]
        ],
    )
    return f"# Search benchmark\n\n{head}\n\n{table}\n\n## Aims (issue 6)\n\n{checks}\n"


def _interval(ci: list[float] | None) -> str:
    return "-" if not ci else f"[{ci[0]:+.4f}, {ci[1]:+.4f}]"


def report_seeds(work: Path, name: str, results: Path | None) -> str:
    """The across-seeds report (``search_matrix``): <name>.json, .md and the ACR-vs-BitOPs plot <name>.png."""
    data = search_matrix.collect_matrix(work, image_radii)
    png = search_matrix.plot(data, (results or RESULTS) / f"{name}.png")
    text = search_matrix.markdown(data, png.name)
    write_results(name, data, text, results)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "bench-search.yaml"))
    parser.add_argument("--budgets", type=float, nargs="*", help="run only these budgets (default: the config's)")
    parser.add_argument("--work", default=str(ROOT / "runs" / "bench_search"))
    parser.add_argument("--name", default="search", help="results file stem under benchmarks/results")
    parser.add_argument("--report-only", action="store_true", help="only merge the finished runs into the table")
    parser.add_argument("--run-only", action="store_true", help="only run (or resume) the grid; no table")
    parser.add_argument(
        "--methods",
        nargs="*",
        choices=["uniform", "arq", "haq", "random"],
        help="run only these methods (default: the config's)",
    )
    parser.add_argument(
        "--engine",
        choices=["local", "ray"],
        default=None,
        help="local: the stages one after another; ray: as Ray tasks (default: the config's engine)",
    )
    parser.add_argument("--workers", type=int, default=None, help="ray: stages at once (default: the cluster's CPUs)")
    parser.add_argument("--gpus-per-worker", type=float, default=0.0, help="ray: GPU share of each stage")
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="*",
        help="search seeds: the grid once per seed in WORK/seed-S, reported across seeds",
    )
    parser.add_argument("--results", default=None, help="results folder (default benchmarks/results)")
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="run-config overrides of every run, e.g. certify.max_images=200 (certquant run --help)",
    )
    args = parser.parse_args(argv)
    results = Path(args.results) if args.results else None
    work = Path(args.work)
    budgets = args.budgets or load_config(args.config, args.set).search.budgets
    engine = None
    if args.engine is not None:
        engine = EngineConfig(engine=args.engine, workers=args.workers, gpus_per_worker=args.gpus_per_worker)
    if not args.report_only:
        for seed in args.seeds or [None]:
            seeded = [] if seed is None else search_matrix.seed_overrides(seed)
            if seed is not None:
                shared = search_matrix.share_fp32_certificates(work, seed, run_folder(work, budgets, args.methods).name)
                if shared is not None:
                    print(f"seed {seed}: FP32's certificates copied from {shared} (same model, images and noise)")
            run_grid(
                args.config,
                budgets,
                work if seed is None else search_matrix.seed_work(work, seed),
                args.methods,
                engine,
                [*args.set, *seeded],
            )
    if args.run_only:
        return
    if args.seeds is not None:
        print(report_seeds(work, args.name, results))
        return
    data = collect(work)
    write_results(args.name, data, markdown(data), results)
    print(markdown(data))


if __name__ == "__main__":
    main()
