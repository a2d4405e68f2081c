"""Deploy benchmark: the exported QDQ ONNX file against the fake-quantized PyTorch model it came from.

Two parts (``--part``):

- ``fidelity``: for each model and policy (uniform W8A8, W4A4, and a mixed policy with 2- and 3-bit layers;
  quantized with noisy calibration on 512 training images, no fine-tuning), the share of noisy test samples on which
  the exported file (run by onnxruntime; with integer kernels, and with ``--no-integer-kernels``) predicts what the
  PyTorch model predicts, and CERTIFY of both on the same test images with the same noise (ACR, clean accuracy).
- ``speed``: latency at batch 1 and throughput at batch 256 of the PyTorch FP32 model (the reference, measured in the
  same run), onnxruntime FP32, W8A8 and the exported 4-bit and mixed policies (integer kernels: ConvInteger /
  MatMulInteger), each also exported as QDQ on floats (``--no-integer-kernels``) run with onnxruntime's QDQ handling
  off (``session.disable_quant_qdq``: weights dequantized once at load, float kernels); file sizes; which layers
  onnxruntime runs as integer kernels (counted in the graph it optimizes).

Results: ``benchmarks/results/<name>.json`` and ``.md``; work files (resumable) under ``--work``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from certquant.data import every_kth, load_dataset  # noqa: E402
from certquant.deploy import export_checkpoint, integer_kernels, load_onnx, prediction_agreement  # noqa: E402
from certquant.deploy.runtime import make_session  # noqa: E402
from certquant.models import load_checkpoint, resolve_checkpoint  # noqa: E402
from certquant.quant import Policy, quantizable_layers, quantize_checkpoint  # noqa: E402
from certquant.quant.checkpoint import input_shape  # noqa: E402
from certquant.quant.config import QuantizeConfig  # noqa: E402
from certquant.smoothing import certify_dataset  # noqa: E402
from certquant.utils.io import atomic_write_json  # noqa: E402
from common import ROOT, device_name, write_results  # noqa: E402

MODELS = {"small-cnn": "small-cnn-fmnist-s0.25", "resnet20": "resnet20-fmnist-s0.25"}
POLICIES = ("W8A8", "W4A4", "mixed")
MIXED_MIDDLE = ((3, 3), (2, 4), (4, 3), (3, 2), (2, 3), (4, 4))  # cycled over the middle layers


def make_policy(kind: str, layers) -> Policy:
    """Uniform W8A8 / W4A4, or mixed: first and last layer W8A8 (HAQ's convention), the middle cycling through 2-,
    3- and 4-bit weights and activations."""
    if kind in ("W8A8", "W4A4"):
        return Policy.uniform(layers, int(kind[1]), int(kind[3]))
    bits = [(8, 8)] + [MIXED_MIDDLE[i % len(MIXED_MIDDLE)] for i in range(len(layers) - 2)] + [(8, 8)]
    return Policy.from_lists(layers, [w for w, _ in bits], [a for _, a in bits])


def prepare(model_name: str, kind: str, work: Path) -> tuple[Path, dict]:
    """The quantized checkpoint (or the base for FP32) and its ONNX exports, made once."""
    base = resolve_checkpoint(MODELS[model_name])
    folder = work / f"{model_name}-{kind}"
    folder.mkdir(parents=True, exist_ok=True)
    q_path = folder / "model.pt"
    if kind == "FP32":
        q_path = Path(base)
    elif not q_path.exists():
        model, info = load_checkpoint(base)
        policy = make_policy(kind, quantizable_layers(model, input_shape(info)))
        quantize_checkpoint(base, policy, q_path, QuantizeConfig(calibration_images=512, seed=0))
    files = {"int": folder / "model.onnx", "float": folder / "model-float.onnx"}
    if not files["int"].exists():
        export_checkpoint(q_path, files["int"], 21, integer_kernels=True)
    if not files["float"].exists() and kind != "FP32":
        export_checkpoint(q_path, files["float"], 21, integer_kernels=False)
    return q_path, files


def fidelity(args: argparse.Namespace) -> list[dict]:
    rows = []
    for model_name in args.models:
        for kind in args.policies:
            q_path, files = prepare(model_name, kind, args.work)
            folder = files["int"].parent
            qmodel, info = load_checkpoint(q_path)
            images, labels = load_dataset(info["dataset"], "test")
            sigma = float(info["sigma"])
            agree_idx = every_kth(len(images), len(images) // args.agreement_images, args.agreement_images)
            row = {
                "model": model_name,
                "policy": kind,
                "sigma": sigma,
                "bitops_fraction": load_checkpoint(q_path)[1]["cost"]["bitops_fraction"],
            }
            for variant, path in files.items():
                path_json = folder / f"agreement-{variant}.json"
                if not path_json.exists():
                    onnx_model, _ = load_onnx(path)
                    atomic_write_json(
                        path_json,
                        prediction_agreement(
                            qmodel,
                            onnx_model,
                            images,
                            agree_idx,
                            sigma,
                            args.agreement_samples,
                            seed=0,
                            batch_size=1000,
                        ),
                    )
                agreement = json.loads(path_json.read_text())
                row[f"agreement_{variant}"] = agreement["share"]
                row[f"agreement_{variant}_ci95"] = agreement["ci95"]
                row["agreement_samples"] = agreement["total"]
            certify_images = args.certify_images.get(model_name, 100)
            n = args.certify_n.get(model_name, args.n)
            if certify_images > 0:
                # the first K of every 100th test image, so a larger K later resumes the same runs
                indices = every_kth(len(images), args.certify_skip, certify_images)
                shape = input_shape(info)
                for label, model in (("torch", qmodel), ("onnx", load_onnx(files["int"])[0])):
                    summary = certify_dataset(
                        model,
                        images,
                        labels,
                        indices,
                        folder / f"certify-{label}",
                        sigma,
                        args.n0,
                        n,
                        args.alpha,
                        1000,
                        0,
                        identity={"model": label},
                        input_shape=shape,
                        progress=False,
                        channels_last=False,
                        resume=True,
                    )
                    row[f"acr_{label}"] = summary["acr"]
                    row[f"clean_{label}"] = summary["clean_accuracy"]
                    row[f"seconds_{label}"] = summary["total_seconds"]
                row["certify_images"], row["n"] = certify_images, n
                row["acr_diff"] = row["acr_onnx"] - row["acr_torch"]
                # by index, the K certified images only (a resumed run folder may hold a record twice)
                wanted = set(indices)
                by_index = {
                    label: {
                        r["index"]: r
                        for r in map(json.loads, (folder / f"certify-{label}" / "certificates.jsonl").open())
                        if r["index"] in wanted
                    }
                    for label in ("torch", "onnx")
                }
                same = 0
                for index, r in by_index["torch"].items():
                    o = by_index["onnx"].get(index)
                    same += int(
                        o is not None and o["predicted"] == r["predicted"] and abs(o["radius"] - r["radius"]) < 1e-9
                    )
                row["identical_certificates"] = same
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def timed(fn, repeats: int, warmup: int) -> tuple[list[float], list[float]]:
    """(CPU seconds of the calling thread, wall seconds) per run. With one intra-op thread both PyTorch and
    onnxruntime compute on the calling thread (checked: thread time = process time), so the CPU time is the compute
    cost even when other jobs share the cores; the wall time also counts the waits for a core."""
    for _ in range(warmup):
        fn()
    cpu, wall = [], []
    for _ in range(repeats):
        started, started_cpu = time.perf_counter(), time.thread_time()
        fn()
        cpu.append(time.thread_time() - started_cpu)
        wall.append(time.perf_counter() - started)
    return cpu, wall


def speed(args: argparse.Namespace) -> list[dict]:
    rows = []
    for model_name in args.models:
        base, info = load_checkpoint(MODELS[model_name])
        shape = input_shape(info)
        x1, x256 = torch.rand(1, *shape), torch.rand(256, *shape)
        entries = [("PyTorch FP32", "torch", base, None, False)]
        for kind in ("FP32",) + tuple(args.policies):
            q_path, files = prepare(model_name, kind, args.work)
            entries.append((f"onnxruntime {kind}", "onnx", None, files["int"], False))
            if kind == "W8A8":
                entries.append(("onnxruntime W8A8, no integer kernels", "onnx", None, files["float"], False))
            if kind != "FP32":  # the QDQ-on-floats export with its DequantizeLinear folded into float weights
                entries.append(
                    (f"onnxruntime {kind}, QDQ folded (disable_quant_qdq)", "onnx", None, files["float"], True)
                )
        fp32_size = None
        for label, engine, model, path, fold in entries:
            if engine == "torch":
                model.eval()

                def run1(m=model, x=x1):
                    with torch.inference_mode():
                        m(x)

                def run256(m=model, x=x256):
                    with torch.inference_mode():
                        m(x)

                size = kernels = None
            else:
                session = make_session(path, threads=args.threads, fold_qdq=fold)
                name = session.get_inputs()[0].name
                a1, a256 = x1.numpy(), x256.numpy()
                run1 = lambda s=session, n=name, a=a1: s.run(None, {n: a})  # noqa: E731
                run256 = lambda s=session, n=name, a=a256: s.run(None, {n: a})  # noqa: E731
                size = path.stat().st_size
                kernels = integer_kernels(path, fold_qdq=fold)
                if label == "onnxruntime FP32":
                    fp32_size = size
            lat, lat_wall = timed(run1, args.latency_repeats, 20)
            thr, thr_wall = timed(run256, args.throughput_repeats, 3)
            row = {
                "model": model_name,
                "engine": label,
                "latency_ms": 1000 * statistics.median(lat),
                "latency_ms_wall": 1000 * statistics.median(lat_wall),
                "throughput_img_s": 256 / statistics.median(thr),
                "throughput_img_s_wall": 256 / statistics.median(thr_wall),
                "file_bytes": size,
                "integer_kernels": kernels["integer"] if kernels else None,
                "float_compute": kernels["float"] if kernels else None,
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
        reference = next(r for r in rows if r["model"] == model_name and r["engine"] == "PyTorch FP32")
        ort_fp32 = next(r for r in rows if r["model"] == model_name and r["engine"] == "onnxruntime FP32")
        for r in rows:
            if r["model"] == model_name:
                r["latency_speedup_vs_torch"] = reference["latency_ms"] / r["latency_ms"]
                r["throughput_speedup_vs_torch"] = r["throughput_img_s"] / reference["throughput_img_s"]
                r["latency_speedup_vs_ort_fp32"] = ort_fp32["latency_ms"] / r["latency_ms"]
                r["throughput_speedup_vs_ort_fp32"] = r["throughput_img_s"] / ort_fp32["throughput_img_s"]
                r["size_vs_fp32"] = r["file_bytes"] / fp32_size if r["file_bytes"] and fp32_size else None
    return rows


def fidelity_markdown(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [
        "# Exported ONNX vs fake-quantized PyTorch",
        "",
        f"Command: `python benchmarks/bench_deploy.py {' '.join(sys.argv[1:])}`. Quantized with noisy calibration "
        f"(512 training images), no fine-tuning; agreement on {args.agreement_samples} noisy test samples "
        f"({args.agreement_images} test images, the first samples of each image's certification noise); CERTIFY "
        f"n0 = {args.n0}, n as in the table, alpha = {args.alpha} on the first K of every {args.certify_skip}th "
        "test image, the same noise for both models.",
        "",
        "| model | policy | BitOPs % | agreement (integer kernels) | agreement (float on levels) | images K | n "
        "| ACR PyTorch | ACR ONNX | ACR diff | clean acc PyTorch / ONNX | identical certificates |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cert = (
            f"{r['certify_images']} | {r['n']} | {r['acr_torch']:.4f} | {r['acr_onnx']:.4f} | {r['acr_diff']:+.4f} | "
            f"{r['clean_torch']:.3f} / {r['clean_onnx']:.3f} | {r['identical_certificates']}/{r['certify_images']}"
            if "acr_torch" in r
            else "- | - | - | - | - | - | -"
        )
        lines.append(
            f"| {r['model']} | {r['policy']} | {100 * r['bitops_fraction']:.3f} | {100 * r['agreement_int']:.2f}% "
            f"| {100 * r['agreement_float']:.2f}% | {cert} |"
        )
    return "\n".join(lines) + "\n"


def speed_markdown(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [
        "# Deploy speed and size",
        "",
        f"Command: `python benchmarks/bench_deploy.py {' '.join(sys.argv[1:])}` on {args.device}; onnxruntime "
        f"with {args.threads} intra-op thread(s), PyTorch with {args.threads}; latency = median CPU time of "
        f"{args.latency_repeats} batch-1 runs, throughput = 256 / median CPU time of {args.throughput_repeats} "
        "batch-256 runs (CPU time of the calling thread, which does all the work with one thread: robust to other "
        "jobs on the machine; wall-clock medians in the JSON); the PyTorch FP32 reference is measured in the "
        "same run.",
        "",
        "| model | engine | latency ms (b=1) | x vs PyTorch | x vs ORT FP32 | images/s (b=256) | x vs PyTorch "
        "| x vs ORT FP32 | file KiB | size vs FP32 | integer kernels | float conv/gemm |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        size = f"{r['file_bytes'] / 1024:.1f}" if r["file_bytes"] else "-"
        ratio = f"{r['size_vs_fp32']:.3f}" if r["size_vs_fp32"] else "-"
        ints = ", ".join(f"{k} {v}" for k, v in (r["integer_kernels"] or {}).items()) or "-"
        floats = ", ".join(f"{k} {v}" for k, v in (r["float_compute"] or {}).items()) or "-"
        lines.append(
            f"| {r['model']} | {r['engine']} | {r['latency_ms']:.3f} | {r['latency_speedup_vs_torch']:.2f} | "
            f"{r['latency_speedup_vs_ort_fp32']:.2f} | {r['throughput_img_s']:.0f} | "
            f"{r['throughput_speedup_vs_torch']:.2f} | {r['throughput_speedup_vs_ort_fp32']:.2f} | {size} | "
            f"{ratio} | {ints} | {floats} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("fidelity", "speed"), required=True)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES))
    parser.add_argument("--agreement-samples", type=int, default=10_000)
    parser.add_argument("--agreement-images", type=int, default=100)
    parser.add_argument(
        "--certify-images",
        nargs="+",
        default=["small-cnn=100", "resnet20=20"],
        help="MODEL=K: certify the first K of every --certify-skip-th test image; 0 skips",
    )
    parser.add_argument("--certify-skip", type=int, default=100)
    parser.add_argument("--certify-n", nargs="+", default=[], help="MODEL=N: another n for that model")
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--latency-repeats", type=int, default=300)
    parser.add_argument("--throughput-repeats", type=int, default=20)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_deploy")
    parser.add_argument("--name", default=None)
    args = parser.parse_args()
    args.certify_images = {k: int(v) for k, v in (item.split("=") for item in args.certify_images)}
    args.certify_n = {k: int(v) for k, v in (item.split("=") for item in args.certify_n)}
    torch.set_num_threads(args.threads)
    args.device = device_name(torch.device("cpu"))
    if args.part == "fidelity":
        rows = fidelity(args)
        write_results(
            args.name or "deploy-fidelity",
            {"rows": rows, "args": {k: str(v) for k, v in vars(args).items()}},
            fidelity_markdown(rows, args),
        )
    else:
        rows = speed(args)
        write_results(
            args.name or "deploy-speed",
            {"rows": rows, "args": {k: str(v) for k, v in vars(args).items()}},
            speed_markdown(rows, args),
        )


if __name__ == "__main__":
    main()
