"""The cost of one search candidate (issue 6): quantize + calibrate, then score on the search set, and the speed-up of
scoring all search images at once (``certify_many``) over one image at a time.

For each shipped model: W4A4 ``quantize`` with noisy calibration (256 inputs, as the search), then CERTIFY with n0 = 100
and n_p = 400 samples on K held-out validation images, (a) one image at a time (``certify``: two noise batches per
image) and (b) packed (``certify_many``: at most 5,000 samples per forward pass), and as the floor the quantized
model's own forward passes over the same number of noisy samples (``classify``, as certification makes them). Median of ``--repeats`` after
one warm-up. Writes benchmarks/results/<name>.json and <name>.md:

    python benchmarks/bench_candidate.py [--models small-cnn-fmnist-s0.25 resnet20-fmnist-s0.25] [--images 50]
        [--device auto] [--repeats 3] [--name candidate]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from certquant.data import load_dataset
from certquant.models import load_checkpoint
from certquant.quant import Policy, noisy_calibration_batch, quantizable_layers, quantize
from certquant.quant.checkpoint import input_shape
from certquant.search.job import validation_indices
from certquant.smoothing import certify, certify_many, image_seed
from certquant.smoothing.core import classify
from certquant.train import resolve_device
from certquant.utils import software_versions
from certquant.utils.tables import markdown_table
from common import device_name, write_results

N0, N_P, ALPHA, BATCH = 100, 400, 0.001, 5000


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> tuple[float, object]:
    """Median wall seconds of ``fn`` over ``repeats`` runs after one warm-up (synchronizing a GPU), and its result."""
    out = fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times), out


def raw_forward(model: torch.nn.Module, x: torch.Tensor, samples: int, sigma: float) -> None:
    """The floor: the model's classes of ``samples`` noisy copies of one image, 5,000 at a time, in the passes
    certification makes (``classify``: 200-sample passes on a CPU, whole batches on a GPU)."""
    with torch.inference_mode():
        for start in range(0, samples, BATCH):
            count = min(BATCH, samples - start)
            classify(model, x.unsqueeze(0) + sigma * torch.randn(count, *x.shape, device=x.device))


def bench_model(name: str, images: int, device: torch.device, repeats: int) -> dict:
    model, info = load_checkpoint(name, map_location=device)
    model.eval()
    sigma = float(info["sigma"])
    train_x, _ = load_dataset(info["dataset"], "train")
    indices = validation_indices(info, images, 0)
    xs = [train_x[i].to(device) for i in indices]
    seeds = [image_seed(0, i) for i in indices]
    calibration = noisy_calibration_batch(train_x[indices], sigma, 256, 0)
    policy = Policy.uniform(quantizable_layers(model, input_shape(info)), 4, arch=info["arch"])
    t_quant, qmodel = timed(lambda: quantize(model, policy, calibration, arch=info["arch"]), device, repeats)
    t_one, one = timed(
        lambda: [certify(qmodel, x, sigma, N0, N_P, ALPHA, BATCH, s) for x, s in zip(xs, seeds)], device, repeats
    )
    t_many, many = timed(lambda: certify_many(qmodel, xs, sigma, N0, N_P, ALPHA, BATCH, seeds), device, repeats)
    t_raw, _ = timed(lambda: raw_forward(qmodel, xs[0], images * (N0 + N_P), sigma), device, repeats)
    same = sum((a.label, a.n_a) == (b.label, b.n_a) for a, b in zip(one, many))
    return {
        "model": name,
        "images": images,
        "samples": images * (N0 + N_P),
        "quantize_s": t_quant,
        "score_one_by_one_s": t_one,
        "score_packed_s": t_many,
        "raw_forward_s": t_raw,
        "packing_speedup": t_one / t_many,
        "packed_over_raw": t_many / t_raw,
        "identical_certificates": same,
    }


def markdown(data: dict) -> str:
    rows = [
        [
            r["model"],
            r["images"],
            f"{r['quantize_s']:.3f}",
            f"{r['score_one_by_one_s']:.3f}",
            f"{r['score_packed_s']:.3f}",
            f"{r['packing_speedup']:.2f}x",
            f"{r['raw_forward_s']:.3f}",
            f"{r['packed_over_raw']:.2f}x",
            f"{r['identical_certificates']}/{r['images']}",
        ]
        for r in data["rows"]
    ]
    table = markdown_table(
        [
            "model",
            "images",
            "quantize s",
            "score 1-by-1 s",
            "score packed s",
            "packing speed-up",
            "raw forward s",
            "packed / raw",
            "same certificates",
        ],
        rows,
    )
    return (
        f"# Cost of one search candidate\n\nW4A4, n0 = {N0}, n_p = {N_P}, {BATCH} samples per forward pass; "
        f"median of {data['repeats']} after a warm-up. Device: {data['device']}.\n\n{table}\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["small-cnn-fmnist-s0.25", "resnet20-fmnist-s0.25"])
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--name", default="candidate", help="results file stem under benchmarks/results")
    args = parser.parse_args()
    device = resolve_device(args.device)
    rows = []
    for name in args.models:
        rows.append(bench_model(name, args.images, device, args.repeats))
        print(rows[-1], flush=True)
    data = {"device": device_name(device), "repeats": args.repeats, "rows": rows, "software": software_versions()}
    write_results(args.name, data, markdown(data))
    print(markdown(data))


if __name__ == "__main__":
    main()
