"""Speed of CERTIFY against the model's own forward passes over the same number of noisy samples.

For each model and image, measured side by side (interleaved, so background load hits both alike):
  forward, whole batches: the model's forward passes over n0 + n inputs in batches of the same sizes as CERTIFY's
           noise batches (inputs made once, outside the timed region) -- what a plain certifier pays;
  forward, CPU passes: the same inputs in passes of at most ``CPU_FORWARD_CHUNK`` samples, as CERTIFY classifies
           them on a CPU -- the floor of certquant's own certifier;
  certify: ``certquant.smoothing.certify`` (noise drawn with the seeded generators, add, forward, argmax, bincount,
           Clopper-Pearson bound).
Overhead = certify time / CPU-pass forward time - 1 (target <= 10%); speed-up = whole-batch forward time / certify
time. Writes benchmarks/results/certify.json, .md.

    python benchmarks/bench_certify.py [--images 2] [--n 10000] [--batch 1000] [--channels-last small-cnn resnet20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from certquant.models import build
from certquant.smoothing import certify
from certquant.smoothing.core import CPU_FORWARD_CHUNK
from certquant.smoothing.noise import batch_counts
from certquant.utils import software_versions
from common import write_results

MODELS = {
    "small-cnn": lambda: build("small-cnn"),
    "resnet20": lambda: build("resnet20", in_channels=1, input_size=28),
}


def _forward_only(model: torch.nn.Module, inputs: dict[int, torch.Tensor], sizes: list[int],
                  chunk: int | None = None) -> float:
    """Seconds of the forward passes (and argmax) over inputs of ``sizes``, each in passes of at most ``chunk``."""
    started = time.perf_counter()
    with torch.inference_mode():
        for size in sizes:
            for piece in inputs[size].split(chunk or size):
                model(piece).argmax(1)
    return time.perf_counter() - started


def bench_model(name: str, images: int, n0: int, n: int, batch: int, channels_last: bool) -> dict:
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    xs = torch.rand(images + 1, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    sizes = batch_counts(n0, batch) + batch_counts(n, batch)
    inputs = {s: (xs[0] + 0.25 * torch.randn(s, 1, 28, 28)).clamp(0, 1) for s in set(sizes)}
    if channels_last:
        inputs = {s: t.contiguous(memory_format=torch.channels_last) for s, t in inputs.items()}
    # warm-up (first image, not recorded)
    _forward_only(model, inputs, sizes[:3])
    certify(model, xs[0], 0.25, n0=n0, n=batch, batch_size=batch)
    whole_s, forward_s, certify_s = [], [], []
    for i in range(1, images + 1):
        whole_s.append(_forward_only(model, inputs, sizes))
        forward_s.append(_forward_only(model, inputs, sizes, CPU_FORWARD_CHUNK))
        certify_s.append(certify(model, xs[i], 0.25, n0=n0, n=n, batch_size=batch, seed=i).seconds)
    samples = n0 + n
    return {
        "model": name, "images": images, "n0": n0, "n": n, "batch_size": batch, "channels_last": channels_last,
        "forward_chunk": CPU_FORWARD_CHUNK,
        "forward_whole_batch_seconds_per_image": statistics.median(whole_s),
        "forward_seconds_per_image": statistics.median(forward_s),
        "certify_seconds_per_image": statistics.median(certify_s),
        "forward_samples_per_second": samples * images / sum(forward_s),
        "certify_samples_per_second": samples * images / sum(certify_s),
        "overhead": sum(certify_s) / sum(forward_s) - 1,
        "speedup_vs_whole_batch_forward": sum(whole_s) / sum(certify_s),
        "forward_whole_batch_seconds": whole_s, "forward_seconds": forward_s, "certify_seconds": certify_s,
    }


def _markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        "# CERTIFY speed vs the model's own forward passes",
        "",
        f"n0 = {rows[0]['n0']}, n = {rows[0]['n']}, sigma = 0.25, 1x28x28 inputs, {meta['threads']} torch threads, "
        f"{meta['device']}; median over {rows[0]['images']} images, measured interleaved in one run "
        f"({meta['date']}; {meta['cpu_count']} cores, load average {meta['load_average_at_end'][1]} over the last 5 "
        f"minutes, so absolute speeds vary). CERTIFY classifies each noise batch in passes of at most "
        f"{rows[0]['forward_chunk']} samples on a CPU. Overhead = certify time / forward time in those passes - 1 "
        "(target <= 10%; negative values are load fluctuations); speed-up = forward time in whole batches / certify "
        "time.",
        "",
        "| model | batch | channels_last | forward, whole batches s/image | forward s/image | certify s/image "
        "| certify samples/s | overhead | speed-up vs whole batches |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['batch_size']} | {r['channels_last']} | "
                     f"{r['forward_whole_batch_seconds_per_image']:.2f} | {r['forward_seconds_per_image']:.2f} | "
                     f"{r['certify_seconds_per_image']:.2f} | {r['certify_samples_per_second']:.0f} | "
                     f"{100 * r['overhead']:+.1f}% | {r['speedup_vs_whole_batch_forward']:.2f}x |")
    lines += ["", "Regenerate: `python benchmarks/bench_certify.py` (numbers vary with machine load)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--channels-last", nargs="*", default=[], metavar="MODEL",
                        help="models to measure a second time in torch.channels_last")
    parser.add_argument("--name", default="certify", help="results file stem")
    args = parser.parse_args()
    rows = []
    for name in args.models:
        for cl in ([False, True] if name in args.channels_last else [False]):
            row = bench_model(name, args.images, args.n0, args.n, args.batch, cl)
            print(f"{name} channels_last={cl}: forward {row['forward_seconds_per_image']:.2f} s/image, certify "
                  f"{row['certify_seconds_per_image']:.2f} s/image, overhead {100 * row['overhead']:+.1f}%", flush=True)
            rows.append(row)
    meta = {"threads": torch.get_num_threads(), "device": "CPU", "date": time.strftime("%Y-%m-%d %H:%M"),
            "load_average_at_end": [round(v, 2) for v in os.getloadavg()], "cpu_count": os.cpu_count(),
            "software": software_versions()}
    write_results(args.name, {"results": rows, **meta}, _markdown(rows, meta))
    print(_markdown(rows, meta))


if __name__ == "__main__":
    main()
