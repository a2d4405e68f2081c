"""Accuracy of uniform fake quantization of the shipped noise-trained models, before and after a short noise-aware
fine-tune (SPEC §4).

For each checkpoint (default: the small CNN and ResNet-20 on Fashion-MNIST at sigma 0.25) and each uniform WbAb:
  PTQ: ``quantize`` calibrated on 512 noisy training images (noise = the checkpoint's sigma, SPEC §4);
  FT:  the PTQ model after ``finetune`` (1 epoch on a seeded subset of training images, same noise);
clean test accuracy and noisy test accuracy (x + N(0, sigma^2), mean +- std over noise seeds), on the full test set
by default, with BitOPs as a fraction of FP32. The FP32 row comes first. Finished rows are appended to
benchmarks/results/tmp/quant.jsonl, so a killed run resumes; writes benchmarks/results/quant.json and quant.md.

    python benchmarks/bench_quant.py [--models small-cnn-fmnist-s0.25 resnet20-fmnist-s0.25] [--bits 8 6 4 3 2]
        [--eval-images 10000] [--finetune-images 5000] [--finetune-epochs 1] [--noise-seeds 0 1 2] [--fresh]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

from certquant.data import load_dataset
from certquant.models import load_checkpoint
from certquant.quant import (
    Policy,
    bitops_fraction,
    finetune,
    model_size_bits,
    noisy_calibration_batch,
    quantizable_layers,
    quantize,
)
from certquant.quant.checkpoint import _train_images, input_shape
from certquant.train import accuracy
from certquant.utils import append_jsonl, atomic_write_json, atomic_write_text, read_jsonl, software_versions

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PARTIAL = RESULTS / "tmp" / "quant.jsonl"
DEFAULT_MODELS = ["small-cnn-fmnist-s0.25", "resnet20-fmnist-s0.25"]


def resolve(name: str) -> str:
    """The training run's checkpoint if present (runs/zoo/<name>/model.pt), else the zoo entry of that name."""
    local = ROOT / "runs" / "zoo" / name / "model.pt"
    return str(local) if local.is_file() else name


def accuracies(model: torch.nn.Module, images, labels, sigma: float, seeds: list[int]) -> dict:
    noisy = [accuracy(model, images, labels, sigma, seed=s, batch_size=500) for s in seeds]
    return {
        "clean": accuracy(model, images, labels, 0.0, batch_size=500),
        "noisy": statistics.mean(noisy),
        "noisy_std": statistics.stdev(noisy) if len(noisy) > 1 else 0.0,
        "noisy_per_seed": noisy,
    }


def bench_model(name: str, args: argparse.Namespace, done: dict) -> list[dict]:
    path = resolve(name)
    base, info = load_checkpoint(path)
    sigma = float(info["sigma"])
    layers = quantizable_layers(base, input_shape(info))
    test_x, test_y = load_dataset(info["dataset"], "test")
    test_x, test_y = test_x[: args.eval_images], test_y[: args.eval_images]
    train_x, train_y = _train_images(info)
    calib = noisy_calibration_batch(train_x, sigma, args.calib_images, seed=0)
    subset = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(0))[: args.finetune_images]
    common = {
        "model": name,
        "arch": info["arch"],
        "checkpoint": path,
        "sha256": info["sha256"],
        "sigma": sigma,
        "eval_images": len(test_x),
        "settings": args.settings,
    }
    rows = []
    key = (name, "FP32", info["sha256"])
    if key not in done:
        started = time.time()
        row = {
            **common,
            "config": "FP32",
            "bits": 32,
            "bitops_fraction": 1.0,
            "model_size_bits": sum(l.params for l in layers) * 32,
            "ptq": accuracies(base, test_x, test_y, sigma, args.noise_seeds),
            "ft": None,
            "seconds": time.time() - started,
        }
        append_jsonl(PARTIAL, row)
        done[key] = row
    rows.append(done[key])
    for bits in args.bits:
        key = (name, f"W{bits}A{bits}", info["sha256"])
        if key in done:
            rows.append(done[key])
            continue
        policy = Policy.uniform(layers, bits, bits, arch=info["arch"])
        started = time.time()
        qmodel = quantize(base, policy, calib, arch=info["arch"])
        ptq = accuracies(qmodel, test_x, test_y, sigma, args.noise_seeds)
        ptq_seconds = time.time() - started
        started = time.time()
        tuned = finetune(
            copy.deepcopy(qmodel),
            train_x[subset],
            train_y[subset],
            sigma,
            args.finetune_epochs,
            lr=args.lr,
            batch_size=128,
            seed=0,
            device="cpu",
        )
        ft_seconds = time.time() - started
        ft = accuracies(tuned, test_x, test_y, sigma, args.noise_seeds)
        row = {
            **common,
            "config": f"W{bits}A{bits}",
            "bits": bits,
            "bitops_fraction": bitops_fraction(layers, policy),
            "model_size_bits": model_size_bits(layers, policy),
            "ptq": ptq,
            "ft": ft,
            "finetune": {"epochs": args.finetune_epochs, "images": len(subset), "lr": args.lr, "seconds": ft_seconds},
            "seconds": ptq_seconds,
        }
        append_jsonl(PARTIAL, row)
        done[key] = row
        rows.append(row)
        print(
            f"{name} W{bits}A{bits}: clean {ptq['clean']:.4f} -> FT {ft['clean']:.4f}, "
            f"noisy {ptq['noisy']:.4f} -> FT {ft['noisy']:.4f}",
            flush=True,
        )
    return rows


def pct(x: float) -> str:
    return f"{100 * x:.2f}"


def markdown(rows: list[dict], args: argparse.Namespace, checks: list[dict]) -> str:
    lines = [
        "# Uniform fake quantization of the shipped models (bench_quant.py)",
        "",
        f"Test accuracy in % on the first {args.eval_images} test images of each model's dataset: clean, and under N(0, sigma^2) "
        f"noise (mean +- std over noise seeds {args.noise_seeds}). PTQ: calibrated on {args.calib_images} noisy "
        f"training images (noise = checkpoint sigma). FT: PTQ then {args.finetune_epochs} epoch(s) of noise-aware "
        f"fine-tuning on {args.finetune_images} training images (SGD lr {args.lr}, batch 128, one seed). "
        "Delta = quantized - FP32, in points. Weights per-channel symmetric (MSE clip at 2 bits); activations "
        "per-tensor, signed for the first layer, unsigned after ReLU (MSE clip below 8 bits).",
        "",
        "| model | config | BitOPs / FP32 | clean | noisy | d clean | d noisy | FT clean | FT noisy | FT d clean | FT d noisy |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    fp = {r["model"]: r["ptq"] for r in rows if r["config"] == "FP32"}
    for r in rows:
        p, f, ref = r["ptq"], r["ft"], fp[r["model"]]
        cells = [
            r["model"],
            r["config"],
            f"{r['bitops_fraction']:.6f}",
            pct(p["clean"]),
            f"{pct(p['noisy'])} +- {pct(p['noisy_std'])}",
        ]
        if r["config"] == "FP32":
            cells += ["", "", "", "", "", ""]
        else:
            cells += [
                f"{100 * (p['clean'] - ref['clean']):+.2f}",
                f"{100 * (p['noisy'] - ref['noisy']):+.2f}",
                pct(f["clean"]),
                f"{pct(f['noisy'])} +- {pct(f['noisy_std'])}",
                f"{100 * (f['clean'] - ref['clean']):+.2f}",
                f"{100 * (f['noisy'] - ref['noisy']):+.2f}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Checks", ""]
    lines += [f"- {c['check']}: {c['value']:+.2f} points -> {'PASS' if c['pass'] else 'FAIL'}" for c in checks]
    lines += ["", "Command: `python benchmarks/bench_quant.py " + " ".join(args.argv) + "`", ""]
    return "\n".join(lines)


def run_checks(rows: list[dict]) -> list[dict]:
    fp = {r["model"]: r["ptq"] for r in rows if r["config"] == "FP32"}
    checks = []
    for r in rows:
        ref = fp[r["model"]]
        if r["config"] == "W8A8":
            drop = 100 * (r["ptq"]["clean"] - ref["clean"])
            checks.append(
                {
                    "check": f"{r['model']} W8A8 without fine-tuning loses <= 0.5 points clean",
                    "value": drop,
                    "pass": drop >= -0.5,
                }
            )
        if r["config"] == "W4A4" and r["arch"] == "small-cnn":
            drop = 100 * (r["ft"]["clean"] - ref["clean"])
            checks.append(
                {
                    "check": f"{r['model']} W4A4 after fine-tuning within 2 points of FP32 clean",
                    "value": drop,
                    "pass": drop >= -2.0,
                }
            )
    return checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--bits", nargs="+", type=int, default=[8, 6, 4, 3, 2])
    parser.add_argument("--eval-images", type=int, default=10000)
    parser.add_argument("--calib-images", type=int, default=512)
    parser.add_argument("--finetune-images", type=int, default=5000)
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--noise-seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fresh", action="store_true", help="ignore finished rows of an earlier run")
    args = parser.parse_args()
    args.argv = sys.argv[1:]
    torch.set_num_threads(args.threads)
    settings = {k: v for k, v in vars(args).items() if k not in ("argv", "fresh", "threads", "models")}
    args.settings = settings
    if args.fresh and PARTIAL.exists():
        PARTIAL.unlink()
    # rows carry the settings and checkpoint hash they were made with: other settings or a retrained model never
    # reuse them
    done = {(r["model"], r["config"], r.get("sha256")): r for r in read_jsonl(PARTIAL) if r.get("settings") == settings}
    rows: list[dict] = []
    started = time.time()
    for name in args.models:
        rows += bench_model(name, args, done)
    checks = run_checks(rows)
    result = {
        "benchmark": "quant",
        "settings": settings,
        "rows": rows,
        "checks": checks,
        "seconds": time.time() - started,
        "software": software_versions(),
        "threads": args.threads,
    }
    atomic_write_json(RESULTS / "quant.json", result)
    atomic_write_text(RESULTS / "quant.md", markdown(rows, args, checks))
    print(markdown(rows, args, checks))


if __name__ == "__main__":
    main()
