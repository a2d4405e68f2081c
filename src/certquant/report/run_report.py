"""The report of a ``certquant run`` folder: ``results.json`` (every number), ``report.md``, a self-contained
``report.html`` and PNG plots. Pure functions of the run's files, so ``certquant report DIR`` rebuilds it any time."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from certquant.models.checkpoint import read_payload
from certquant.quant import Policy
from certquant.report.certified import CertifyRun, load_certify_run, plot_certified_accuracy
from certquant.smoothing.metrics import certify_metrics, certified_accuracy
from certquant.utils.errors import CertquantError
from certquant.utils.io import atomic_write_json, atomic_write_text, read_jsonl
from certquant.utils.tables import markdown_table

RADII = (0.25, 0.5, 0.75, 1.0)
PLOTS = {"certified": "certified_accuracy.png", "pareto": "bitops_vs_acr.png"}


def _method_folders(out: Path, identity: dict[str, Any]) -> list[tuple[float, str, Path]]:
    """(budget, method, folder) of every stage, as the run's identity records them."""
    return [(float(s["budget"]), s["method"], out / s["folder"]) for s in identity.get("stages", [])]


def _row(name: str, method: str, budget: float | None, run: CertifyRun, cost: dict[str, Any],
         search: dict[str, Any] | None, finetune: dict[str, Any] | None, sha256: str) -> dict[str, Any]:
    metrics = certify_metrics(run.records)
    summary = run.summary or {}
    return {
        "name": name, "method": method, "budget": budget,
        "bitops_fraction": cost["bitops_fraction"], "model_size_bits": cost["model_size_bits"],
        "clean_accuracy": metrics["clean_accuracy"], "clean_accuracy_ci95": metrics["clean_accuracy_ci95"],
        "acr": metrics["acr"], "acr_ci95": metrics["acr_ci95"], "abstain_rate": metrics["abstain_rate"],
        "certified_accuracy": {f"{r:g}": certified_accuracy(run.records, r) for r in RADII},
        "num_images": metrics["num_images"],
        "search_seconds": search.get("seconds") if search else None,
        "search_episodes": search.get("episodes") if search else None,
        "finetune_seconds": (finetune or {}).get("seconds"),
        "certify_seconds": summary.get("total_seconds") or summary.get("seconds"),
        "checkpoint_sha256": sha256,
    }


def _search_points(folder: Path) -> list[dict[str, Any]]:
    """Every evaluated policy of a search with its BitOPs and search-set terms (ACR when the reward measured it)."""
    points = []
    for record in read_jsonl(folder / "search" / "history.jsonl"):
        if record.get("cached"):
            continue
        terms = record.get("terms", {})
        points.append({"episode": record["episode"], "bitops_fraction": record["bitops_fraction"],
                       "reward": record["reward"], "acr": terms.get("acr"), "clean_accuracy": terms.get("clean_accuracy"),
                       "noisy_accuracy": terms.get("noisy_accuracy")})
    return points


def collect_results(out: str | Path) -> dict[str, Any]:
    """Read every stage's output of a run folder into one JSON-able dict."""
    out = Path(out)
    run_file = out / "run.json"
    if not run_file.is_file():
        raise CertquantError(f"{out} holds no run.json: give the --out folder of 'certquant run'")
    run_info = json.loads(run_file.read_text())
    identity = run_info["identity"]
    fp32_run = load_certify_run(out / "fp32" / "certify", "FP32")
    base = read_payload(identity["checkpoint"]) if Path(identity["checkpoint"]).is_file() else {}
    fp_cost = {"bitops_fraction": 1.0, "model_size_bits": None}
    rows = [_row("FP32", "fp32", None, fp32_run, fp_cost, None, None, identity["checkpoint_sha256"])]
    runs, policies, searches = [fp32_run], {}, {}
    for budget, method, folder in _method_folders(out, identity):
        if not (folder / "model.pt").is_file() or not (folder / "certify" / "certificates.jsonl").is_file():
            continue  # a stage still to run
        name = f"{method}@{budget:g}"
        payload = read_payload(folder / "model.pt")
        search_summary_path = folder / "search" / "summary.json"
        search = json.loads(search_summary_path.read_text()) if search_summary_path.is_file() else None
        run = load_certify_run(folder / "certify", name)
        rows.append(_row(name, method, budget, run, payload["cost"], search, payload.get("finetune"), ""))
        if fp_cost["model_size_bits"] is None:
            fp_cost["model_size_bits"] = 32 * _quantized_weight_count(payload)
        runs.append(run)
        policies[name] = payload["policy"]
        searches[name] = _search_points(folder)
    rows[0]["model_size_bits"] = fp_cost["model_size_bits"]
    cfg = identity["config"]
    return {
        "rows": rows,
        "exported": _exported_rows(out, identity, rows),
        "policies": policies,
        "searches": searches,
        "provenance": {
            "dataset": cfg["dataset"], "checkpoint": identity["checkpoint"],
            "checkpoint_sha256": identity["checkpoint_sha256"], "arch": base.get("arch"),
            "sigma": identity["sigma"], "test_indices": identity["test_indices"],
            "certify": cfg["certify"], "search": cfg["search"], "quantize": cfg["quantize"],
            "finetune": cfg["finetune"],
            "software": run_info.get("software"), "started": run_info.get("created"),
        },
        "_runs": runs,
    }


def _exported_rows(out: Path, identity: dict[str, Any], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """With ``export: onnx``: per method, the fake-quantized model's and the exported file's certified figures and the
    share of noisy samples on which their predictions agree."""
    by_name = {row["name"]: row for row in rows}
    exported = []
    for budget, method, folder in _method_folders(out, identity):
        name = f"{method}@{budget:g}"
        run_dir = folder / "onnx-certify"
        if name not in by_name or not (run_dir / "summary.json").is_file():
            continue
        summary = json.loads((run_dir / "summary.json").read_text())
        agreement = json.loads((folder / "agreement.json").read_text()) if (folder / "agreement.json").is_file() else {}
        exported.append({"name": name, "acr": by_name[name]["acr"], "onnx_acr": summary["acr"],
                         "clean_accuracy": by_name[name]["clean_accuracy"], "onnx_clean_accuracy": summary["clean_accuracy"],
                         "agreement": agreement.get("share"), "agreement_samples": agreement.get("total"),
                         "onnx_bytes": (folder / "model.onnx").stat().st_size if (folder / "model.onnx").is_file() else None})
    return exported


def _exported_table(results: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    headers = ["model", "ACR (PyTorch)", "ACR (ONNX)", "clean acc (PyTorch)", "clean acc (ONNX)", "agreement",
               "noisy samples", "ONNX KiB"]
    rows = [[r["name"], f"{r['acr']:.3f}", f"{r['onnx_acr']:.3f}", f"{r['clean_accuracy']:.3f}",
             f"{r['onnx_clean_accuracy']:.3f}", f"{r['agreement']:.4f}" if r["agreement"] is not None else "-",
             r["agreement_samples"] or "-", f"{r['onnx_bytes'] / 1024:.1f}" if r["onnx_bytes"] else "-"]
            for r in results.get("exported", [])]
    return headers, rows


EXPORTED_TITLE = "Exported ONNX models, certified as onnxruntime runs them"


def _quantized_weight_count(payload: dict[str, Any]) -> int:
    """Number of weights in the policy's layers (FP32's model size is 32 bits each, in the cost model's units)."""
    names = {name for name, _ in Policy.from_dict(payload["policy"]).items()}
    return sum(v.numel() for k, v in payload["state_dict"].items() if k.endswith(".weight") and k[: -len(".weight")] in names)


def _table_rows(results: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    headers = ["model", "BitOPs %", "size (KiB)", "clean acc", "ACR"] + [f"cert acc r={r:g}" for r in RADII] + ["search s"]
    rows = []
    for row in results["rows"]:
        size = f"{row['model_size_bits'] / 8 / 1024:.1f}" if row["model_size_bits"] else "-"
        search = f"{row['search_seconds']:.0f}" if row["search_seconds"] is not None else "-"
        rows.append([row["name"], f"{100 * row['bitops_fraction']:.3f}", size, f"{row['clean_accuracy']:.3f}",
                     f"{row['acr']:.3f}"] + [f"{row['certified_accuracy'][f'{r:g}']:.3f}" for r in RADII] + [search])
    return headers, rows


def _bits_rows(results: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    names = list(results["policies"])
    if not names:
        return [], []
    layers = [entry["name"] for entry in results["policies"][names[0]]["layers"]]
    headers = ["layer"] + [f"{n} (W/A)" for n in names]
    bits = {n: {e["name"]: f"{e['w_bits']}/{e['a_bits']}" for e in results["policies"][n]["layers"]} for n in names}
    return headers, [[layer] + [bits[n].get(layer, "-") for n in names] for layer in layers]


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not dominated by one with lower-or-equal BitOPs and higher-or-equal ACR, sorted by BitOPs."""
    front, best = [], float("-inf")
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return front


def plot_pareto(results: dict[str, Any], path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {name: [(p["bitops_fraction"], p["acr"]) for p in points if p["acr"] is not None]
              for name, points in results["searches"].items()}
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    everything = []
    for name, points in series.items():
        ax.scatter([100 * x for x, _ in points], [y for _, y in points], s=14, alpha=0.6, label=name)
        everything += points
    front = pareto_front(everything)
    ax.plot([100 * x for x, _ in front], [y for _, y in front], "k--", lw=1, label="Pareto front")
    for row in results["rows"]:
        if row["budget"] is not None:
            ax.axvline(100 * row["budget"], color="grey", lw=0.5)
    ax.set_xlabel("BitOPs (% of FP32)")
    ax.set_ylabel("ACR on the search set")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _markdown_report(results: dict[str, Any], plots: dict[str, Path]) -> str:
    prov = results["provenance"]
    c = prov["certify"]
    headers, rows = _table_rows(results)
    lines = ["# certquant report", "",
             f"{prov['arch']} on {prov['dataset']}, sigma = {prov['sigma']}, CERTIFY with n0 = {c['n0']}, n = {c['n']}, "
             f"alpha = {c['alpha']} on {len(prov['test_indices'])} test images (every {c['skip']}th).", "",
             markdown_table(headers, rows), ""]
    for key, title in (("certified", "Certified accuracy vs radius"), ("pareto", "BitOPs vs ACR of every evaluated policy")):
        if key in plots:
            lines += [f"## {title}", "", f"![{title}]({plots[key].name})", ""]
    eh, erows = _exported_table(results)
    if erows:
        lines += [f"## {EXPORTED_TITLE}", "", markdown_table(eh, erows), ""]
    bh, brows = _bits_rows(results)
    if brows:
        lines += ["## Per-layer bit-widths of each best policy", "", markdown_table(bh, brows), ""]
    lines += ["## Provenance", "", "```json", json.dumps(prov, indent=1), "```", ""]
    return "\n".join(lines)


def _html_table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_report(results: dict[str, Any], plots: dict[str, Path]) -> str:
    prov = results["provenance"]
    headers, rows = _table_rows(results)
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>certquant report</title><style>",
             "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;margin:1em 0}",
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}",
             "pre{background:#f7f7f7;padding:1em;overflow:auto}</style></head><body>",
             "<h1>certquant report</h1>",
             f"<p>{html.escape(str(prov['arch']))} on {html.escape(prov['dataset'])}, sigma = {prov['sigma']}, "
             f"{len(prov['test_indices'])} test images.</p>", _html_table(headers, rows)]
    for key, title in (("certified", "Certified accuracy vs radius"), ("pareto", "BitOPs vs ACR of every evaluated policy")):
        if key in plots:
            data = base64.b64encode(plots[key].read_bytes()).decode()
            parts.append(f"<h2>{title}</h2><img alt='{title}' src='data:image/png;base64,{data}'>")
    eh, erows = _exported_table(results)
    if erows:
        parts += [f"<h2>{EXPORTED_TITLE}</h2>", _html_table(eh, erows)]
    bh, brows = _bits_rows(results)
    if brows:
        parts += ["<h2>Per-layer bit-widths of each best policy</h2>", _html_table(bh, brows)]
    parts += ["<h2>Provenance</h2><pre>", html.escape(json.dumps(prov, indent=1)), "</pre></body></html>"]
    return "\n".join(parts)


def write_report(out: str | Path) -> dict[str, Any]:
    """(Re)build results.json, report.md, report.html and the plots of a run folder; return the results."""
    out = Path(out)
    results = collect_results(out)
    runs = results.pop("_runs")
    plots = {"certified": plot_certified_accuracy(runs, out / PLOTS["certified"], "certified accuracy (test subset)")}
    pareto = plot_pareto(results, out / PLOTS["pareto"])
    if pareto is not None:
        plots["pareto"] = pareto
    atomic_write_json(out / "results.json", results)
    atomic_write_text(out / "report.md", _markdown_report(results, plots))
    atomic_write_text(out / "report.html", _html_report(results, plots))
    return results


def summary_table(results: dict[str, Any]) -> str:
    """The report's main table as markdown (what ``certquant run`` prints at the end)."""
    return markdown_table(*_table_rows(results))
