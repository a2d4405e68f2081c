"""Speed of CERTIFY against the model's own forward passes over the same number of noisy samples.

For each model and image, measured side by side (interleaved, so background load hits both alike):
  forward, whole batches: the model's forward passes over n0 + n inputs in batches of the same sizes as CERTIFY's
           noise batches (inputs made once, outside the timed region) -- what a plain certifier pays;
  forward, CPU passes: the same inputs in passes of at most ``CPU_FORWARD_CHUNK`` samples, as CERTIFY classifies
           them on a CPU -- the floor of certquant's own certifier;
  certify: ``certquant.smoothing.certify`` (noise drawn with the seeded generators, add, forward, argmax, bincount,
           Clopper-Pearson bound);
  sequential: ``certquant.smoothing.sequential.certify_sequential`` in ACR mode with tolerance 0, so it draws all n
           samples and makes every look (the per-sample cost of the sequential path, all its bookkeeping included).
Each is timed twice: wall clock, and the CPU time of the process (``time.process_time``), which a loaded machine
(other jobs taking the cores) does not inflate when torch runs one thread; the ratios are given for both.
Overhead = certify time / CPU-pass forward time - 1 (target <= 5%); speed-up = whole-batch forward time / certify
time. Writes benchmarks/results/certify.json, .md.

    python benchmarks/bench_certify.py [--images 2] [--n 10000] [--batch 1000] [--channels-last small-cnn resnet20]
        [--threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

from certquant.models import build
from certquant.smoothing import certify
from certquant.smoothing.core import CPU_FORWARD_CHUNK
from certquant.smoothing.noise import batch_counts
from certquant.smoothing.sequential import SequentialSettings, certify_sequential
from certquant.utils import software_versions
from common import write_results

MODELS = {
    "small-cnn": lambda: build("small-cnn"),
    "resnet20": lambda: build("resnet20", in_channels=1, input_size=28),
}


def _timed(run) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of ``run()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def _forward_only(
    model: torch.nn.Module, inputs: dict[int, torch.Tensor], sizes: list[int], chunk: int | None = None
) -> tuple[float, float]:
    """(wall, CPU) seconds of the forward passes (and argmax) over inputs of ``sizes``, in passes of at most ``chunk``."""

    def run() -> None:
        with torch.inference_mode():
            for size in sizes:
                for piece in inputs[size].split(chunk or size):
                    model(piece).argmax(1)

    return _timed(run)


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
    everything = SequentialSettings(tolerance=0.0)  # ACR mode that never stops early: all n samples, every look
    whole_s, forward_s, certify_s, seq_s = [], [], [], []
    for i in range(1, images + 1):
        whole_s.append(_forward_only(model, inputs, sizes))
        forward_s.append(_forward_only(model, inputs, sizes, CPU_FORWARD_CHUNK))
        certify_s.append(_timed(lambda: certify(model, xs[i], 0.25, n0=n0, n=n, batch_size=batch, seed=i)))
        seq_s.append(
            _timed(
                lambda: _all_samples(
                    certify_sequential(model, xs[i], 0.25, None, n0, n, 0.001, batch, i, everything), n
                )
            )
        )
    cpu = {
        name: sum(c for _, c in values)
        for name, values in (("whole", whole_s), ("forward", forward_s), ("certify", certify_s), ("sequential", seq_s))
    }
    whole_s, forward_s, certify_s, seq_s = ([w for w, _ in v] for v in (whole_s, forward_s, certify_s, seq_s))
    samples = n0 + n
    return {
        "certify_cpu_over_forward_cpu": cpu["certify"] / cpu["forward"],
        "sequential_cpu_over_forward_cpu": cpu["sequential"] / cpu["forward"],
        "sequential_over_forward": sum(seq_s) / sum(forward_s),
        "sequential_seconds": seq_s,
        "cpu_seconds_totals": cpu,
        "model": name,
        "images": images,
        "n0": n0,
        "n": n,
        "batch_size": batch,
        "channels_last": channels_last,
        "forward_chunk": CPU_FORWARD_CHUNK,
        "forward_whole_batch_seconds_per_image": statistics.median(whole_s),
        "forward_seconds_per_image": statistics.median(forward_s),
        "certify_seconds_per_image": statistics.median(certify_s),
        "forward_samples_per_second": samples * images / sum(forward_s),
        "certify_samples_per_second": samples * images / sum(certify_s),
        "overhead": sum(certify_s) / sum(forward_s) - 1,
        "speedup_vs_whole_batch_forward": sum(whole_s) / sum(certify_s),
        "forward_whole_batch_seconds": whole_s,
        "forward_seconds": forward_s,
        "certify_seconds": certify_s,
    }


def _all_samples(cert, n: int) -> None:
    assert cert.n_used == n, (cert.n_used, n)  # the sequential row must have drawn every sample


def _markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        "# CERTIFY speed vs the model's own forward passes",
        "",
        f"n0 = {rows[0]['n0']}, n = {rows[0]['n']}, sigma = 0.25, 1x28x28 inputs, {meta['threads']} torch thread(s), "
        f"{meta['device']}; {rows[0]['images']} images, measured interleaved in one run ({meta['date']}; "
        f"{meta['cpu_count']} cores shared with other jobs, load average {meta['load_average_at_end'][1]} over the last "
        f"5 minutes, so wall-clock speeds vary). CERTIFY classifies each noise batch in passes of at most "
        f"{rows[0]['forward_chunk']} samples on a CPU; the forward reference runs the same passes on inputs made "
        "beforehand. certify / forward = CERTIFY's time over the forward passes' (target <= 1.05), by wall clock and by "
        "process CPU time (with one torch thread, CPU time is what the work costs whatever else runs on the machine); "
        "sequential = `certify_sequential` drawing all n samples (ACR mode, tolerance 0) over the same forward time; "
        "speed-up = forward time in whole batches / certify time (wall).",
        "",
        "| model | batch | channels_last | forward s/image | certify s/image | certify / forward (wall) "
        "| certify / forward (CPU) | sequential / forward (wall) | sequential / forward (CPU) | certify samples/s "
        "| speed-up vs whole batches |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['batch_size']} | {r['channels_last']} | "
            f"{r['forward_seconds_per_image']:.2f} | {r['certify_seconds_per_image']:.2f} | "
            f"{1 + r['overhead']:.3f} | {r['certify_cpu_over_forward_cpu']:.3f} | "
            f"{r['sequential_over_forward']:.3f} | {r['sequential_cpu_over_forward_cpu']:.3f} | "
            f"{r['certify_samples_per_second']:.0f} | {r['speedup_vs_whole_batch_forward']:.2f}x |"
        )
    lines += ["", f"Regenerate: `{meta['command']}` (wall-clock numbers vary with machine load)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument(
        "--channels-last",
        nargs="*",
        default=[],
        metavar="MODEL",
        help="models to measure a second time in torch.channels_last",
    )
    parser.add_argument("--name", default="certify", help="results file stem")
    parser.add_argument(
        "--channels-last-only",
        action="store_true",
        help="measure the --channels-last models in channels_last only (the CLI's default)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for name in args.models:
        formats = [True] if args.channels_last_only else [False, True]
        for cl in formats if name in args.channels_last else [False]:
            row = bench_model(name, args.images, args.n0, args.n, args.batch, cl)
            print(
                f"{name} channels_last={cl}: forward {row['forward_seconds_per_image']:.2f} s/image, certify "
                f"{row['certify_seconds_per_image']:.2f} s/image, overhead {100 * row['overhead']:+.1f}%",
                flush=True,
            )
            rows.append(row)
    meta = {
        "command": "python benchmarks/bench_certify.py " + " ".join(sys.argv[1:]),
        "threads": torch.get_num_threads(),
        "device": "CPU",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
        "cpu_count": os.cpu_count(),
        "software": software_versions(),
    }
    write_results(args.name, {"results": rows, **meta}, _markdown(rows, meta))
    print(_markdown(rows, meta))


if __name__ == "__main__":
    main()
