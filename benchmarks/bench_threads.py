"""Where torch's thread count changes certquant's results, and what a fixed count costs.

Same inputs at 1 and 2 threads in one process, compared bitwise: forward passes of the shipped small CNN (FP32 and
W4A4, contiguous and channels_last, as certification and calibration run them), ``quantize`` (calibration and
clipping), DDPG updates of the search agent, and one epoch of noise-aware fine-tuning (torch's count against
``FINETUNE_THREADS``). Fine-tuning and agent updates are also timed at both counts, alternating, in the same run.

    python benchmarks/bench_threads.py        # writes benchmarks/results/threads.{json,md}
"""

from __future__ import annotations

import time

import numpy as np
import torch

from certquant.data import load_dataset
from certquant.models import load_checkpoint
from certquant.quant import Policy, noisy_calibration_batch, quantizable_layers, quantize
from certquant.quant.finetuning import finetune
from certquant.search.ddpg import DDPGAgent, DDPGConfig
from certquant.utils.tables import markdown_table
from certquant.utils.threads import machine_info, torch_threads
from common import write_results

CHECKPOINT = "small-cnn-fmnist-s0.25"


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def _quantized(train_x: torch.Tensor, bits: int) -> torch.nn.Module:
    model, _ = load_checkpoint(CHECKPOINT)
    layers = quantizable_layers(model, (1, 28, 28))
    return quantize(model, Policy.uniform(layers, bits, bits), noisy_calibration_batch(train_x, 0.25, 512, 0))


def forward_rows(test_x: torch.Tensor, train_x: torch.Tensor) -> list[list]:
    noisy = test_x[:8].repeat_interleave(200, 0) + 0.25 * torch.randn(
        1600, 1, 28, 28, generator=torch.Generator().manual_seed(0)
    )
    rows = []
    for name, model in (("FP32", load_checkpoint(CHECKPOINT)[0]), ("W4A4", _quantized(train_x, 4))):
        for channels_last in (False, True):
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            model = model.to(memory_format=fmt)
            out = {}
            for threads in (1, 2):
                with torch_threads(threads), torch.no_grad():
                    out[threads] = torch.cat(
                        [model(noisy[i : i + 200].contiguous(memory_format=fmt)) for i in range(0, 1600, 200)]
                    )
            flips = int((out[1].argmax(1) != out[2].argmax(1)).sum())
            rows.append(
                [
                    f"forward {name}{' channels_last' if channels_last else ''} (1,600 noisy images)",
                    float((out[1] - out[2]).abs().max()),
                    f"{flips} argmax flips",
                    "",
                    "",
                ]
            )
    return rows


def quantize_rows(train_x: torch.Tensor) -> list[list]:
    rows = []
    for bits in (4, 3, 2):
        states = {}
        for threads in (1, 2):
            with torch_threads(threads):
                states[threads] = {k: v.clone() for k, v in _quantized(train_x, bits).state_dict().items()}
        rows.append(
            [f"quantize W{bits}A{bits} (512 noisy calibration images)", _max_diff(states[1], states[2]), "", "", ""]
        )
    return rows


def _agent(threads: int | None) -> tuple[dict[str, torch.Tensor], float]:
    """160 DDPG updates on fixed transitions; ``threads`` None: the agent's own count (AGENT_THREADS)."""
    started = time.perf_counter()
    agent = DDPGAgent(10, 4, DDPGConfig(warmup_episodes=2, batch_size=64))
    rng = np.random.default_rng(0)
    with torch_threads(threads):
        for episode in range(40):
            states = rng.random((4, 10)).astype(np.float32)
            agent.observe(states, np.array([agent.act(s, episode) for s in states]), float(rng.random()))
            for _ in range(4):
                agent._update() if threads is not None else agent.update()
    return {k: v.clone() for k, v in agent.actor.state_dict().items()}, time.perf_counter() - started


def _finetuned(train_x: torch.Tensor, train_y: torch.Tensor, outer: int, threads: int | None):
    with torch_threads(outer):
        model = _quantized(train_x, 4)
        started = time.perf_counter()
        finetune(
            model,
            train_x[:2560],
            train_y[:2560],
            0.25,
            1,
            lr=0.01,
            batch_size=128,
            seed=0,
            device="cpu",
            progress=False,
            threads=threads,
        )
        return {k: v.clone() for k, v in model.state_dict().items()}, time.perf_counter() - started


def main() -> None:
    test_x, _ = load_dataset("fashion-mnist", "test")
    train_x, train_y = load_dataset("fashion-mnist", "train")
    rows = forward_rows(test_x, train_x) + quantize_rows(train_x)
    free = {t: _agent(t) for t in (1, 2)}
    rows.append(
        [
            "DDPG: 160 updates (state 10, hidden 300, batch 64)",
            _max_diff(free[1][0], free[2][0]),
            "",
            f"{free[1][1]:.2f}",
            f"{free[2][1]:.2f}",
        ]
    )
    loose = {t: _finetuned(train_x, train_y, t, None) for t in (1, 2)}
    rows.append(
        [
            "fine-tune W4A4, 20 batches of 128, at torch's count",
            _max_diff(loose[1][0], loose[2][0]),
            "",
            f"{loose[1][1]:.2f}",
            f"{loose[2][1]:.2f}",
        ]
    )
    fixed = {t: _finetuned(train_x, train_y, t, 1) for t in (1, 2)}
    rows.append(
        [
            "fine-tune W4A4, 20 batches, at FINETUNE_THREADS = 1 (outer count 1 / 2)",
            _max_diff(fixed[1][0], fixed[2][0]),
            "",
            f"{fixed[1][1]:.2f}",
            f"{fixed[2][1]:.2f}",
        ]
    )
    machine = machine_info()
    headers = ["computation", "max abs difference, 1 vs 2 threads", "note", "s at 1 thread", "s at 2 threads"]
    shown = [[r[0], f"{r[1]:.3g}", r[2], r[3], r[4]] for r in rows]
    markdown = "\n".join(
        [
            "# Results against torch's thread count",
            "",
            f"`python benchmarks/bench_threads.py` on {machine['cpu']} ({machine['cpu_count']} cores), torch "
            f"{torch.__version__}; 1 and 2 threads in the same process; timings alternate within the run and depend on "
            "the machine's load (other jobs were running).",
            "",
            markdown_table(headers, shown),
            "",
        ]
    )
    write_results("threads", {"machine": machine, "rows": [dict(zip(headers, r)) for r in rows]}, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
