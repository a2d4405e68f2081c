"""Incremental randomized smoothing (IRS) vs certification from scratch, measured as the IRS paper does (SPEC §3).

For each sigma, the shipped Fashion-MNIST small CNN (the base f) is certified once with n = 10,000 (alpha 0.001) on
every SKIP-th test image, keeping the IRS cache. Each policy quantizes f (activation ranges calibrated on NOISY
training images, ``noisy_calibration_batch``, no fine-tuning) into f', which is then certified
  - by IRS (``certify_incremental``, two-sided and one-sided disparity) with n_p = 1%, 2%, 5%, 10%, 20% of n,
    confidence 1 - (alpha + alpha_zeta) (direct branch at 1 - alpha); also the ACR with the paper's direct branch at
    1 - (alpha + alpha_zeta) (whose mixture holds only at 1 - (alpha + 2 alpha_zeta)), the difference being what the
    exact level costs, with its 95% bootstrap interval;
  - from scratch (``certify``) at alpha_b = alpha + alpha_zeta with n0 + n_p samples and with n0 + n;
  - fully, at alpha with n = 10,000 (the reference of the reward-fidelity check).
Speed-up at equal ACR: for each IRS point, the time from scratch needs to reach the same ACR (linear interpolation
between its measured points, ordered by sample count) divided by IRS's time.

How it is measured (compute is scarce): every estimate above is a function of f''s predictions on the base run's
noise. f' is run ONCE per image on the n0 selection and n estimation samples of the base run's seeds (a full
``certify(..., keep_cache=True)`` of f', resumable); IRS at n_p is ``incremental_certificate`` on the first n_p of
those predictions -- the very inputs ``certify_incremental`` regenerates -- and from scratch at n_p is CERTIFY of the
first n_p (with --batch dividing every n_p this is bit-identical to ``certify(..., n=n_p)``). Times come from the
real functions: on the first --timed-images images, ``certify_incremental`` (both disparities) and ``certify`` at
every sample count are called interleaved and timed; their certificates are checked against the derived ones
(``timing_check``). ACR is over all images, times are means over the timed images.

    python benchmarks/bench_irs.py [--images 100] [--skip 100] [--sigmas 0.25 0.5] [--policies W8A8 W6A6 W4A4 mixed-8448]
        [--fidelity-policies W5A5 W3A3 mixed-8358 W3A4 W4A3 W8A2 mixed-6336 mixed-2888]
        [--fractions 0.01 0.02 0.05 0.1 0.2] [--timed-images 20]
        [--threads 1] [--work runs/bench_irs] [--name irs]

Intermediate runs live in --work (resumable); results merge per sigma into benchmarks/results/<name>.json, .md and
<name>.png (ACR vs seconds per image).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr

from certquant.data import every_kth, load_dataset
from certquant.models import load_checkpoint
from certquant.quant import Policy, bitops_fraction, noisy_calibration_batch, quantizable_layers, quantize
from certquant.quant.checkpoint import _train_images, input_shape
from certquant.smoothing import (
    ABSTAIN,
    CacheStore,
    certified_radius,
    certify,
    certify_dataset,
    certify_incremental,
    clopper_pearson_lower,
    image_seed,
    incremental_certificate,
    samples_to_evaluate,
)
from certquant.smoothing.cache_store import model_fingerprint
from certquant.utils import atomic_write_json, software_versions
from common import RESULTS, ROOT, write_results

BOOTSTRAP_ROUNDS = 2000  # resamples of the images behind each speed-up's 95% interval
CHECKPOINTS = {0.25: "small-cnn-fmnist-s0.25", 0.5: "small-cnn-fmnist-s0.50"}
DISPARITIES = ("two-sided", "one-sided")
# per layer (conv1, conv2, fc1, fc2) of the small CNN: (w_bits, a_bits)
POLICIES: dict[str, list[tuple[int, int]]] = {
    "W8A8": [(8, 8)] * 4,
    "W6A6": [(6, 6)] * 4,
    "W5A5": [(5, 5)] * 4,
    "W4A4": [(4, 4)] * 4,
    "W3A3": [(3, 3)] * 4,
    "mixed-8448": [(8, 8), (4, 4), (4, 4), (8, 8)],  # HAQ's convention: first and last at 8 bits
    "mixed-8358": [(8, 8), (3, 3), (5, 5), (8, 8)],
    # more fidelity points spanning what the search explores ([2, 8] bits, weights and activations apart)
    "W3A4": [(3, 4)] * 4,
    "W4A3": [(4, 3)] * 4,
    "W8A2": [(8, 2)] * 4,
    "mixed-6336": [(6, 6), (3, 3), (3, 3), (6, 6)],
    "mixed-2888": [(2, 2), (8, 8), (8, 8), (8, 8)],
}


# -- helpers -----------------------------------------------------------------------------------------------------


def resolve(name: str) -> str:
    local = ROOT / "runs" / "zoo" / name / "model.pt"
    return str(local) if local.is_file() else name


def credited(labels: list[int], certs: list[tuple[int, float]]) -> np.ndarray:
    """Per image: the radius when certified and correct, else 0 (their mean is the ACR)."""
    return np.array([r if c == y else 0.0 for y, (c, r) in zip(labels, certs)])


def acr(labels: list[int], certs: list[tuple[int, float]]) -> float:
    """Mean radius, counted when certified and correct."""
    return float(credited(labels, certs).mean())


def clean_accuracy(labels: list[int], certs: list[tuple[int, float]]) -> float:
    return sum(1 for y, (c, _) in zip(labels, certs) if c == y) / len(labels)


def from_counts(c_a: int, n_a: int, n: int, alpha: float, sigma: float) -> tuple[int, float]:
    """CERTIFY's answer from the selection class and the count of c_A among n estimation samples."""
    p = clopper_pearson_lower(n_a, n, alpha)
    return (c_a, certified_radius(p, sigma)) if p > 0.5 else (ABSTAIN, 0.0)


def time_to_reach(target: float, curve: list[dict]) -> tuple[float | None, str]:
    """Seconds certification from scratch needs to reach ACR ``target``: linear interpolation between consecutive
    points of ``curve`` (ordered by samples). Returns (seconds, kind): 'interpolated', 'above' (target above every
    point: seconds of the largest, a lower bound) or 'below' (target below the cheapest point: its seconds, an
    upper bound)."""
    points = sorted(curve, key=lambda p: p["samples"])
    if target <= points[0]["acr"]:
        return points[0]["seconds_per_image"], "below"
    for lo, hi in zip(points, points[1:]):
        if lo["acr"] < target <= hi["acr"]:
            t = (target - lo["acr"]) / (hi["acr"] - lo["acr"])
            return lo["seconds_per_image"] + t * (hi["seconds_per_image"] - lo["seconds_per_image"]), "interpolated"
    return points[-1]["seconds_per_image"], "above"


def weighted_speedups(
    weights: np.ndarray, irs: np.ndarray, curve: list[tuple[np.ndarray, float]], irs_seconds: float
) -> np.ndarray:
    """The speed-up at equal ACR for each row of ``weights`` (image weights summing to 1): IRS's ACR and the
    from-scratch curve (``curve``: per-image credited radii and seconds per image of each point) are the weighted
    means of the credited radii; the times stay fixed (they do not depend on which images)."""
    irs_acr = weights @ irs
    points = [(weights @ radii, seconds) for radii, seconds in curve]
    return np.array(
        [
            time_to_reach(
                float(irs_acr[k]),
                [
                    {"samples": i, "acr": float(acrs[k]), "seconds_per_image": sec}
                    for i, (acrs, sec) in enumerate(points)
                ],
            )[0]
            / irs_seconds
            for k in range(len(weights))
        ]
    )


def speedup_interval(
    irs: np.ndarray,
    curve: list[tuple[np.ndarray, float]],
    irs_seconds: float,
    rounds: int = BOOTSTRAP_ROUNDS,
    seed: int = 0,
) -> tuple[float, float]:
    """95% bootstrap interval of the speed-up at equal ACR over the choice of test images (resampled with
    replacement, IRS and the from-scratch curve on the same resample)."""
    count = len(irs)
    picks = np.random.default_rng(seed).integers(0, count, size=(rounds, count))
    weights = np.stack([np.bincount(row, minlength=count) for row in picks]) / count
    low, high = np.quantile(weighted_speedups(weights, irs, curve, irs_seconds), [0.025, 0.975])
    return float(low), float(high)


def mean_interval(values: np.ndarray, rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of the mean of per-image ``values`` over the choice of test images."""
    picks = np.random.default_rng(seed).integers(0, len(values), size=(rounds, len(values)))
    low, high = np.quantile(values[picks].mean(axis=1), [0.025, 0.975])
    return float(low), float(high)


def speedup_at_direct_share(
    direct: np.ndarray, share: float, irs: np.ndarray, curve: list[tuple[np.ndarray, float]], irs_seconds: float
) -> float:
    """The speed-up with the images re-weighted so that a ``share`` of the weight is on images of IRS's direct
    branch (``direct``: per image): what the same quantized model would measure on data with another mix of easy
    images (pA_lower >= gamma). Compare with a reference measured on another image set."""
    weights = np.where(direct, share / direct.mean(), (1 - share) / (1 - direct.mean())) / len(direct)
    return float(weighted_speedups(weights[None, :], irs, curve, irs_seconds)[0])


# -- phases ------------------------------------------------------------------------------------------------------


def base_phase(model, info, images, labels, indices, sigma: float, args, folder: Path) -> tuple[CacheStore, dict]:
    """Full certification of f with the IRS cache (resumable)."""
    summary = certify_dataset(
        model,
        images,
        labels,
        indices,
        folder / "base",
        sigma,
        args.n0,
        args.n,
        args.alpha,
        args.batch,
        args.seed,
        identity={"checkpoint_sha256": info["sha256"], "dataset": info["dataset"]},
        progress=args.progress,
        channels_last=True,
        keep_cache=True,
        resume=True,
    )
    return CacheStore.open(folder / "base"), summary


def quantized(model, policy_name: str, layers, calib: torch.Tensor) -> tuple[torch.nn.Module, Policy]:
    policy = Policy.from_lists(layers, *zip(*POLICIES[policy_name]), arch="small-cnn")
    return quantize(model, policy, calib, arch="small-cnn").eval(), policy


def approx_phase(qmodel, images, labels, indices, sigma: float, args, folder: Path) -> tuple[CacheStore, list[dict]]:
    """f' once per image on the base run's selection and estimation noise (= from scratch at n, alpha_b)."""
    certify_dataset(
        qmodel,
        images,
        labels,
        indices,
        folder,
        sigma,
        args.n0,
        args.n,
        args.alpha + args.alpha_zeta,
        args.batch,
        args.seed,
        identity={"model_sha256": model_fingerprint(qmodel)},
        progress=args.progress,
        channels_last=True,
        keep_cache=True,
        resume=True,
    )
    records = [json.loads(line) for line in (folder / "certificates.jsonl").read_text().splitlines() if line.strip()]
    by_index = {int(r["index"]): r for r in records}
    return CacheStore.open(folder), [by_index[i] for i in indices]


def derive(
    base: CacheStore,
    approx: CacheStore,
    records: list[dict],
    labels: list[int],
    indices: list[int],
    sample_counts: list[int],
    sigma: float,
    num_classes: int,
    args,
) -> dict[str, Any]:
    """Every certificate from f''s stored predictions: IRS (both disparities), from scratch and full."""
    alpha_b = args.alpha + args.alpha_zeta
    out: dict[str, Any] = {
        "irs": {d: {n_p: [] for n_p in sample_counts} for d in DISPARITIES},
        "irs_published": {d: {n_p: [] for n_p in sample_counts} for d in DISPARITIES},
        "scratch": {n_p: [] for n_p in sample_counts},
        "scratch_n": [],
        "full": [],
    }
    for index, record in zip(indices, records):
        entry, mine = base.entry(index), approx.entry(index)
        preds = mine.predictions
        for n_p in sample_counts:
            for d in DISPARITIES:  # exactly what certify_incremental computes, skipped samples included
                mask = samples_to_evaluate(entry, n_p, args.gamma, d)
                seen = preds[:n_p] if mask is None else preds[:n_p][mask]
                cert = incremental_certificate(entry, seen, num_classes, args.gamma, args.alpha_zeta, d, mask)
                out["irs"][d][n_p].append(cert)
                # the paper's levels: the direct branch at alpha + alpha_zeta (its n_a counts all n_p samples)
                out["irs_published"][d][n_p].append(
                    from_counts(cert.c_a, cert.n_a, n_p, alpha_b, sigma)
                    if cert.branch == "direct"
                    else (cert.label, cert.radius)
                )
            out["scratch"][n_p].append(
                from_counts(mine.c_a, int((preds[:n_p].long() == mine.c_a).sum()), n_p, alpha_b, sigma)
            )
        out["scratch_n"].append((int(record["predicted"]), float(record["radius"])))
        out["full"].append(from_counts(mine.c_a, mine.n_a, args.n, args.alpha, sigma))
    return out


def timing_phase(
    qmodel,
    base: CacheStore,
    images,
    indices: list[int],
    sample_counts: list[int],
    sigma: float,
    derived: dict,
    args,
    path: Path,
) -> dict:
    """Interleaved wall-clock of the real functions on the first --timed-images images (cached in ``path``)."""
    if path.exists():
        return json.loads(path.read_text())
    alpha_b = args.alpha + args.alpha_zeta
    timed = indices[: args.timed_images]
    times: dict[str, list[float]] = {}
    compared = mismatches = 0

    def note(key: str, seconds: float, got: tuple[int, float], want: tuple[int, float]) -> None:
        nonlocal compared, mismatches
        times.setdefault(key, []).append(seconds)
        compared += 1
        mismatches += got[0] != want[0] or not math.isclose(got[1], want[1], rel_tol=1e-9, abs_tol=1e-12)

    with torch.inference_mode():
        qmodel(images[indices[0]].unsqueeze(0).expand(args.batch, -1, -1, -1).contiguous())  # warm-up
    for k, index in enumerate(timed):
        x, entry, seed = images[index], base.entry(index), image_seed(args.seed, index)
        for n_p in sample_counts:
            for d in DISPARITIES:
                c = certify_incremental(qmodel, entry, x, sigma, n_p, args.gamma, args.alpha_zeta, d)
                ref = derived["irs"][d][n_p][k]
                note(f"irs/{d}/{n_p}", c.seconds, (c.label, c.radius), (ref.label, ref.radius))
            c = certify(qmodel, x, sigma, args.n0, n_p, alpha_b, args.batch, seed)
            note(f"scratch/{n_p}", c.seconds, (c.label, c.radius), derived["scratch"][n_p][k])
        c = certify(qmodel, x, sigma, args.n0, args.n, alpha_b, args.batch, seed)
        note(f"scratch/{args.n}", c.seconds, (c.label, c.radius), derived["scratch_n"][k])
    result = {
        "images": len(timed),
        "seconds_per_image": {k: statistics.mean(v) for k, v in times.items()},
        "seconds_median": {k: statistics.median(v) for k, v in times.items()},
        "compared": compared,
        "mismatches": mismatches,
    }
    atomic_write_json(path, result)
    return result


def policy_result(
    name: str,
    policy: Policy,
    layers,
    derived: dict,
    timing: dict | None,
    labels: list[int],
    sample_counts: list[int],
    args,
) -> dict:
    """ACR, times, speed-ups, zeta and branches of one policy."""
    out: dict[str, Any] = {
        "policy": name,
        "bits": POLICIES[name],
        "bitops_fraction": bitops_fraction(layers, policy),
        "full": {
            "samples": args.n,
            "alpha": args.alpha,
            "acr": acr(labels, derived["full"]),
            "clean_accuracy": clean_accuracy(labels, derived["full"]),
        },
    }
    seconds = (timing or {}).get("seconds_per_image", {})
    curve = [
        {
            "samples": n_p,
            "acr": acr(labels, derived["scratch"][n_p]),
            "clean_accuracy": clean_accuracy(labels, derived["scratch"][n_p]),
            "seconds_per_image": seconds.get(f"scratch/{n_p}"),
        }
        for n_p in sample_counts
    ]
    curve.append(
        {
            "samples": args.n,
            "acr": acr(labels, derived["scratch_n"]),
            "clean_accuracy": clean_accuracy(labels, derived["scratch_n"]),
            "seconds_per_image": seconds.get(f"scratch/{args.n}"),
        }
    )
    out["scratch"] = curve
    curve_certs = [derived["scratch"][n_p] for n_p in sample_counts] + [derived["scratch_n"]]
    curve_radii = [(credited(labels, certs), point["seconds_per_image"]) for certs, point in zip(curve_certs, curve)]
    out["irs"] = {}
    for d in DISPARITIES:
        rows = []
        for n_p, scratch_same in zip(sample_counts, curve):
            certs = derived["irs"][d][n_p]
            pairs = [(c.label, c.radius) for c in certs]
            row = {
                "n_p": n_p,
                "fraction": n_p / args.n,
                "acr": acr(labels, pairs),
                "clean_accuracy": clean_accuracy(labels, pairs),
                "mean_zeta": statistics.mean(c.zeta for c in certs),
                "branch_counts": {b: sum(1 for c in certs if c.branch == b) for b in ("zeta", "direct")},
                "evaluated_fraction": statistics.mean(c.evaluated / n_p for c in certs),
                "scratch_acr_same_samples": scratch_same["acr"],
                "acr_published_levels": acr(labels, derived["irs_published"][d][n_p]),
                "seconds_per_image": seconds.get(f"irs/{d}/{n_p}"),
            }
            # what the exact level 1 - (alpha + alpha_zeta) costs in ACR (direct branch at alpha, not alpha + alpha_z)
            cost = credited(labels, derived["irs_published"][d][n_p]) - credited(labels, pairs)
            row["level_cost"], row["level_cost_ci95"] = float(cost.mean()), mean_interval(cost)
            if row["seconds_per_image"] and all(p["seconds_per_image"] for p in curve):
                needed, kind = time_to_reach(row["acr"], curve)
                row.update(
                    scratch_seconds_to_same_acr=needed, speedup=needed / row["seconds_per_image"], speedup_kind=kind
                )
                # the same timings at the paper's levels: what the exact level costs in speed-up
                needed_pub, kind_pub = time_to_reach(row["acr_published_levels"], curve)
                row["speedup_published_levels"] = needed_pub / row["seconds_per_image"]
                row["speedup_published_levels_kind"] = kind_pub
                radii = credited(labels, pairs)
                row["speedup_ci95"] = speedup_interval(radii, curve_radii, row["seconds_per_image"])
                direct = np.array([c.branch == "direct" for c in certs])
                if args.direct_share is not None and 0 < direct.mean() < 1:
                    row["speedup_at_direct_share"] = {
                        "share": args.direct_share,
                        "speedup": speedup_at_direct_share(
                            direct, args.direct_share, radii, curve_radii, row["seconds_per_image"]
                        ),
                    }
                # cost of one IRS sample vs one sample from scratch (n0 + n_p of them) at the same n_p
                row["cost_per_sample_ratio"] = (row["seconds_per_image"] / n_p) / (
                    scratch_same["seconds_per_image"] / (args.n0 + n_p)
                )
            rows.append(row)
        out["irs"][d] = rows
    if timing:
        out["timing_check"] = {
            "images": timing["images"],
            "compared": timing["compared"],
            "mismatches": timing["mismatches"],
        }
    return out


def fidelity(policies: dict[str, dict], n_p: int, resolution: float = 0.01) -> dict:
    """Spearman correlation over policies between each cheap ACR estimate at n_p and the full certification's ACR;
    and the fraction of policy pairs whose full ACRs differ by at least ``resolution`` that the estimate orders the
    same way (pairs closer than that are ties at the precision any estimate at n_p << n has)."""
    names = list(policies)
    full = [policies[p]["full"]["acr"] for p in names]
    estimates = {
        f"irs {d}": [next(r["acr"] for r in policies[p]["irs"][d] if r["n_p"] == n_p) for p in names]
        for d in DISPARITIES
    }
    estimates["scratch"] = [next(c["acr"] for c in policies[p]["scratch"] if c["samples"] == n_p) for p in names]
    out = {"n_p": n_p, "policies": names, "full_acr": full, "estimates": estimates, "spearman": {}}
    for key, values in estimates.items():
        rho = spearmanr(values, full).statistic if len(names) >= 3 else float("nan")
        out["spearman"][key] = None if rho is None or math.isnan(rho) else float(rho)
    pairs = [
        (i, j) for i in range(len(names)) for j in range(i + 1, len(names)) if abs(full[i] - full[j]) >= resolution
    ]
    out["resolution"], out["resolved_pairs"] = resolution, len(pairs)
    out["pairwise_agreement"] = {
        key: (sum((v[i] - v[j]) * (full[i] - full[j]) > 0 for i, j in pairs) / len(pairs) if pairs else None)
        for key, v in estimates.items()
    }
    return out


# -- one sigma ---------------------------------------------------------------------------------------------------


def run_sigma(sigma: float, args) -> dict:
    model, info = load_checkpoint(resolve(CHECKPOINTS[sigma]))
    images, labels_t = load_dataset(info["dataset"], "test")
    indices = every_kth(len(images), args.skip, args.images)
    labels = [int(labels_t[i]) for i in indices]
    folder = Path(args.work) / f"sigma{sigma:g}"
    started = time.time()
    base, base_summary = base_phase(model, info, images, labels_t, indices, sigma, args, folder)
    base_pa = [base.entry(i).pa_lower for i in indices]
    layers = quantizable_layers(model, input_shape(info))
    calib = noisy_calibration_batch(_train_images(info)[0], sigma, args.calib_images, seed=0)
    sample_counts = [int(round(f * args.n)) for f in args.fractions]
    result: dict[str, Any] = {
        "sigma": sigma,
        "checkpoint": resolve(CHECKPOINTS[sigma]),
        "checkpoint_sha256": info["sha256"],
        "config": {k: v for k, v in vars(args).items() if k != "sigmas"},
        "indices": indices,
        "base": {
            "acr": base_summary["acr"],
            "clean_accuracy": base_summary["clean_accuracy"],
            "seconds_per_image": base_summary["seconds_per_image"],
            "fraction_pa_lower_ge_gamma": sum(p >= args.gamma for p in base_pa) / len(base_pa),
        },
        "policies": {},
    }
    names = list(dict.fromkeys(args.policies + args.fidelity_policies))
    for name in names:
        qmodel, policy = quantized(model, name, layers, calib)
        pfolder = folder / name
        approx, records = approx_phase(qmodel, images, labels_t, indices, sigma, args, pfolder)
        derived = derive(base, approx, records, labels, indices, sample_counts, sigma, int(info["num_classes"]), args)
        timing = None
        if name in args.policies and args.timed_images > 0:
            timing = timing_phase(
                qmodel,
                base,
                images,
                indices,
                sample_counts,
                sigma,
                derived,
                args,
                pfolder / f"timing-{args.timed_images}.json",
            )
        result["policies"][name] = policy_result(name, policy, layers, derived, timing, labels, sample_counts, args)
        print(f"sigma {sigma} {name}: full ACR {result['policies'][name]['full']['acr']:.4f}", flush=True)
        result["seconds"] = time.time() - started
        save(sigma, result, args)
    by_n_p = {n_p: fidelity(result["policies"], n_p) for n_p in sample_counts}
    result["fidelity_by_n_p"] = {
        str(n_p): {k: fid[k] for k in ("spearman", "pairwise_agreement")} for n_p, fid in by_n_p.items()
    }
    fid_np = int(round(args.fidelity_fraction * args.n))
    if fid_np in by_n_p:
        result["fidelity"] = by_n_p[fid_np]
    result["seconds"] = time.time() - started
    save(sigma, result, args)
    return result


# -- output ------------------------------------------------------------------------------------------------------


def save(sigma: float, result: dict, args) -> None:
    """Merge one sigma's result into benchmarks/results/<name>.json and rewrite the .md table and the .png plot."""
    path = RESULTS / f"{args.name}.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data.setdefault("sigmas", {})[f"{sigma:g}"] = result
    data["config"] = {k: v for k, v in vars(args).items() if k not in ("sigmas",)}
    data.update(
        threads=torch.get_num_threads(),
        device="CPU",
        date=time.strftime("%Y-%m-%d %H:%M"),
        software=software_versions(),
        command=" ".join(["python", "benchmarks/bench_irs.py", *sys.argv[1:]]),
    )
    write_results(args.name, data, markdown(data))
    plot(data, RESULTS / f"{args.name}.png")


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _speedup(row: dict) -> str:
    if "speedup" not in row:
        return "-"
    mark = {"interpolated": "", "above": " (>=)", "below": " (<=)"}[row["speedup_kind"]]
    low, high = row.get("speedup_ci95") or (None, None)
    interval = f" [{low:.2f}, {high:.2f}]" if low is not None else ""
    return f"{row['speedup']:.2f}x{mark}{interval}"


def markdown(data: dict) -> str:
    cfg = data["config"]
    lines = [
        "# Incremental randomized smoothing vs certification from scratch",
        "",
        f"Fashion-MNIST small CNN (shipped, noise-trained), quantized without fine-tuning (activation ranges calibrated "
        f"on {cfg['calib_images']} noisy training images). Base certified with n0 = {cfg['n0']}, n = {cfg['n']}, "
        f"alpha = {cfg['alpha']}; IRS with gamma = {cfg['gamma']}, alpha_zeta = {cfg['alpha_zeta']} (direct branch at "
        f"1 - alpha: every IRS certificate holds at 1 - (alpha + alpha_zeta)); from scratch at "
        f"alpha_b = alpha + alpha_zeta. ACR over all images; seconds per image = mean over the first "
        f"{cfg['timed_images']} images, the real functions called interleaved ({data['threads']} torch thread(s), "
        f"batch {cfg['batch']}, channels_last, {data['device']}, {data['date']}, "
        f"{cfg.get('conditions') or 'no other job running'}). Speed-up = "
        "time from scratch needs for the same ACR (interpolated) / IRS time; (>=): IRS's ACR is above every from-scratch point "
        "(lower bound), (<=): below the cheapest one (upper bound); [a, b]: 95% bootstrap interval over the test images "
        f"({BOOTSTRAP_ROUNDS} resamples, times fixed). Full = CERTIFY at n, alpha (the reference).",
        "",
    ]
    for key, res in sorted(data["sigmas"].items(), key=lambda kv: float(kv[0])):
        base = res["base"]
        lines += [
            f"## sigma = {key} ({len(res['indices'])} test images, every {cfg['skip']}th)",
            "",
            f"Base model: ACR {base['acr']:.4f}, clean smoothed accuracy {base['clean_accuracy']:.3f}, "
            f"{base['seconds_per_image']:.2f} s/image at n = {cfg['n']}; "
            f"{100 * base['fraction_pa_lower_ge_gamma']:.0f}% of images have pA_lower >= gamma.",
            "",
        ]
        lines += [
            "| policy | BitOPs | n_p | ACR IRS 2-sided | ACR IRS 1-sided | ACR scratch n_p | s IRS 2s | "
            "s scratch n_p | speed-up 2s | speed-up 1s | mean zeta 2s / 1s | branches zeta/direct | "
            "IRS/scratch cost per sample | s IRS 1s | share of n_p run 1s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, p in res["policies"].items():
            two, one = p["irs"]["two-sided"], p["irs"]["one-sided"]
            for r2, r1, sc in zip(two, one, p["scratch"]):
                lines.append(
                    f"| {name} | {100 * p['bitops_fraction']:.2f}% | {r2['n_p']} ({100 * r2['fraction']:g}%) | "
                    f"{r2['acr']:.4f} | {r1['acr']:.4f} | {sc['acr']:.4f} | {_fmt(r2['seconds_per_image'])} | "
                    f"{_fmt(sc['seconds_per_image'])} | {_speedup(r2)} | {_speedup(r1)} | "
                    f"{r2['mean_zeta']:.4f} / {r1['mean_zeta']:.4f} | "
                    f"{r2['branch_counts']['zeta']}/{r2['branch_counts']['direct']} | "
                    f"{_fmt(r2.get('cost_per_sample_ratio'), 2)} | {_fmt(r1['seconds_per_image'])} | "
                    f"{r1.get('evaluated_fraction', 1.0):.2f} |"
                )
            sn = p["scratch"][-1]
            lines.append(
                f"| {name} | | scratch n = {sn['samples']} | | | {sn['acr']:.4f} | | "
                f"{_fmt(sn['seconds_per_image'])} | | | | | | | |"
            )
            lines.append(
                f"| {name} | | full n = {cfg['n']}, alpha {cfg['alpha']} | | | {p['full']['acr']:.4f} | | | | "
                "| | | | | |"
            )
        shares = [
            (n, r2["n_p"], r2["speedup_at_direct_share"], r1["speedup_at_direct_share"])
            for n, p in res["policies"].items()
            for r2, r1 in zip(p["irs"]["two-sided"], p["irs"]["one-sided"])
            if "speedup_at_direct_share" in r2
        ]
        if shares:
            lines += [
                "",
                f"Speed-up with the images re-weighted so that {100 * shares[0][2]['share']:g}% of the weight "
                "is on direct-branch images (two-sided / one-sided): "
                + "; ".join(
                    f"{n} n_p {n_p}: {two['speedup']:.2f}x / {one['speedup']:.2f}x" for n, n_p, two, one in shares
                )
                + ".",
            ]
        costs = [
            (n, r2, r1)
            for n, p in res["policies"].items()
            for r2, r1 in zip(p["irs"]["two-sided"], p["irs"]["one-sided"])
            if "level_cost" in r2
        ]
        if costs:
            lines += [
                "",
                "ACR cost of the exact level 1 - (alpha + alpha_zeta) (direct branch at 1 - alpha instead of "
                "the paper's 1 - (alpha + alpha_zeta)): ACR with the paper's levels minus the ACR above, "
                "[95% bootstrap interval], two-sided / one-sided: "
                + "; ".join(
                    f"{n} n_p {r2['n_p']}: {r2['level_cost']:.4f} [{r2['level_cost_ci95'][0]:.4f}, "
                    f"{r2['level_cost_ci95'][1]:.4f}] / {r1['level_cost']:.4f} [{r1['level_cost_ci95'][0]:.4f}, "
                    f"{r1['level_cost_ci95'][1]:.4f}]"
                    for n, r2, r1 in costs
                )
                + ".",
            ]
            levels = [(n, r2, r1) for n, r2, r1 in costs if "speedup_published_levels" in r2]
            if levels:
                lines += [
                    "",
                    "Speed-up at the paper's levels, with the same timings (two-sided / one-sided): "
                    + "; ".join(
                        f"{n} n_p {r2['n_p']}: {r2['speedup_published_levels']:.2f}x / {r1['speedup_published_levels']:.2f}x"
                        for n, r2, r1 in levels
                    )
                    + ".",
                ]
        checks = [(n, p["timing_check"]) for n, p in res["policies"].items() if "timing_check" in p]
        if checks:
            lines += [
                "",
                "Timed certificates equal to the derived ones: "
                + ", ".join(f"{n} {c['compared'] - c['mismatches']}/{c['compared']}" for n, c in checks)
                + ".",
            ]
        fid = res.get("fidelity")
        if fid:
            lines += [
                "",
                f"Reward fidelity over {len(fid['policies'])} policies: Spearman correlation with the full "
                f"certification's ACR (n = {cfg['n']}) of each estimate at n_p = {fid['n_p']}:",
                "",
                "| policy | full ACR | " + " | ".join(f"{k} ACR" for k in fid["estimates"]) + " |",
                "|---|---|" + "---|" * len(fid["estimates"]),
            ]
            for i, name in enumerate(fid["policies"]):
                lines.append(
                    f"| {name} | {fid['full_acr'][i]:.4f} | "
                    + " | ".join(f"{v[i]:.4f}" for v in fid["estimates"].values())
                    + " |"
                )
            lines.append("| **Spearman** | | " + " | ".join(_fmt(v) for v in fid["spearman"].values()) + " |")
            if "pairwise_agreement" in fid:
                lines.append(
                    f"| **pairs ordered right** ({fid['resolved_pairs']} pairs with full ACRs >= "
                    f"{fid['resolution']} apart) | | "
                    + " | ".join(_fmt(v, 2) for v in fid["pairwise_agreement"].values())
                    + " |"
                )
            by = res.get("fidelity_by_n_p", {})
            if by:
                lines += [
                    "",
                    "Spearman (pairs ordered right) at every n_p: "
                    + "; ".join(
                        f"n_p {n}: "
                        + ", ".join(
                            f"{k} {_fmt(v['spearman'][k], 2)} ({_fmt(v['pairwise_agreement'][k], 2)})"
                            for k in v["spearman"]
                        )
                        for n, v in by.items()
                    )
                    + ".",
                ]
        lines.append("")
    command = data.get("command") or f"python benchmarks/bench_irs.py --sigmas {' '.join(sorted(data['sigmas']))}"
    lines += [
        f"Regenerate: `{command}` (the run folders in --work make it resumable; times vary with machine load).",
        "",
    ]
    return "\n".join(lines)


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        (s, n, p)
        for s, res in sorted(data["sigmas"].items(), key=lambda kv: float(kv[0]))
        for n, p in res["policies"].items()
        if p["scratch"][0]["seconds_per_image"]
    ]
    if not panels:
        return
    cols = min(4, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.3 * rows), squeeze=False)
    for ax, (sigma, name, p) in zip(axes.flat, panels):
        sc = p["scratch"]
        ax.plot([c["seconds_per_image"] for c in sc], [c["acr"] for c in sc], "o-", color="gray", label="from scratch")
        for d, style in (("two-sided", "s--"), ("one-sided", "^:")):
            rows_ = [r for r in p["irs"][d] if r["seconds_per_image"]]
            ax.plot([r["seconds_per_image"] for r in rows_], [r["acr"] for r in rows_], style, label=f"IRS {d}")
        ax.axhline(p["full"]["acr"], color="black", lw=0.6, label="full (n, alpha)")
        ax.set_xscale("log")
        ax.set_title(f"sigma {sigma}, {name}", fontsize=9)
        ax.set_xlabel("seconds per image")
        ax.set_ylabel("ACR")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--skip", type=int, default=100, help="every SKIP-th test image")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.25, 0.5], choices=sorted(CHECKPOINTS))
    parser.add_argument(
        "--policies",
        nargs="+",
        default=["W8A8", "W6A6", "W4A4", "mixed-8448"],
        choices=list(POLICIES),
        help="policies measured for time (speed-up) and ACR",
    )
    parser.add_argument(
        "--fidelity-policies",
        nargs="*",
        default=["W5A5", "W3A3", "mixed-8358", "W3A4", "W4A3", "W8A2", "mixed-6336", "mixed-2888"],
        choices=list(POLICIES),
        help="further policies for the reward-fidelity check (ACR only)",
    )
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.02, 0.05, 0.1, 0.2])
    parser.add_argument("--fidelity-fraction", type=float, default=0.1)
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--alpha-zeta", type=float, default=0.001)
    parser.add_argument("--gamma", type=float, default=0.99)
    parser.add_argument("--batch", type=int, default=100, help="noise batch; make it divide every n_p")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calib-images", type=int, default=512)
    parser.add_argument("--timed-images", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", default=str(ROOT / "runs" / "bench_irs"))
    parser.add_argument("--name", default="irs", help="results file stem")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument(
        "--conditions",
        default="no other job running",
        help="what else ran on the machine while timing (printed with the times)",
    )
    parser.add_argument(
        "--direct-share",
        type=float,
        default=None,
        help="also report each speed-up with the images re-weighted to this share of direct-branch "
        "images (pA_lower >= gamma), e.g. 0.62 for the reference figures' image set",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for n_p in (int(round(f * args.n)) for f in args.fractions):
        if n_p % args.batch:
            print(
                f"note: n_p {n_p} is not a multiple of --batch {args.batch}: from-scratch certificates at n_p are "
                "then CERTIFY of the first n_p samples, not bit-identical to certify(n=n_p)",
                flush=True,
            )
    for sigma in args.sigmas:
        run_sigma(sigma, args)
    print(markdown(json.loads((RESULTS / f"{args.name}.json").read_text())))


if __name__ == "__main__":
    main()
