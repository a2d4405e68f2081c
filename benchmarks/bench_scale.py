"""Certification throughput on Ray workers against the single-process engine, and the search grid's wall time.

Certification: for each zoo model, CERTIFY of the same Fashion-MNIST test images (every SKIP-th) by the local engine
(this process, ``--threads`` torch threads), then by the Ray engine with K = ``--workers`` workers of ``--threads``
threads each, every run in a fresh folder. Per run: wall seconds, certified images per second end to end and after
the workers' start (wall minus the time until every worker held its model: the start is paid once per run, the rest
grows with the images), and whether the certificates equal the local engine's. Ratios: Ray with one worker against
local (the engine's overhead; issue 17: <= 1.10x), K workers' throughput against one worker's (>= 1.7x at 2 workers on
2 free cores).

Per-image CPU time (the headline of the one-worker comparison, robust on a shared machine where wall time measures the
CPU share a process got): the same library worker (``CertifyImage``) over ``--cpu-images`` images through the local
engine and through one Ray worker, alternately (local, Ray, local, Ray: ``--cpu-rounds`` rounds), both at ``--threads``
torch threads; per image the CPU seconds (``time.process_time``) of the process doing the work (this process, or the
Ray worker), its wall seconds and page faults; medians over images and rounds, leaving out each round's first image
(a warm-up: a fresh worker's first forward passes build their kernels).

Grid: the search benchmark's grid (``configs/bench-search.yaml``: its budgets x methods, each a search, a fine-tune and
a certification, plus FP32's certification) shrunk to seconds per stage, run one stage after another (local) and as
Ray tasks; wall seconds of each and whether their results agree.

The figures need the cores to themselves: the load average (``os.getloadavg``) before and after every measurement is
in the JSON. Writes benchmarks/results/<name>.json and .md.

    python benchmarks/bench_scale.py [--models small-cnn-fmnist-s0.25 resnet20-fmnist-s0.25] [--workers 1 2]
        [--images 12] [--n 2000] [--threads 1] [--device cpu|cuda] [--gpus-per-worker G] [--cpus C] [--no-grid]
        [--cpu-images 6] [--cpu-rounds 2] [--name scale]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import ray
import torch

from certquant.data import every_kth, load_dataset
from certquant.engine import EngineConfig, make_engine
from certquant.engine.base import setup_worker
from certquant.models import load_checkpoint
from certquant.pipeline import load_config
from certquant.pipeline.run import run_pipeline
from certquant.quant.checkpoint import input_shape
from certquant.smoothing import certify_dataset
from certquant.smoothing.runner import CertifyImage, ImageItems
from certquant.train import resolve_device
from certquant.utils import read_jsonl, software_versions
from certquant.utils.tables import markdown_table
from common import ROOT, device_name, write_results

# per model: estimation samples n (so one image takes about a second on one CPU thread) and images certified
SIZES = {"small-cnn-fmnist-s0.25": (2000, 24), "resnet20-fmnist-s0.25": (500, 16)}


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def certificates(out: Path) -> list[dict]:
    """Per image (by index), everything but the wall-clock field."""
    return sorted(
        ({k: v for k, v in r.items() if k != "seconds"} for r in read_jsonl(out / "certificates.jsonl")),
        key=lambda r: r["index"],
    )


def certify_run(
    model: torch.nn.Module,
    info: dict,
    images: torch.Tensor,
    labels: torch.Tensor,
    indices: list[int],
    n: int,
    out: Path,
    engine_config: EngineConfig,
) -> dict[str, Any]:
    """One certification run in a fresh folder; wall seconds, the workers' start, images per second."""
    shutil.rmtree(out, ignore_errors=True)
    before = load()
    with make_engine(engine_config) as engine:
        started = time.perf_counter()
        certify_dataset(
            model,
            images,
            labels,
            indices,
            out,
            float(info["sigma"]),
            100,
            n,
            0.001,
            1000,
            0,
            input_shape=input_shape(info),
            progress=False,
            channels_last=model_device(model) == "cpu",
            engine=engine,
        )
        wall = time.perf_counter() - started
        startup = getattr(engine, "startup_seconds", 0.0)
    return {
        "engine": engine_config.engine,
        "workers": engine_config.workers or 1,
        "threads": engine_config.threads,
        "gpus_per_worker": engine_config.gpus_per_worker,
        "images": len(indices),
        "wall_seconds": wall,
        "startup_seconds": startup,
        "images_per_second": len(indices) / wall,
        "images_per_second_after_start": len(indices) / max(1e-9, wall - startup),
        "load_before": before,
        "load_after": load(),
    }


def model_device(model: torch.nn.Module) -> str:
    return next(model.parameters()).device.type


class CpuTimed:
    """Worker side of the per-image CPU measurement: ``fn`` on one item -> CPU seconds of this process (all its
    threads), wall seconds and minor page faults of the call (pickled by value: this is ``__main__``)."""

    def __init__(self, fn: Any):
        self.fn = fn

    def setup(self) -> None:
        setup_worker(self.fn)

    def __call__(self, item: Any) -> dict[str, float]:
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        cpu, wall = time.process_time(), time.perf_counter()
        self.fn(item)
        return {
            "cpu_seconds": time.process_time() - cpu,
            "wall_seconds": time.perf_counter() - wall,
            "page_faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults,
        }


def cpu_per_image(
    model: torch.nn.Module,
    info: dict,
    images: torch.Tensor,
    labels: torch.Tensor,
    indices: list[int],
    n: int,
    threads: int,
    gpus_per_worker: float,
    rounds: int,
) -> dict[str, Any]:
    """Per-image CPU and wall seconds of the same CERTIFY worker in this process (local engine) and in one Ray worker,
    alternately for ``rounds`` rounds; medians over images and rounds (each round certifies one more image first, as a
    warm-up left out), and Ray's ratios to local."""
    worker = CpuTimed(
        CertifyImage(
            model,
            float(info["sigma"]),
            100,
            n,
            0.001,
            1000,
            0,
            input_shape=input_shape(info),
            channels_last=model_device(model) == "cpu",
        )
    )
    items = ImageItems(images, labels, indices)
    engines = {
        "local": EngineConfig(threads_per_worker=threads),
        "ray": EngineConfig(engine="ray", workers=1, threads_per_worker=threads, gpus_per_worker=gpus_per_worker),
    }
    samples: dict[str, list[dict[str, float]]] = {label: [] for label in engines}
    loads = []
    for _ in range(rounds):
        for label, config in engines.items():
            loads.append(load()[0])
            with make_engine(config) as engine:
                samples[label].extend(value for position, value in engine.map_unordered(worker, items) if position > 0)
    out: dict[str, Any] = {"images": len(indices) - 1, "rounds": rounds, "threads": threads, "load_before": loads}
    for label, values in samples.items():
        out[label] = {
            key: statistics.median(v[key] for v in values) for key in ("cpu_seconds", "wall_seconds", "page_faults")
        }
        out[label]["samples"] = values
    out["cpu_vs_local"] = out["ray"]["cpu_seconds"] / out["local"]["cpu_seconds"]
    out["wall_vs_local"] = out["ray"]["wall_seconds"] / out["local"]["wall_seconds"]
    return out


def bench_certify(
    name: str,
    workers: list[int],
    threads: int,
    device: torch.device,
    gpus_per_worker: float,
    images_count: int | None,
    n: int | None,
    work: Path,
    cpu_images: int,
    cpu_rounds: int,
) -> dict[str, Any]:
    model, info = load_checkpoint(name, map_location=device)
    default_n, default_images = SIZES.get(name, (1000, 8))
    n, count = n or default_n, images_count or default_images
    images, labels = load_dataset(info["dataset"], "test")
    indices = every_kth(len(images), 100, count)
    local = certify_run(
        model, info, images, labels, indices, n, work / name / "local", EngineConfig(threads_per_worker=threads)
    )
    reference = certificates(work / name / "local")
    runs = [local]
    for k in workers:
        config = EngineConfig(engine="ray", workers=k, threads_per_worker=threads, gpus_per_worker=gpus_per_worker)
        run = certify_run(model, info, images, labels, indices, n, work / name / f"ray-{k}", config)
        run["identical"] = certificates(work / name / f"ray-{k}") == reference
        runs.append(run)
    one = next((r for r in runs[1:] if r["workers"] == 1), None)
    for run in runs[1:]:
        run["time_vs_local"] = run["wall_seconds"] / local["wall_seconds"]
        run["time_vs_local_after_start"] = (run["wall_seconds"] - run["startup_seconds"]) / local["wall_seconds"]
        if one is not None:
            run["throughput_vs_1_worker"] = run["images_per_second"] / one["images_per_second"]
            run["throughput_vs_1_worker_after_start"] = (
                run["images_per_second_after_start"] / one["images_per_second_after_start"]
            )
    cpu = (
        cpu_per_image(model, info, images, labels, indices[: cpu_images + 1], n, threads, gpus_per_worker, cpu_rounds)
        if cpu_rounds > 0 and cpu_images > 0
        else None
    )
    return {
        "model": name,
        "arch": info["arch"],
        "n0": 100,
        "n": n,
        "indices": indices,
        "device": device.type,
        "runs": runs,
        "cpu_per_image": cpu,
    }


def item_overhead(items: int = 400) -> dict[str, Any]:
    """The Ray engine's own cost per item: ``items`` no-op items (``abs`` of an int) through one worker, after its
    start, in milliseconds per item (what each certified image pays on top of its CERTIFY)."""
    engine = make_engine(EngineConfig(engine="ray", workers=1))
    started = time.perf_counter()
    for _ in engine.map_unordered(abs, list(range(items))):
        pass
    wall = time.perf_counter() - started - engine.startup_seconds
    return {"items": items, "ms_per_item": 1000 * wall / items, "load_before": load()}


def bench_grid(
    config: str, workers: int, threads: int, device: torch.device, gpus_per_worker: float, work: Path
) -> dict[str, Any]:
    """The search benchmark's grid shrunk to seconds per stage: local (one after another) against Ray tasks."""
    cfg = load_config(
        config,
        [
            f"device={device.type}",
            "certify.n=500",
            "certify.max_images=4",
            "certify.skip=500",
            "certify.batch=500",
            "search.episodes=3",
            "search.agent.warmup_episodes=2",
            "search.search_images=4",
            "search.n_p=100",
            "finetune.epochs=1",
            "finetune.images=256",
            "quantize.calibration_images=64",
        ],
    )
    out: dict[str, Any] = {
        "config": config,
        "budgets": cfg.search.budgets,
        "methods": cfg.search.methods,
        "stages": 1 + 3 * len(cfg.search.budgets) * len(cfg.search.methods),
    }
    results = {}
    for label, engine in (
        ("local", EngineConfig(threads_per_worker=threads)),
        (
            "ray",
            EngineConfig(engine="ray", workers=workers, threads_per_worker=threads, gpus_per_worker=gpus_per_worker),
        ),
    ):
        folder = work / "grid" / label
        shutil.rmtree(folder, ignore_errors=True)
        before = load()
        started = time.perf_counter()
        results[label] = run_pipeline(dataclasses.replace(cfg, engine=engine), folder, progress=False)
        out[label] = {
            "wall_seconds": time.perf_counter() - started,
            "workers": engine.workers or 1,
            "load_before": before,
            "load_after": load(),
        }
    out["speedup"] = out["local"]["wall_seconds"] / out["ray"]["wall_seconds"]
    keys = ("name", "acr", "clean_accuracy", "bitops_fraction")
    out["identical"] = [{k: r[k] for k in keys} for r in results["local"]["rows"]] == [
        {k: r[k] for k in keys} for r in results["ray"]["rows"]
    ]
    return out


def markdown(data: dict) -> str:
    rows = []
    for model in data["certify"]:
        for r in model["runs"]:
            rows.append(
                [
                    model["model"],
                    r["engine"],
                    str(r["workers"]),
                    f"{r['wall_seconds']:.1f}",
                    f"{r['startup_seconds']:.1f}",
                    f"{r['images_per_second']:.3f}",
                    f"{r['images_per_second_after_start']:.3f}",
                    _ratio(r, "time_vs_local"),
                    _ratio(r, "time_vs_local_after_start"),
                    _ratio(r, "throughput_vs_1_worker"),
                    _ratio(r, "throughput_vs_1_worker_after_start"),
                    _same(r),
                    f"{r['load_before'][0]:.1f}",
                ]
            )
    table = markdown_table(
        [
            "model",
            "engine",
            "workers",
            "wall s",
            "start s",
            "img/s",
            "img/s after start",
            "time / local",
            "time / local after start",
            "throughput / 1 worker",
            "throughput / 1 worker after start",
            "identical",
            "load avg",
        ],
        rows,
    )
    head = (
        f"Device: {data['device']}; {data['cpu_count']} cores; {data['threads']} torch thread(s) per worker and in "
        f"the local engine; load average at start {data['load_average_start']} (the figures need the cores "
        f"free). Command: `{data['command']}`."
    )
    overhead = data["overhead"]
    head += (
        f" The Ray engine's own cost per item (no-op items through one worker, after its start): "
        f"{overhead['ms_per_item']:.2f} ms."
    )
    cpu_rows = [
        [
            model["model"],
            f"{c['images']} x {c['rounds']}",
            f"{c['local']['cpu_seconds']:.3f}",
            f"{c['ray']['cpu_seconds']:.3f}",
            f"{c['cpu_vs_local']:.2f}x",
            f"{c['local']['wall_seconds']:.3f}",
            f"{c['ray']['wall_seconds']:.3f}",
            f"{c['wall_vs_local']:.2f}x",
            f"{c['local']['page_faults']:.0f} / {c['ray']['page_faults']:.0f}",
            f"{min(c['load_before']):.1f}-{max(c['load_before']):.1f}",
        ]
        for model in data["certify"]
        if (c := model.get("cpu_per_image"))
    ]
    if cpu_rows:
        head += (
            "\n\n## One Ray worker against the local engine, per image\n\nThe same CERTIFY worker through the local "
            "engine (this process) and through one Ray worker, alternately, both at "
            f"{data['threads']} torch thread(s); per image the CPU seconds of the process doing the work (robust on a "
            "shared machine: wall seconds also count waiting for a core), its wall seconds and its page faults; "
            "medians over images x rounds, after a first, warm-up image per round. Issue 17's aim: one worker at most 1.10x the local engine.\n\n"
            + markdown_table(
                [
                    "model",
                    "images x rounds",
                    "local CPU s / image",
                    "Ray CPU s / image",
                    "Ray / local CPU",
                    "local wall s / image",
                    "Ray wall s / image",
                    "Ray / local wall",
                    "page faults / image (local / Ray)",
                    "load avg",
                ],
                cpu_rows,
            )
            + "\n\n## End to end\n\nWhole runs in fresh folders (the driver writing certificates as they finish)."
        )
    grid = ""
    if data.get("grid"):
        g = data["grid"]
        grid = (
            f"\n\n## Search grid\n\n{len(g['budgets'])} budgets x {len(g['methods'])} methods ({g['stages']} stages, "
            f"shrunk): local {g['local']['wall_seconds']:.1f} s, Ray ({g['ray']['workers']} workers) "
            f"{g['ray']['wall_seconds']:.1f} s, speed-up {g['speedup']:.2f}x; same results: {g['identical']}; "
            f"load average before: {g['local']['load_before'][0]} / {g['ray']['load_before'][0]}."
        )
    return f"# Scaling certification on Ray\n\n{head}\n\n{table}{grid}\n"


def _ratio(run: dict, key: str) -> str:
    return f"{run[key]:.2f}x" if key in run else "-"


def _same(run: dict) -> str:
    return "-" if "identical" not in run else ("yes" if run["identical"] else "NO")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(SIZES))
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2], help="Ray worker counts to measure")
    parser.add_argument("--images", type=int, default=None, help="images per run (default: per model, see SIZES)")
    parser.add_argument("--n", type=int, default=None, help="estimation samples (default: per model, see SIZES)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker and in the local engine")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda needs --gpus-per-worker > 0)")
    parser.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPU share of each Ray worker")
    parser.add_argument("--cpus", type=int, default=None, help="CPUs of the local Ray cluster (default: all cores)")
    parser.add_argument("--no-grid", action="store_true", help="skip the search grid")
    parser.add_argument(
        "--cpu-images", type=int, default=6, help="images of the per-image CPU-time comparison (plus one warm-up)"
    )
    parser.add_argument("--cpu-rounds", type=int, default=2, help="local/Ray rounds of it (0: skip it)")
    parser.add_argument("--grid-config", default=str(ROOT / "configs" / "bench-search.yaml"))
    parser.add_argument("--work", default=str(ROOT / "runs" / "bench_scale"))
    parser.add_argument("--name", default="scale", help="results file stem under benchmarks/results")
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    data: dict[str, Any] = {
        "device": device_name(device),
        "cpu_count": os.cpu_count(),
        "threads": args.threads,
        "load_average_start": load(),
        "command": " ".join(["python", *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "software": software_versions(),
    }
    work = Path(args.work)
    os.environ.setdefault("RAY_worker_niceness", "0")  # as the engine's own clusters: workers at the driver's priority
    ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level=logging.WARNING)
    data["ray_cluster"] = {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}
    data["ray_worker_niceness"] = os.environ["RAY_worker_niceness"]
    data["driver_niceness"] = os.nice(0)
    try:
        data["overhead"] = item_overhead()
        data["certify"] = [
            bench_certify(
                name,
                args.workers,
                args.threads,
                device,
                args.gpus_per_worker,
                args.images,
                args.n,
                work,
                args.cpu_images,
                args.cpu_rounds,
            )
            for name in args.models
        ]
        if not args.no_grid:
            data["grid"] = bench_grid(
                args.grid_config, max(args.workers), args.threads, device, args.gpus_per_worker, work
            )
    finally:
        ray.shutdown()
    data["load_average_end"] = load()
    write_results(args.name, data, markdown(data))
    print(markdown(data))


if __name__ == "__main__":
    main()
