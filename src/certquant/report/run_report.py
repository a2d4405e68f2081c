"""The report of a ``certquant run`` folder: ``results.json`` (every number), ``report.md``, a self-contained
``report.html`` and PNG plots. Pure functions of the run's files, so ``certquant report DIR`` rebuilds it any time.

What it shows: the main table; one sentence per method saying whether its ACR and clean accuracy differ from FP32's
beyond sampling noise (paired 95% confidence intervals over the same test images); certified accuracy against
radius; BitOPs against search-set ACR for every policy every method evaluated (HAQ's scored with ARQ's estimator by
the pipeline, ``search.selection.score_history``), with each budget labelled; each best policy's bit-widths per layer
as a chart and a table naming the layer, its type, shape and share of FP32 BitOPs; the provenance, index sets written
as ranges, raw JSON last (collapsed in the HTML)."""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path
from typing import Any

from certquant.data import compact_indices, describe_indices
from certquant.models.checkpoint import build_from_info, read_payload
from certquant.quant import Policy, quantizable_layers
from certquant.quant.checkpoint import input_shape
from certquant.report.certified import CertifyRun, load_certify_run, plot_certified_accuracy
from certquant.search.selection import SCORES_FILE, SELECTION_FILE
from certquant.smoothing.metrics import certified_accuracy, certify_metrics, counted_radius, mean_ci
from certquant.utils.errors import CertquantError
from certquant.utils.io import atomic_write_json, atomic_write_text, file_sha256, read_jsonl
from certquant.utils.paths import check_input_path
from certquant.utils.tables import markdown_table

RADII = (0.25, 0.5, 0.75, 1.0)
PLOTS = {"certified": "certified_accuracy.png", "pareto": "bitops_vs_acr.png", "bits": "bit_widths.png"}


def _method_folders(out: Path, identity: dict[str, Any]) -> list[tuple[float, str, Path]]:
    """(budget, method, folder) of every stage, as the run's identity records them."""
    return [(float(s["budget"]), s["method"], out / s["folder"]) for s in identity.get("stages", [])]


def _row(
    name: str,
    method: str,
    budget: float | None,
    run: CertifyRun,
    cost: dict[str, Any],
    search: dict[str, Any] | None,
    finetune: dict[str, Any] | None,
    sha256: str,
    selection: dict[str, Any] | None = None,
) -> dict[str, Any]:
    metrics = certify_metrics(run.records)
    summary = run.summary or {}
    return {
        "name": name,
        "method": method,
        "budget": budget,
        "bitops_fraction": cost["bitops_fraction"],
        "model_size_bits": cost["model_size_bits"],
        "clean_accuracy": metrics["clean_accuracy"],
        "clean_accuracy_ci95": metrics["clean_accuracy_ci95"],
        "acr": metrics["acr"],
        "acr_ci95": metrics["acr_ci95"],
        "abstain_rate": metrics["abstain_rate"],
        "certified_accuracy": {f"{r:g}": certified_accuracy(run.records, r) for r in RADII},
        "num_images": metrics["num_images"],
        "search_seconds": search.get("seconds") if search else None,
        # the search's one-time FP32 reference (ARQ's estimators: its certification cache) and the final selection
        "reference_seconds": (search.get("reference") or {}).get("seconds") if search else None,
        "selection_seconds": sum(c["seconds"] for c in selection["candidates"]) if selection else None,
        "search_episodes": search.get("episodes") if search else None,
        "final_selection": _final_choice(selection),
        "finetune_seconds": (finetune or {}).get("seconds"),
        "certify_seconds": summary.get("total_seconds") or summary.get("seconds"),
        "checkpoint_sha256": sha256,
    }


def _search_points(folder: Path, chosen: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Every distinct policy a search evaluated, with its BitOPs and search-set terms. A search whose reward did not
    measure ACR (HAQ's) takes it from ``SCORES_FILE`` (ARQ's estimator on the same search set) when the run wrote
    one. ``chosen`` marks the policy the run quantized (same bits)."""
    scored = {(tuple(r["w_bits"]), tuple(r["a_bits"])): r["terms"] for r in read_jsonl(folder / "search" / SCORES_FILE)}
    chosen_key = (tuple(chosen["w_bits"]), tuple(chosen["a_bits"])) if chosen else None
    points, seen = [], set()
    for record in read_jsonl(folder / "search" / "history.jsonl"):
        key = (tuple(record["w_bits"]), tuple(record["a_bits"]))
        if record.get("cached") or key in seen:
            continue
        seen.add(key)
        terms = record.get("terms", {})
        acr_terms = terms if terms.get("acr") is not None else scored.get(key, {})
        points.append(
            {
                "episode": record["episode"],
                "bitops_fraction": record["bitops_fraction"],
                "reward": record["reward"],
                "acr": acr_terms.get("acr"),
                "clean_accuracy": acr_terms.get("clean_accuracy"),
                "noisy_accuracy": terms.get("noisy_accuracy"),
                "acr_from": "search reward"
                if terms.get("acr") is not None
                else ("ARQ's estimator after the search" if key in scored else None),
                "chosen": key == chosen_key,
            }
        )
    return points


def layer_rows(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """Every quantizable layer of a checkpoint's architecture: module name, a short label (conv1, conv2, ..., fc1, in
    forward order), type, weight shape, output shape, MACs and its
    share of FP32 BitOPs (MACs * 32 * 32 over the model's total: the MACs' share). Built from the architecture
    recorded in the checkpoint (a forward pass of zeros finds the shapes); no weights or data are used."""
    layers = quantizable_layers(build_from_info(payload), input_shape(payload))
    total = sum(layer.macs for layer in layers)
    rows: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    for layer in layers:
        kh, kw = layer.kernel_size
        if layer.kind == "conv":
            kind = (
                f"Conv2d {kh}x{kw}"
                + (f" stride {layer.stride[0]}" if layer.stride != (1, 1) else "")
                + (" depthwise" if layer.is_depthwise else (f" groups {layer.groups}" if layer.groups > 1 else ""))
            )
            shape = [layer.out_channels, layer.in_channels // layer.groups, kh, kw]
            output = [layer.out_channels, *layer.out_hw]
        else:
            kind, shape, output = "Linear", [layer.out_channels, layer.in_channels], [layer.out_channels]
        counts[layer.kind] = counts.get(layer.kind, 0) + 1
        label = f"{'conv' if layer.kind == 'conv' else 'fc'}{counts[layer.kind]}"
        rows.append(
            {
                "name": layer.name,
                "label": label,
                "type": kind,
                "weight_shape": shape,
                "output_shape": output,
                "params": layer.params,
                "macs": layer.macs,
                "fp32_bitops_share": layer.macs / total,
            }
        )
    return rows


def _paired(a: CertifyRun, b: CertifyRun, value) -> tuple[float, list[float] | None]:
    """Mean and 95% CI of value(a) - value(b) over the test images both runs certified (paired: each image's own
    difficulty cancels)."""
    by_index = {int(r["index"]): r for r in b.records}
    diffs = [value(r) - value(by_index[int(r["index"])]) for r in a.records if int(r["index"]) in by_index]
    return (sum(diffs) / len(diffs) if diffs else 0.0), mean_ci(diffs)


def _verdict(what: str, diff: float, ci: list[float] | None, unit: str, scale: float = 1.0) -> tuple[str, str]:
    """('ACR -0.005 (paired 95% CI -0.012 to +0.002)', 'inside' | 'below' | 'above')."""
    digits = 1 if scale != 1.0 else 3
    text = f"{what} {scale * diff:+.{digits}f}{unit}"
    if ci is None:
        return text, "inside"
    text += f" (paired 95% CI {scale * ci[0]:+.{digits}f} to {scale * ci[1]:+.{digits}f})"
    if ci[0] > 1e-12:
        return text, "above"
    if ci[1] < -1e-12:
        return text, "below"
    return text, "inside"


def _final_choice(selection: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the final selection chose (None without one): the episode (None: the uniform fallback), its reward on the
    fresh images and the best searched candidate's, so a report can say why a search deployed uniform bits."""
    if selection is None:
        return None
    searched = [c["final_reward"] for c in selection["candidates"] if c["episode"] is not None]
    chosen = next(c for c in selection["candidates"] if c["episode"] == selection["chosen_episode"])
    return {
        "episode": selection["chosen_episode"],
        "uniform_fallback": selection["chosen_episode"] is None,  # only the fallback has no episode
        "candidates": len(selection["candidates"]),
        "reward": chosen["final_reward"],
        "best_searched_reward": max(searched),
    }


def selection_sentences(results: dict[str, Any]) -> list[str]:
    """One sentence per searched row with a final selection: which policy it deploys and why."""
    sentences = []
    for row in results["rows"]:
        choice = row.get("final_selection")
        if not choice:
            continue
        if choice["uniform_fallback"]:
            sentences.append(
                f"{row['name']}: uniform bits scored {choice['reward']:+.4f} on the fresh validation images against "
                f"{choice['best_searched_reward']:+.4f} for the search's best, so it deploys uniform bits "
                "(search.final_uniform_fallback)."
            )
        else:
            sentences.append(
                f"{row['name']}: deploys episode {choice['episode']}'s policy, the best of {choice['candidates']} "
                f"candidates on the fresh validation images (reward {choice['reward']:+.4f})."
            )
    return sentences


def compare_to_fp32(row: dict[str, Any], run: CertifyRun, fp32: CertifyRun) -> dict[str, Any]:
    """How a quantized model's ACR and clean accuracy differ from FP32's on the same test images, and one sentence
    saying whether each difference is inside the noise (its paired 95% CI contains 0) or beyond it."""
    d_acr, acr_ci = _paired(run, fp32, counted_radius)
    d_clean, clean_ci = _paired(run, fp32, lambda r: 1.0 if r["correct"] else 0.0)
    acr_text, acr_side = _verdict("ACR", d_acr, acr_ci, "")
    clean_text, clean_side = _verdict("clean accuracy", d_clean, clean_ci, " points", 100.0)
    n = len(run.records)
    if acr_side == clean_side == "inside":
        meaning = f"both intervals contain 0: on these {n} test images it cannot be told apart from FP32"
    else:
        said = []
        for name, side in (("ACR", acr_side), ("clean accuracy", clean_side)):
            if side != "inside":
                said.append(
                    f"its {name} is {'lower' if side == 'below' else 'higher'} than FP32's beyond sampling "
                    "noise (the interval excludes 0)"
                )
            else:
                said.append(f"its {name} is within sampling noise of FP32's")
        meaning = "; ".join(said)
    sentence = (
        f"{row['name']} ({100 * row['bitops_fraction']:.2f}% of FP32's BitOPs): {acr_text}, {clean_text} "
        f"against FP32; {meaning}."
    )
    return {
        "name": row["name"],
        "acr_difference": d_acr,
        "acr_difference_ci95": acr_ci,
        "acr_verdict": acr_side,
        "clean_accuracy_difference": d_clean,
        "clean_accuracy_difference_ci95": clean_ci,
        "clean_accuracy_verdict": clean_side,
        "sentence": sentence,
    }


def collect_results(out: str | Path) -> dict[str, Any]:
    """Read every stage's output of a run folder into one JSON-able dict."""
    out = check_input_path(out, "run folder", "folder", "give the --out folder of 'certquant run'")
    run_file = out / "run.json"
    if not run_file.is_file():
        raise CertquantError(f"{out} holds no run.json: give the --out folder of 'certquant run'")
    run_info = json.loads(run_file.read_text())
    identity = run_info["identity"]
    fp32_run = load_certify_run(out / "fp32" / "certify", "FP32")
    fp_cost = {"bitops_fraction": 1.0, "model_size_bits": None}
    rows = [_row("FP32", "fp32", None, fp32_run, fp_cost, None, None, identity["checkpoint_sha256"])]
    runs, policies, searches, comparisons, layers, arch = [fp32_run], {}, {}, [], [], None
    for budget, method, folder in _method_folders(out, identity):
        if not (folder / "model.pt").is_file() or not (folder / "certify" / "certificates.jsonl").is_file():
            continue  # a stage still to run
        name = f"{method}@{budget:g}"
        payload = read_payload(folder / "model.pt")
        search_summary_path = folder / "search" / "summary.json"
        search = json.loads(search_summary_path.read_text()) if search_summary_path.is_file() else None
        selection_path = folder / "search" / SELECTION_FILE
        selection = json.loads(selection_path.read_text()) if selection_path.is_file() else None
        run = load_certify_run(folder / "certify", name)
        row = _row(
            name,
            method,
            budget,
            run,
            payload["cost"],
            search,
            payload.get("finetune"),
            file_sha256(folder / "model.pt"),
            selection,
        )
        rows.append(row)
        if fp_cost["model_size_bits"] is None:
            fp_cost["model_size_bits"] = 32 * _quantized_weight_count(payload)
            layers, arch = layer_rows(payload), payload.get("arch")
        runs.append(run)
        policies[name] = payload["policy"]
        policy = Policy.from_dict(payload["policy"])
        searches[name] = _search_points(folder, {"w_bits": policy.w_bits, "a_bits": policy.a_bits})
        comparisons.append(compare_to_fp32(row, run, fp32_run))
    rows[0]["model_size_bits"] = fp_cost["model_size_bits"]
    cfg = identity["config"]
    return {
        "rows": rows,
        "comparisons": comparisons,
        "layers": layers,
        "exported": _exported_rows(out, identity, rows),
        "policies": policies,
        "searches": searches,
        "provenance": {
            "dataset": cfg["dataset"],
            "checkpoint": identity["checkpoint"],
            "checkpoint_sha256": identity["checkpoint_sha256"],
            "arch": arch,
            "sigma": identity["sigma"],
            "test_indices": compact_indices(identity["test_indices"]),
            "certify": cfg["certify"],
            "search": cfg["search"],
            "quantize": cfg["quantize"],
            "finetune": cfg["finetune"],
            "software": run_info.get("software"),
            "machine": run_info.get("machine"),
            "started": run_info.get("created"),
        },
        "_runs": runs,
    }


def _exported_rows(out: Path, identity: dict[str, Any], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """With ``export: onnx``: per method, the fake-quantized model's and the exported file's certified figures and the
    share of noisy samples on which their predictions agree."""
    by_name = {row["name"]: row for row in rows}
    # certify.runtime onnx: the run's own certification is the file's, and the PyTorch model is not certified
    onnx_only = identity.get("config", {}).get("certify", {}).get("runtime") == "onnx"
    exported = []
    for budget, method, folder in _method_folders(out, identity):
        name = f"{method}@{budget:g}"
        run_dir = folder / ("certify" if onnx_only else "onnx-certify")
        if name not in by_name or not (run_dir / "summary.json").is_file() or not (folder / "model.onnx").is_file():
            continue
        summary = json.loads((run_dir / "summary.json").read_text())
        agreement = json.loads((folder / "agreement.json").read_text()) if (folder / "agreement.json").is_file() else {}
        exported.append(
            {
                "name": name,
                "acr": None if onnx_only else by_name[name]["acr"],
                "onnx_acr": summary["acr"],
                "clean_accuracy": None if onnx_only else by_name[name]["clean_accuracy"],
                "onnx_clean_accuracy": summary["clean_accuracy"],
                "agreement": agreement.get("share"),
                "agreement_samples": agreement.get("total"),
                "onnx_bytes": (folder / "model.onnx").stat().st_size if (folder / "model.onnx").is_file() else None,
            }
        )
    return exported


def _exported_table(results: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    headers = [
        "model",
        "ACR (PyTorch)",
        "ACR (ONNX)",
        "clean acc (PyTorch)",
        "clean acc (ONNX)",
        "agreement",
        "noisy samples",
        "ONNX KiB",
    ]
    rows = [
        [
            r["name"],
            "-" if r["acr"] is None else f"{r['acr']:.3f}",
            f"{r['onnx_acr']:.3f}",
            "-" if r["clean_accuracy"] is None else f"{r['clean_accuracy']:.3f}",
            f"{r['onnx_clean_accuracy']:.3f}",
            f"{r['agreement']:.4f}" if r["agreement"] is not None else "-",
            r["agreement_samples"] or "-",
            f"{r['onnx_bytes'] / 1024:.1f}" if r["onnx_bytes"] else "-",
        ]
        for r in results.get("exported", [])
    ]
    return headers, rows


EXPORTED_TITLE = "Exported ONNX models, certified as onnxruntime runs them"
MEANING_TITLE = "What the numbers mean against FP32"
SELECTION_TITLE = "Which policy each search deploys (final selection on fresh validation images)"


def _quantized_weight_count(payload: dict[str, Any]) -> int:
    """Number of weights in the policy's layers (FP32's model size is 32 bits each, in the cost model's units)."""
    names = {name for name, _ in Policy.from_dict(payload["policy"]).items()}
    return sum(
        v.numel() for k, v in payload["state_dict"].items() if k.endswith(".weight") and k[: -len(".weight")] in names
    )


def _table_rows(results: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    headers = (
        ["model", "BitOPs %", "size (KiB)", "clean acc", "ACR"] + [f"cert acc r={r:g}" for r in RADII] + ["search s"]
    )
    rows = []
    for row in results["rows"]:
        size = f"{row['model_size_bits'] / 8 / 1024:.1f}" if row["model_size_bits"] else "-"
        search = f"{row['search_seconds']:.0f}" if row["search_seconds"] is not None else "-"
        rows.append(
            [
                row["name"],
                f"{100 * row['bitops_fraction']:.3f}",
                size,
                f"{row['clean_accuracy']:.3f}",
                f"{row['acr']:.3f}",
            ]
            + [f"{row['certified_accuracy'][f'{r:g}']:.3f}" for r in RADII]
            + [search]
        )
    return headers, rows


def _bits(entry: dict[str, Any]) -> str:
    return f"{entry['w_bits']}/{entry['a_bits']}"


def _bits_rows(results: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """Per layer: name, type, weight shape, output shape, share of FP32 BitOPs, then each method's W/A bits."""
    names = list(results["policies"])
    if not names:
        return [], []
    bits = {n: {e["name"]: _bits(e) for e in results["policies"][n]["layers"]} for n in names}
    described = results.get("layers") or [{"name": e["name"]} for e in results["policies"][names[0]]["layers"]]
    headers = ["layer", "module", "type", "weight shape", "output", "FP32 BitOPs %"] + [f"{n} W/A" for n in names]
    rows = []
    for layer in described:
        shape = "x".join(map(str, layer.get("weight_shape", []))) or "-"
        output = "x".join(map(str, layer.get("output_shape", []))) or "-"
        share = f"{100 * layer['fp32_bitops_share']:.3g}" if "fp32_bitops_share" in layer else "-"
        rows.append(
            [layer.get("label", "-"), layer["name"], layer.get("type", "-"), shape, output, share]
            + [bits[n].get(layer["name"], "-") for n in names]
        )
    return headers, rows


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not dominated by one with lower-or-equal BitOPs and higher-or-equal ACR, sorted by BitOPs."""
    front, best = [], float("-inf")
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return front


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text in the SVG the HTML report inlines
    import matplotlib.pyplot as plt

    return plt


def pareto_series(results: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Per method: the policies that have a search-set ACR (every one, HAQ's too when they were scored)."""
    series = {name: [p for p in points if p["acr"] is not None] for name, points in results["searches"].items()}
    return {k: v for k, v in series.items() if v}


def plot_pareto(results: dict[str, Any], path: Path) -> Path | None:
    """BitOPs (% of FP32) against search-set ACR of every evaluated policy of every method, its chosen policy
    starred, the Pareto front dashed and each budget a labelled vertical line. ``path``'s suffix picks PNG or SVG;
    in an SVG every method's points are the group ``policies-<name>``."""
    series = pareto_series(results)
    if not series:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    everything = []
    for k, (name, points) in enumerate(series.items()):
        color = f"C{k}"
        scatter = ax.scatter(
            [100 * p["bitops_fraction"] for p in points],
            [p["acr"] for p in points],
            s=16,
            alpha=0.6,
            color=color,
            label=f"{name}: {len(points)} {'policy' if len(points) == 1 else 'policies'}",
        )
        scatter.set_gid(f"policies-{name}")
        chosen = [p for p in points if p["chosen"]]
        if chosen:
            ax.scatter(
                [100 * p["bitops_fraction"] for p in chosen],
                [p["acr"] for p in chosen],
                s=130,
                marker="*",
                color=color,
                edgecolors="black",
                linewidths=0.6,
                zorder=3,
            )
        everything += [(p["bitops_fraction"], p["acr"]) for p in points]
    front = pareto_front(everything)
    ax.plot([100 * x for x, _ in front], [y for _, y in front], "k--", lw=1, label="Pareto front")
    for budget in sorted({row["budget"] for row in results["rows"] if row["budget"] is not None}):
        ax.axvline(100 * budget, color="grey", ls=":", lw=1.2, label=f"budget {100 * budget:.6g}% of FP32 BitOPs")
    ax.scatter([], [], s=130, marker="*", color="white", edgecolors="black", label="chosen policy (quantized)")
    ax.set_xlabel("BitOPs (% of FP32)")
    ax.set_ylabel("ACR on the search set")
    ax.set_title("Every evaluated policy of every method (search set)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_bit_widths(results: dict[str, Any], path: Path) -> Path | None:
    """Each method's chosen bit-widths per layer (weights and activations side by side), one panel per method, layers
    in forward order. Unquantized (32-bit) layers are drawn at the top of the axis and labelled 32. In an SVG every
    bar is the element ``bits-<method>-<w|a>-<layer>``."""
    names = list(results["policies"])
    if not names:
        return None
    plt = _pyplot()
    layer_names = [e["name"] for e in results["policies"][names[0]]["layers"]]
    top = 9
    width = max(6.0, 0.45 * len(layer_names) + 2)
    fig, axes = plt.subplots(len(names), 1, figsize=(width, 1.7 * len(names) + 1.0), sharex=True, squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        bits = {e["name"]: (e["w_bits"], e["a_bits"]) for e in results["policies"][name]["layers"]}
        for offset, which, color, label in ((-0.2, 0, "C0", "weights"), (0.2, 1, "C1", "activations")):
            for x, layer in enumerate(layer_names):
                value = bits.get(layer, (32, 32))[which]
                bar = ax.bar(x + offset, min(value, top), width=0.38, color=color, label=label if x == 0 else None)
                bar.patches[0].set_gid(f"bits-{name}-{'wa'[which]}-{layer}")
                ax.text(x + offset, min(value, top) + 0.15, str(value), ha="center", va="bottom", fontsize=6)
        ax.set_ylim(0, top + 1.5)
        ax.set_yticks([2, 4, 6, 8])
        ax.set_ylabel("bits")
        ax.set_title(name, fontsize=9, loc="left")
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].legend(fontsize=7, ncol=2, loc="upper right")
    axes[-1, 0].set_xticks(range(len(layer_names)))
    described = {layer["name"]: layer for layer in results.get("layers") or []}
    axes[-1, 0].set_xticklabels(
        [_tick(n, described.get(n)) for n in layer_names], fontsize=7, rotation=90 if len(layer_names) > 12 else 0
    )
    fig.suptitle("Bit-widths per layer of each method's chosen policy", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def provenance_json(provenance: dict[str, Any]) -> str:
    """The provenance as indented JSON with every list of numbers on one line (index ranges stay short)."""
    text = json.dumps(provenance, indent=1)
    return re.sub(r"\[[\s\d.,eE+-]*\]", lambda m: json.dumps(json.loads(m.group(0))), text)


def _tick(name: str, layer: dict[str, Any] | None) -> str:
    """A layer's x label in the bit chart: label, module name, type and share of FP32 BitOPs."""
    if layer is None:
        return name
    return f"{layer['label']} ({name})\n{layer['type']}\n{100 * layer['fp32_bitops_share']:.3g}% BitOPs"


def _summary_line(results: dict[str, Any]) -> str:
    """Model, data, sigma and CERTIFY's n0, n, alpha and test images, in one sentence (markdown and HTML share it)."""
    prov = results["provenance"]
    c = prov["certify"]
    indices = prov["test_indices"]
    return (
        f"{prov['arch']} on {prov['dataset']}, sigma = {prov['sigma']}; CERTIFY with n0 = {c['n0']}, n = {c['n']}, "
        f"alpha = {c['alpha']} on {indices['count']} test images ({describe_ranges(indices)}); ACR and accuracies "
        "carry 95% confidence intervals in results.json."
    )


def describe_ranges(compact: dict[str, Any]) -> str:
    """The text ``data.describe_indices`` gives for an index set written by ``compact_indices``."""
    from certquant.data import expand_indices

    return describe_indices(expand_indices(compact))


def _sections(results: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        ("certified", "Certified accuracy vs radius (test images)"),
        ("pareto", "BitOPs vs ACR of every evaluated policy, every method (search set)"),
        ("bits", "Bit-widths per layer"),
    ]


def _markdown_report(results: dict[str, Any], plots: dict[str, Path]) -> str:
    headers, rows = _table_rows(results)
    lines = ["# certquant report", "", _summary_line(results), "", markdown_table(headers, rows), ""]
    if results["comparisons"]:
        lines += [f"## {MEANING_TITLE}", ""] + [f"- {c['sentence']}" for c in results["comparisons"]]
        lines.append("")
    chosen = selection_sentences(results)
    if chosen:
        lines += [f"## {SELECTION_TITLE}", ""] + [f"- {sentence}" for sentence in chosen] + [""]
    for key, title in _sections(results):
        if key in plots:
            lines += [f"## {title}", "", f"![{title}]({plots[key].name})", ""]
        if key == "bits":
            bh, brows = _bits_rows(results)
            if brows:
                lines += [
                    "Each layer with its type, weight shape, output shape and share of FP32 BitOPs, and each "
                    "method's weight/activation bits:",
                    "",
                    markdown_table(bh, brows),
                    "",
                ]
    eh, erows = _exported_table(results)
    if erows:
        lines += [f"## {EXPORTED_TITLE}", "", markdown_table(eh, erows), ""]
    lines += [
        "## Provenance",
        "",
        "Index sets are written as ranges [start, stop, step].",
        "",
        "```json",
        provenance_json(results["provenance"]),
        "```",
        "",
    ]
    return "\n".join(lines)


def _html_table(headers: list[str], rows: list[list[Any]], css: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    klass = f" class='{css}'" if css else ""
    return f"<table{klass}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_list(title: str, css: str, items: list[str]) -> str:
    """A titled bullet list of sentences (escaped), as the markdown report's '## title' and '- item' lines."""
    return f"<h2>{title}</h2><ul class='{css}'>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>"


def _inline_svg(path: Path) -> str:
    """An SVG file's <svg> element, scaled to the page width, for inlining (the page stays self-contained)."""
    text = path.read_text(encoding="utf-8")
    svg = text[text.index("<svg") :]
    return svg.replace("<svg ", "<svg style='max-width:100%;height:auto' ", 1)


def _html_report(results: dict[str, Any], plots: dict[str, Path], svgs: dict[str, Path]) -> str:
    prov = results["provenance"]
    headers, rows = _table_rows(results)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>certquant report</title><style>",
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;margin:1em 0}",
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}",
        "table.layers td:nth-child(-n+2){text-align:left}",
        "pre{background:#f7f7f7;padding:1em;overflow:auto}details{margin:1em 0}</style></head><body>",
        "<h1>certquant report</h1>",
        f"<p class='summary'>{html.escape(_summary_line(results))}</p>",
        _html_table(headers, rows),
    ]
    if results["comparisons"]:
        parts.append(_html_list(MEANING_TITLE, "meaning", [c["sentence"] for c in results["comparisons"]]))
    chosen = selection_sentences(results)
    if chosen:
        parts.append(_html_list(SELECTION_TITLE, "selection", chosen))
    for key, title in _sections(results):
        if key in svgs:
            parts.append(f"<h2>{title}</h2><figure id='{key}'>{_inline_svg(svgs[key])}</figure>")
        elif key in plots:
            data = base64.b64encode(plots[key].read_bytes()).decode()
            parts.append(f"<h2>{title}</h2><img id='{key}' alt='{title}' src='data:image/png;base64,{data}'>")
        if key == "bits":
            bh, brows = _bits_rows(results)
            if brows:
                parts.append(_html_table(bh, brows, "layers"))
    eh, erows = _exported_table(results)
    if erows:
        parts += [f"<h2>{EXPORTED_TITLE}</h2>", _html_table(eh, erows)]
    software = prov.get("software") or {}
    facts = [
        ("checkpoint", prov["checkpoint"]),
        ("checkpoint sha256", prov["checkpoint_sha256"]),
        ("test images", f"{prov['test_indices']['count']}: {describe_ranges(prov['test_indices'])}"),
        ("software", ", ".join(f"{k} {v}" for k, v in software.items())),
        ("started", prov.get("started")),
    ]
    parts += [
        "<h2>Provenance</h2>",
        _html_table(["", ""], [[k, v] for k, v in facts], "layers"),
        "<details><summary>raw provenance (JSON; index sets as ranges [start, stop, step])</summary><pre>",
        html.escape(provenance_json(prov)),
        "</pre></details></body></html>",
    ]
    return "\n".join(parts)


def write_report(out: str | Path) -> dict[str, Any]:
    """(Re)build results.json, report.md, report.html and the plots of a run folder; return the results."""
    out = Path(out)
    results = collect_results(out)
    runs = results.pop("_runs")
    plots = {"certified": plot_certified_accuracy(runs, out / PLOTS["certified"], "certified accuracy (test subset)")}
    svgs: dict[str, Path] = {}
    for key, plot in (("pareto", plot_pareto), ("bits", plot_bit_widths)):
        path = plot(results, out / PLOTS[key])
        svg = plot(results, out / f".{key}.svg") if path is not None else None  # inlined into report.html, removed
        if path is not None and svg is not None:
            plots[key], svgs[key] = path, svg
    atomic_write_json(out / "results.json", results)
    atomic_write_text(out / "report.md", _markdown_report(results, plots))
    atomic_write_text(out / "report.html", _html_report(results, plots, svgs))
    for path in svgs.values():
        path.unlink()
    return results


def summary_table(results: dict[str, Any]) -> str:
    """The report's main table as markdown (what ``certquant run`` prints at the end)."""
    return markdown_table(*_table_rows(results))
