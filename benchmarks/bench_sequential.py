"""Sequential certification at fixed radii vs fixed-n CERTIFY (and sequential vs fixed-n IRS) on the same images
and seeds: certified accuracy at each radius, samples, time.

Input: a fixed-n run with its IRS cache, made once by the CLI, e.g.

    certquant certify --checkpoint small-cnn-fmnist-s0.25 --skip 20 --max 500 --n 100000 --keep-cache --out RUN

The cache holds f's class on every one of the n estimation samples of every image, and a sequential run with
n_max <= n on the same seeds consumes a prefix of the same noise (``sequential`` module docstring). So every figure
is derived from it without running the model again:
  - fixed-n CERTIFY at n (the run) and at each --also-n (a prefix: n_A of the first n' samples);
  - sequential CERTIFY at --radii with n_max = n (``replay_sequential``), and with each radius alone (where the
    savings come from), and in ACR mode (radii None, --tolerance);
  - with --policies: f' = the quantized model (noisy calibration, as bench_irs) runs once on the first --np samples
    of each of the first --irs-images images; fixed-n IRS at n_p (``incremental_certificate``) and sequential IRS
    with n_p_max = n_p (``replay_incremental_sequential``) are derived from those predictions.
The shortcut is checked: on the first --check-images images the real ``certify_sequential`` (and
``certify_incremental_sequential``) run on the model, their decisions must equal the derived ones (the check is
recorded), and their wall-clock per image is measured interleaved with ``certify`` at n = --time-n on the same
images (fixed-n time at n is extrapolated per sample from it, and the base run's own per-image seconds are given too).

    python benchmarks/bench_sequential.py --run RUN --checkpoint small-cnn-fmnist-s0.25 --radii 0.25 0.5 0.75 1.0
        [--also-n 10000] [--policies W8A8 W4A4 --np 10000 --irs-images 100] [--check-images 5] [--name NAME]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench_irs import quantized
from certquant.data import load_dataset
from certquant.models import load_checkpoint
from certquant.quant import noisy_calibration_batch, quantizable_layers
from certquant.quant.checkpoint import _train_images, input_shape
from certquant.search.job import validation_indices
from certquant.smoothing import (
    CacheStore,
    certify,
    certify_dataset,
    certify_incremental,
    image_seed,
    incremental_certificate,
    samples_to_evaluate,
)
from certquant.smoothing.core import _evaluating, sample_counts
from certquant.smoothing.incremental_sequential import (
    certify_incremental_sequential,
    replay_incremental_sequential,
)
from certquant.smoothing.noise import ESTIMATION
from certquant.smoothing.sequential import (
    SequentialSettings,
    certify_sequential,
    cp_lower,
    look_levels,
    look_schedule,
    radius_of,
    replay_sequential,
    thresholds_of,
)
from certquant.utils import read_jsonl, software_versions
from common import ROOT, write_results

GAMMA, ALPHA_ZETA, DISPARITY = 0.99, 0.001, "one-sided"


def resolve(name: str) -> str:
    local = ROOT / "runs" / "zoo" / name / "model.pt"
    return str(local) if local.is_file() else name


def accuracy(certified: np.ndarray, correct: np.ndarray) -> list[float]:
    """Certified accuracy per radius: certified there and c_A = the label. ``certified`` is (images, radii)."""
    return [float(v) for v in (certified & correct[:, None]).mean(0)]


def replay_all(store: CacheStore, indices: list[int], radii: list[float] | None, settings: SequentialSettings) -> list:
    """Sequential CERTIFY (n_max = the run's n) of every image, replayed from the run's stored predictions."""
    key = store.key
    n, alpha, sigma = int(key["n"]), float(key["alpha"]), float(key["sigma"])
    return [
        replay_sequential(store.entry(i).predictions, store.entry(i).c_a, n, alpha, sigma, radii, settings)
        for i in indices
    ]


def fixed_n_lowers(store: CacheStore, indices: list[int], m: int) -> np.ndarray:
    """pA_lower of fixed-n CERTIFY at n = m on every image (the first m of the run's estimation samples)."""
    alpha = float(store.key["alpha"])
    lowers = []
    for i in indices:
        entry = store.entry(i)
        lowers.append(float(cp_lower(int((entry.predictions[:m].long() == entry.c_a).sum()), m, alpha)))
    return np.array(lowers)


def fixed_rows(
    store: CacheStore,
    records: dict[int, dict],
    indices: list[int],
    radii: list[float],
    n_values: list[int],
    settings: SequentialSettings,
) -> dict[str, Any]:
    """Fixed-n CERTIFY at each n (prefixes of the run's predictions) and sequential CERTIFY with n_max = the run's n."""
    key = store.key
    n, alpha, sigma, n0 = int(key["n"]), float(key["alpha"]), float(key["sigma"]), int(key["n0"])
    thresholds = thresholds_of(radii, sigma)
    correct = np.array([records[i]["c_a"] == records[i]["label"] for i in indices])
    out: dict[str, Any] = {}
    for m in n_values:
        certified = fixed_n_lowers(store, indices, m)[:, None] > thresholds[None, :]
        out[f"fixed-n {m}"] = {
            "certified_accuracy": accuracy(certified, correct),
            "samples": (n0 + m) * len(indices),
            "samples_per_image": n0 + m,
        }
    seq = replay_all(store, indices, radii, settings)
    used = np.array([c.n_used for c in seq])
    certified = np.array([c.certified for c in seq])
    fixed = np.array([records[i]["pa_lower"] for i in indices])[:, None] > thresholds[None, :]
    out["sequential"] = {
        "certified_accuracy": accuracy(certified, correct),
        "samples": int((n0 + used).sum()),
        "samples_per_image": float((n0 + used).mean()),
        "median_n_used": float(np.median(used)),
        "stopped_at_n_max": int((used == n).sum()),
        "decisions_differing_from_fixed_n": [int(v) for v in (certified != fixed).sum(0)],
        "certified_by_sequential_not_fixed_n": [int(v) for v in (certified & ~fixed).sum(0)],
        "certified_by_fixed_n_not_sequential": [int(v) for v in (fixed & ~certified).sum(0)],
        "decided_at_median": [float(np.median([c.decided_at[j] for c in seq])) for j in range(len(radii))],
    }
    if settings.curtail is not None:  # what curtailment buys: the same test without it
        plain = replay_all(store, indices, radii, replace(settings, curtail=None))
        plain_used = np.array([c.n_used for c in plain])
        out["sequential, no curtailment"] = {
            "certified_accuracy": accuracy(np.array([c.certified for c in plain]), correct),
            "samples": int((n0 + plain_used).sum()),
            "samples_per_image": float((n0 + plain_used).mean()),
        }
    out["sequential, one radius alone"] = {
        f"{r:g}": float(np.mean([n0 + c.n_used for c in replay_all(store, indices, [r], settings)])) for r in radii
    }
    acr = replay_all(store, indices, None, settings)
    acr_used = np.array([c.n_used for c in acr])
    radius_seq = np.array([c.radius if c.label == records[i]["label"] else 0.0 for c, i in zip(acr, indices)])
    radius_fix = np.array([records[i]["radius"] if records[i]["correct"] else 0.0 for i in indices])
    looks = look_schedule(n, settings)  # the same procedure without early stops: its best bound over every look
    levels = look_levels(len(looks), alpha, settings.final_share)
    full = []
    for i in indices:
        entry = store.entry(i)
        hits = np.concatenate([[0], np.cumsum(entry.predictions.numpy() == entry.c_a)])
        best = float(cp_lower(hits[looks], np.array(looks), levels).max())
        full.append(radius_of(best, sigma) if best > 0.5 and entry.c_a == records[i]["label"] else 0.0)
    radius_full = np.array(full)
    out["sequential ACR mode"] = {
        "tolerance": settings.tolerance,
        "acr": float(radius_seq.mean()),
        "fixed_n_acr": float(radius_fix.mean()),
        "samples": int((n0 + acr_used).sum()),
        "samples_per_image": float((n0 + acr_used).mean()),
        "largest_shortfall_vs_fixed_n": float((radius_fix - radius_seq).max()),
        "images_short_by_more_than_tolerance": int(((radius_fix - radius_seq) > settings.tolerance + 1e-12).sum()),
        "acr_without_early_stops": float(radius_full.mean()),
        "largest_shortfall_vs_no_early_stop": float((radius_full - radius_seq).max()),
        "images_short_of_no_early_stop_by_more_than_tolerance": int(
            ((radius_full - radius_seq) > settings.tolerance + 1e-12).sum()
        ),
    }
    return out


def check_and_time(
    model, images, store: CacheStore, indices: list[int], radii: list[float], settings: SequentialSettings, args
) -> dict[str, Any]:
    """Real sequential CERTIFY on the first --check-images images: same decisions as the replay? Seconds per image,
    interleaved with CERTIFY at --time-n."""
    key = store.key
    n, alpha, sigma, n0, batch = (
        int(key["n"]),
        float(key["alpha"]),
        float(key["sigma"]),
        int(key["n0"]),
        int(key["batch_size"]),
    )
    same, seq_s, fixed_s, samples = [], [], [], []
    for i in indices[: args.check_images]:
        seed = image_seed(int(key["seed"]), i)
        real = certify_sequential(model, images[i], sigma, radii, n0, n, alpha, batch, seed, settings)
        replay = replay_sequential(store.entry(i).predictions, store.entry(i).c_a, n, alpha, sigma, radii, settings)
        same.append((real.certified, real.n_used, real.n_a) == (replay.certified, replay.n_used, replay.n_a))
        seq_s.append(real.seconds)
        samples.append(n0 + real.n_used)
        fixed_s.append(certify(model, images[i], sigma, n0, args.time_n, alpha, batch, seed).seconds)
    fixed_per_sample = sum(fixed_s) / ((n0 + args.time_n) * len(fixed_s)) if fixed_s else None
    return {
        "images": len(same),
        "identical_decisions": all(same),
        "identical_count": sum(same),
        "sequential_seconds_per_image": float(np.mean(seq_s)) if seq_s else None,
        "sequential_samples_per_image": float(np.mean(samples)) if samples else None,
        "sequential_seconds_per_sample": sum(seq_s) / sum(samples) if samples else None,
        "fixed_n_time_n": args.time_n,
        "fixed_n_seconds_per_image_at_time_n": float(np.mean(fixed_s)) if fixed_s else None,
        "fixed_n_seconds_per_sample": fixed_per_sample,
        "fixed_n_seconds_per_image_at_n_extrapolated": fixed_per_sample * (n0 + n) if fixed_per_sample else None,
    }


def quantized_models(base: str, names: list[str]) -> dict[str, torch.nn.Module]:
    """f' per policy name: the torch checkpoint ``base`` quantized as bench_irs does (noisy calibration, no
    fine-tuning), in channels_last."""
    model, info = load_checkpoint(resolve(base))
    layers = quantizable_layers(model, input_shape(info))
    calib = noisy_calibration_batch(_train_images(info)[0], float(info["sigma"]), 256, seed=0)
    return {name: quantized(model, name, layers, calib)[0].to(memory_format=torch.channels_last) for name in names}


def approx_predictions(qmodel, images, store: CacheStore, indices: list[int], n_p: int, folder: Path) -> dict:
    """f''s class on the first n_p cached estimation samples of every image (resumable: one .npy per image)."""
    folder.mkdir(parents=True, exist_ok=True)
    sigma, batch = float(store.key["sigma"]), int(store.key["batch_size"])
    out = {}
    for i in indices:
        entry, path = store.entry(i), folder / f"{i}.npy"
        if not path.exists():
            with _evaluating(qmodel):
                _, preds = sample_counts(
                    qmodel, images[i], sigma, entry.n, batch, entry.seed, ESTIMATION, keep_predictions=True, limit=n_p
                )
            tmp = folder / f"{i}.tmp.npy"
            np.save(tmp, preds.numpy())
            os.replace(tmp, path)
        out[i] = torch.from_numpy(np.load(path))
    return out


def fixed_irs(
    store: CacheStore, preds: dict, indices: list[int], radii: list[float], n_p: int, num_classes: int
) -> tuple[np.ndarray, int]:
    """Fixed-n IRS at n_p from f''s stored predictions: certified (images x radii) and quantized-model samples."""
    thresholds = thresholds_of(radii, float(store.key["sigma"]))
    certified, cost = [], 0
    for i in indices:
        entry, first = store.entry(i), preds[i][:n_p]
        mask = samples_to_evaluate(entry, n_p, GAMMA, DISPARITY)
        seen = first if mask is None else first[mask]
        cert = incremental_certificate(entry, seen, num_classes, GAMMA, ALPHA_ZETA, DISPARITY, mask)
        certified.append(cert.pa_lower > thresholds if cert.label != -1 else np.zeros(len(radii), bool))
        cost += cert.evaluated
    return np.array(certified), int(cost)


def sequential_irs(
    store: CacheStore, preds: dict, indices: list[int], radii: list[float], n_p_max: int, settings: SequentialSettings
) -> tuple[np.ndarray, int, list]:
    """Sequential IRS with n_p_max replayed from f''s stored predictions: certified (images x radii), quantized-model
    samples and the replays."""
    replays = [
        replay_incremental_sequential(
            store.entry(i), preds[i][:n_p_max], n_p_max, radii, GAMMA, ALPHA_ZETA, DISPARITY, settings
        )
        for i in indices
    ]
    return np.array([r.certified for r in replays]), int(sum(r.evaluated for r in replays)), replays


@dataclass(frozen=True)
class IRSChoice:
    """Sequential IRS's settings and its n_p_max (a multiple of fixed-n IRS's n_p)."""

    settings: SequentialSettings
    n_p_max: int


def certify_grid(
    store: CacheStore, records: dict[int, dict], indices: list[int], radii: list[float], args
) -> tuple[SequentialSettings, list[dict[str, Any]]]:
    """Sequential CERTIFY for every (growth, final_share, curtail) of the grid on the validation run: certified
    accuracy and samples per image against fixed-n at the run's n. Chosen: the fewest samples among the settings whose
    certified accuracy is at most --max-loss below fixed-n's at every radius (ties: without curtailment)."""
    n, sigma, n0 = int(store.key["n"]), float(store.key["sigma"]), int(store.key["n0"])
    correct = np.array([records[i]["c_a"] == records[i]["label"] for i in indices])
    fixed = accuracy(fixed_n_lowers(store, indices, n)[:, None] > thresholds_of(radii, sigma)[None, :], correct)
    rows, default = [], SequentialSettings(tolerance=args.tolerance)
    for growth, share, curtail in itertools.product(args.growths, args.final_shares, args.curtails):
        settings = replace(default, growth=growth, final_share=share, curtail=curtail)
        seq = replay_all(store, indices, radii, settings)
        acc = accuracy(np.array([c.certified for c in seq]), correct)
        rows.append(
            {
                "growth": growth,
                "final_share": share,
                "curtail": curtail,
                "certified_accuracy": acc,
                "fixed_n_accuracy": fixed,
                "largest_loss": float(max(f - a for f, a in zip(fixed, acc))),
                "samples_per_image": float(np.mean([n0 + c.n_used for c in seq])),
            }
        )
    ok = [r for r in rows if r["largest_loss"] <= args.max_loss + 1e-12]
    best = min(ok or rows, key=lambda r: (r["samples_per_image"], r["curtail"] is not None))
    for r in rows:
        r["chosen"] = r is best
    return replace(default, growth=best["growth"], final_share=best["final_share"], curtail=best["curtail"]), rows


def irs_grid(
    qmodels: dict,
    images,
    store: CacheStore,
    records: dict[int, dict],
    indices: list[int],
    radii: list[float],
    growth: float,
    args,
) -> tuple[IRSChoice, list[dict[str, Any]]]:
    """Sequential IRS for every (final_share, n_p_max multiple, curtail) of the grid on the validation run, against
    fixed-n IRS at n_p (computed once per policy), over all --policies. Chosen: the fewest quantized-model samples among the settings with equal certified
    accuracy at every radius for every policy (none: the smallest largest loss, then the fewest samples)."""
    correct = np.array([records[i]["c_a"] == records[i]["label"] for i in indices])
    largest = int(args.np * max(args.np_max_multiples))
    preds = {
        name: approx_predictions(
            qmodel, images, store, indices, largest, Path(args.work) / f"validation-{name}-predictions"
        )
        for name, qmodel in qmodels.items()
    }
    fixed = {name: fixed_irs(store, preds[name], indices, radii, args.np, args.num_classes) for name in qmodels}
    fixed_cost = sum(cost for _, cost in fixed.values())
    rows, default = [], SequentialSettings(tolerance=args.tolerance, growth=growth)
    for share, multiple, curtail in itertools.product(args.final_shares, args.np_max_multiples, args.curtails):
        settings, n_p_max = replace(default, final_share=share, curtail=curtail), int(args.np * multiple)
        seq_cost, loss = 0, 0.0
        for name in qmodels:
            certified, cost, _ = sequential_irs(store, preds[name], indices, radii, n_p_max, settings)
            fixed_acc, seq_acc = accuracy(fixed[name][0], correct), accuracy(certified, correct)
            loss = max(loss, *(f - a for f, a in zip(fixed_acc, seq_acc)))
            seq_cost += cost
        rows.append(
            {
                "final_share": share,
                "curtail": curtail,
                "n_p_max": n_p_max,
                "largest_loss": float(loss),
                "fixed_n_quantized_samples": fixed_cost,
                "sequential_quantized_samples": seq_cost,
            }
        )
    ok = [r for r in rows if r["largest_loss"] <= 1e-12]
    best = min(ok or rows, key=lambda r: (r["largest_loss"], r["sequential_quantized_samples"]))
    for r in rows:
        r["chosen"] = r is best
    return IRSChoice(replace(default, final_share=best["final_share"], curtail=best["curtail"]), best["n_p_max"]), rows


def irs_rows(
    qmodels: dict,
    images,
    store: CacheStore,
    records: dict[int, dict],
    indices: list[int],
    radii: list[float],
    choice: IRSChoice,
    args,
) -> dict[str, Any]:
    """Fixed-n IRS at n_p vs sequential IRS (the chosen settings and n_p_max), for each policy, on the first
    --irs-images images; the real sequential IRS code on the first --check-images of them (same decisions? seconds,
    interleaved with fixed-n)."""
    sigma = float(store.key["sigma"])
    chosen = indices[: args.irs_images]
    correct = np.array([records[i]["c_a"] == records[i]["label"] for i in chosen])
    out: dict[str, Any] = {}
    for name, qmodel in qmodels.items():
        folder = Path(args.work) / Path(args.run).name / f"{name}-predictions"
        preds = approx_predictions(qmodel, images, store, chosen, choice.n_p_max, folder)
        fixed, fixed_cost = fixed_irs(store, preds, chosen, radii, args.np, args.num_classes)
        seq, seq_cost, replays = sequential_irs(store, preds, chosen, radii, choice.n_p_max, choice.settings)
        checks, seq_s, fixed_s = [], [], []
        for i, rep in list(zip(chosen, replays))[: args.check_images]:
            entry = store.entry(i)
            real = certify_incremental_sequential(
                qmodel, entry, images[i], sigma, choice.n_p_max, radii, GAMMA, ALPHA_ZETA, DISPARITY, choice.settings
            )
            checks.append((real.certified, real.n_used, real.n_d) == (rep.certified, rep.n_used, rep.n_d))
            seq_s.append(real.seconds)
            fixed_s.append(
                certify_incremental(qmodel, entry, images[i], sigma, args.np, GAMMA, ALPHA_ZETA, DISPARITY).seconds
            )
        out[name] = {
            "images": len(chosen),
            "n_p": args.np,
            "n_p_max": choice.n_p_max,
            "fixed_n_irs": {
                "certified_accuracy": accuracy(fixed, correct),
                "quantized_samples": fixed_cost,
            },
            "sequential_irs": {
                "certified_accuracy": accuracy(seq, correct),
                "quantized_samples": seq_cost,
            },
            "decisions_differing": [int(v) for v in (fixed != seq).sum(0)],
            "check": {
                "images": len(checks),
                "identical_decisions": all(checks),
                "sequential_seconds_per_image": float(np.mean(seq_s)) if seq_s else None,
                "fixed_n_seconds_per_image": float(np.mean(fixed_s)) if fixed_s else None,
            },
        }
        print(f"{name}: {json.dumps(out[name])}", flush=True)
    return out


def _eps(curtail: float | None) -> str:
    return "off" if curtail is None else f"{curtail:g}"


def tuning_markdown(data: dict) -> list[str]:
    """The settings grid on the validation images, if the settings were chosen there."""
    tuning = data.get("tuning") or {}
    if not tuning:
        return ["", "Settings: the library defaults (not chosen on validation images in this run)."]
    head = " | ".join(f"r = {r:g}" for r in data["radii"])
    lines = [
        "",
        f"## Settings chosen on {tuning['images']} held-out validation images (never the test images above)",
        "",
        f"Sequential CERTIFY: the fewest samples among the settings whose certified accuracy is at most "
        f"{data['max_loss']:g} below fixed-n's at n = {data['n']} at every radius.",
        "",
        f"| growth | final share | curtail | {head} | largest loss | samples per image | chosen |",
        "|---|---|---|" + "---|" * len(data["radii"]) + "---|---|---|",
    ]
    fixed = tuning["certify"][0]["fixed_n_accuracy"]
    lines.append("| fixed-n | | | " + " | ".join(f"{a:.3f}" for a in fixed) + f" | | {data['n0'] + data['n']} | |")
    for r in tuning["certify"]:
        accs = " | ".join(f"{a:.3f}" for a in r["certified_accuracy"])
        lines.append(
            f"| {r['growth']:g} | {r['final_share']:g} | {_eps(r.get('curtail'))} | {accs} | {r['largest_loss']:.3f} | "
            f"{r['samples_per_image']:.0f} | {'yes' if r['chosen'] else ''} |"
        )
    if tuning.get("irs"):
        lines += [
            "",
            f"Sequential IRS (growth {data['settings']['growth']:g}, policies {', '.join(data['irs'])}): the fewest "
            f"quantized-model samples among the settings with the certified accuracy of fixed-n IRS at n_p = "
            f"{data['irs_n_p']} at every radius for every policy.",
            "",
            "| final share | curtail | n_p_max | largest loss | quantized samples, sequential | fixed-n IRS | chosen |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in tuning["irs"]:
            lines.append(
                f"| {r['final_share']:g} | {_eps(r.get('curtail'))} | {r['n_p_max']} | {r['largest_loss']:.3f} | "
                f"{r['sequential_quantized_samples']:,} | {r['fixed_n_quantized_samples']:,} | "
                f"{'yes' if r['chosen'] else ''} |"
            )
    return lines


def markdown(data: dict) -> str:
    radii = data["radii"]
    head = " | ".join(f"r = {r:g}" for r in radii)
    lines = [
        f"# Sequential vs fixed-n certification: {data['checkpoint']}, sigma {data['sigma']:g}",
        "",
        f"{data['images']} test images (every {data['skip']}th, indices in the JSON), alpha {data['alpha']}, "
        f"n0 {data['n0']}, batch {data['batch_size']}, run seed {data['seed']}; sequential: Clopper-Pearson at "
        f"the looks {data['looks']} (growth {data['settings']['growth']:g}) with levels summing to alpha "
        f"({data['settings']['final_share']:g} of it at n_max), curtailment "
        f"{_eps(data['settings'].get('curtail'))}. Derived from the fixed-n run's "
        f"stored predictions (`{data['run']}`); the real sequential code on the first "
        f"{data['check']['images']} images gave identical decisions: {data['check']['identical_decisions']}.",
        "",
        f"| method | {head} | samples per image | total samples | samples vs fixed-n at {data['n']} |",
        "|---|" + "---|" * len(radii) + "---|---|---|",
    ]
    base = data["rows"][f"fixed-n {data['n']}"]["samples"]
    for name, row in data["rows"].items():
        if "certified_accuracy" not in row:
            continue
        accs = " | ".join(f"{a:.3f}" for a in row["certified_accuracy"])
        lines.append(
            f"| {name} | {accs} | {row['samples_per_image']:.0f} | {row['samples']:,} | "
            f"{base / row['samples']:.1f}x fewer |"
            if name != f"fixed-n {data['n']}"
            else f"| {name} | {accs} | {row['samples_per_image']:.0f} | {row['samples']:,} | 1x |"
        )
    seq = data["rows"]["sequential"]
    alone = data["rows"]["sequential, one radius alone"]
    lines += [
        "",
        f"Sequential stopped at n_max on {seq['stopped_at_n_max']} of {data['images']} images; decisions "
        f"differing from fixed-n at {data['n']} per radius: {seq['decisions_differing_from_fixed_n']} "
        f"(certified only by sequential {seq['certified_by_sequential_not_fixed_n']}, only by fixed-n "
        f"{seq['certified_by_fixed_n_not_sequential']}); median samples when each radius was decided: "
        f"{[int(v) for v in seq['decided_at_median']]}.",
        "Samples per image with one radius asked alone: "
        + ", ".join(f"r = {r}: {v:.0f}" for r, v in alone.items())
        + ".",
    ]
    acr = data["rows"]["sequential ACR mode"]
    lines += [
        "",
        f"ACR mode (no radii, tolerance {acr['tolerance']}): ACR {acr['acr']:.4f} vs fixed-n "
        f"{acr['fixed_n_acr']:.4f}, {acr['samples_per_image']:.0f} samples per image "
        f"({base / acr['samples']:.1f}x fewer); largest shortfall vs fixed-n {acr['largest_shortfall_vs_fixed_n']:.3f}, "
        f"images short by more than the tolerance: {acr['images_short_by_more_than_tolerance']} (the levels split over the "
        f"looks cost radius even at n_max); against the same procedure without early stops (ACR "
        f"{acr['acr_without_early_stops']:.4f}): largest shortfall {acr['largest_shortfall_vs_no_early_stop']:.3f}, "
        f"images short by more than the tolerance: {acr['images_short_of_no_early_stop_by_more_than_tolerance']}.",
    ]
    lines += tuning_markdown(data)
    c = data["check"]
    if c["images"]:
        lines += [
            "",
            f"Time (real code, first {c['images']} images, interleaved, {data['threads']} thread(s), shared "
            f"CPU): sequential {c['sequential_seconds_per_image']:.2f} s/image "
            f"({c['sequential_samples_per_image']:.0f} samples); fixed-n at {c['fixed_n_time_n']}: "
            f"{c['fixed_n_seconds_per_image_at_time_n']:.2f} s/image, so at {data['n']} about "
            f"{c['fixed_n_seconds_per_image_at_n_extrapolated']:.1f} s/image (per-sample cost: sequential "
            f"{1e6 * c['sequential_seconds_per_sample']:.0f} us, fixed-n {1e6 * c['fixed_n_seconds_per_sample']:.0f} us). "
            f"The base run itself took {data['base_run_seconds_per_image']:.1f} s/image (niced, 1 thread, "
            "under other load).",
        ]
    if data.get("irs"):
        lines += [
            "",
            f"## IRS of quantized models (one-sided disparity, gamma {GAMMA}, alpha_zeta {ALPHA_ZETA})",
            "",
            f"| policy | method | {head} | quantized-model samples | |",
            "|---|---|" + "---|" * len(radii) + "---|---|",
        ]
        for name, row in data["irs"].items():
            for label, key, n_p in (
                ("fixed-n IRS", "fixed_n_irs", row["n_p"]),
                ("sequential IRS", "sequential_irs", row.get("n_p_max", row["n_p"])),
            ):
                accs = " | ".join(f"{a:.3f}" for a in row[key]["certified_accuracy"])
                ratio = row["fixed_n_irs"]["quantized_samples"] / max(1, row[key]["quantized_samples"])
                lines.append(
                    f"| {name} | {label} (n_p {'max ' if key == 'sequential_irs' else ''}{n_p}, "
                    f"{row['images']} images) | {accs} | "
                    f"{row[key]['quantized_samples']:,} | {ratio:.1f}x fewer |"
                )
            ch = row["check"]
            if ch["images"]:
                lines.append(
                    f"| {name} | real code on {ch['images']} images: identical {ch['identical_decisions']}, "
                    f"{ch['sequential_seconds_per_image']:.2f} s/image vs fixed-n IRS "
                    f"{ch['fixed_n_seconds_per_image']:.2f} |" + " |" * (len(radii) + 1)
                )
    lines += ["", f"Regenerate: `{data['command']}`"]
    return "\n".join(lines) + "\n"


def _curtail(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)


def validation_run(model, base_info: dict, key: dict, channels_last: bool, args) -> tuple[CacheStore, dict, list]:
    """CERTIFY --validation held-out validation images of the base checkpoint (its seeded validation draw, never test
    images) with the test run's n0, n, alpha, batch and seed and an IRS cache (resumable): the sequential settings are
    chosen on these, so the test images only report."""
    images, labels = load_dataset(base_info["dataset"], "train")
    indices = validation_indices(base_info, args.validation, seed=0)
    folder = Path(args.work) / f"validation-{Path(args.run).name}-{args.validation}"
    certify_dataset(
        model,
        images,
        labels,
        indices,
        folder,
        float(key["sigma"]),
        int(key["n0"]),
        int(key["n"]),
        float(key["alpha"]),
        int(key["batch_size"]),
        int(key["seed"]),
        identity={"split": "validation", "base_checkpoint_sha256": base_info["sha256"]},
        channels_last=channels_last,
        keep_cache=True,
        resume=True,
    )
    records = {int(r["index"]): r for r in read_jsonl(folder / "certificates.jsonl")}
    return CacheStore.open(folder), records, images


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="fixed-n certify run folder with irs_cache (--keep-cache)")
    parser.add_argument("--checkpoint", required=True, help="the run's classifier (a checkpoint, zoo name or .onnx)")
    parser.add_argument(
        "--base-checkpoint",
        default=None,
        help="torch checkpoint it came from: validation split, IRS's f' (default: --checkpoint)",
    )
    parser.add_argument("--radii", type=float, nargs="+", default=[0.25, 0.5, 0.75, 1.0])
    parser.add_argument("--also-n", type=int, nargs="*", default=[10_000], help="fixed-n prefixes to compare")
    parser.add_argument("--tolerance", type=float, default=0.05, help="ACR mode tolerance")
    parser.add_argument("--max-images", type=int, default=None, help="use at most this many images of the run")
    parser.add_argument("--check-images", type=int, default=5)
    parser.add_argument("--time-n", type=int, default=10_000)
    parser.add_argument("--policies", nargs="*", default=[])
    parser.add_argument("--np", type=int, default=10_000)
    parser.add_argument("--irs-images", type=int, default=100)
    parser.add_argument("--validation", type=int, default=0, help="choose the settings on this many validation images")
    parser.add_argument("--growths", type=float, nargs="+", default=[1.25, 1.5, 2.0])
    parser.add_argument("--final-shares", type=float, nargs="+", default=[0.25, 0.5, 0.75, 0.9])
    parser.add_argument(
        "--curtails", type=_curtail, nargs="+", default=[None, 0.01, 0.05, 0.1, 0.2], help="curtailment eps; none: off"
    )
    parser.add_argument("--np-max-multiples", type=float, nargs="+", default=[1.0, 1.5, 2.0])
    parser.add_argument("--max-loss", type=float, default=0.01, help="largest certified-accuracy loss vs fixed-n")
    parser.add_argument("--work", default="runs/bench_sequential")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--name", default="sequential")
    parser.add_argument("--results", default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    store = CacheStore.open(run)
    records = {int(r["index"]): r for r in read_jsonl(run / "certificates.jsonl")}
    identity = json.loads((run / "run.json").read_text())["identity"]
    cached = set(store.indices)
    indices = [i for i in sorted(records) if i in cached][: args.max_images]
    key = store.key
    model, info = load_checkpoint(resolve(args.checkpoint))
    base_name = args.base_checkpoint or args.checkpoint
    _, base_info = load_checkpoint(resolve(base_name))
    args.num_classes = int(base_info["num_classes"])
    channels_last = bool(identity.get("channels_last"))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    images, _ = load_dataset(info["dataset"], "test")
    radii = sorted(args.radii)
    n = int(key["n"])
    qmodels = quantized_models(base_name, args.policies) if args.policies else {}
    settings, irs_choice = SequentialSettings(tolerance=args.tolerance), None
    tuning: dict[str, Any] = {}
    if args.validation:
        val_store, val_records, val_images = validation_run(model, base_info, key, channels_last, args)
        val_indices = sorted(val_records)
        settings, tuning["certify"] = certify_grid(val_store, val_records, val_indices, radii, args)
        print(json.dumps(tuning["certify"]), flush=True)
        if qmodels:
            irs_choice, tuning["irs"] = irs_grid(
                qmodels, val_images, val_store, val_records, val_indices, radii, settings.growth, args
            )
            print(json.dumps(tuning["irs"]), flush=True)
        tuning["images"] = len(val_indices)
    irs_choice = irs_choice or IRSChoice(settings, args.np)
    rows = fixed_rows(store, records, indices, radii, [n] + [m for m in args.also_n if m < n], settings)
    print(json.dumps(rows, indent=1), flush=True)
    check = check_and_time(model, images, store, indices, radii, settings, args)
    print(json.dumps(check), flush=True)
    irs = irs_rows(qmodels, images, store, records, indices, radii, irs_choice, args) if qmodels else {}
    data = {
        "checkpoint": args.checkpoint,
        "base_checkpoint": base_name,
        "run": str(run),
        "sigma": float(key["sigma"]),
        "alpha": float(key["alpha"]),
        "n0": int(key["n0"]),
        "n": n,
        "batch_size": int(key["batch_size"]),
        "seed": int(key["seed"]),
        "skip": identity.get("skip"),
        "images": len(indices),
        "indices": indices,
        "radii": radii,
        "settings": asdict(settings),
        "irs_settings": {**asdict(irs_choice.settings), "n_p_max": irs_choice.n_p_max},
        "tuning": tuning,
        "max_loss": args.max_loss,
        "irs_n_p": args.np,
        "looks": look_schedule(n, settings),
        "rows": rows,
        "check": check,
        "irs": irs,
        "base_run_seconds_per_image": float(np.mean([records[i]["seconds"] for i in indices])),
        "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
        "command": "python benchmarks/bench_sequential.py "
        + " ".join(a if " " not in a else repr(a) for a in (sys.argv[1:] if argv is None else argv)),
        "software": software_versions(),
    }
    write_results(args.name, data, markdown(data), Path(args.results) if args.results else None)
    print(markdown(data))
    return data


if __name__ == "__main__":
    main()
