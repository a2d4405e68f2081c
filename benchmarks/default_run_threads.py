"""Check that a finished default run does not depend on the thread count: redo, with torch at 2 threads, the
fine-tuning of each method's chosen policy and the first 17 ARQ episodes (15 warm-up, 2 with agent updates) of a
default run made with another count, and compare bitwise. Forward passes, hence the certificates, are
thread-independent (benchmarks/results/threads.md), so equal models give equal tables.

    python benchmarks/default_run_threads.py RUN_DIR WORK_DIR
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import torch

from certquant.pipeline.config import load_config
from certquant.pipeline.run import Pipeline
from certquant.quant import Policy

EPISODES = 17


def main() -> None:
    torch.set_num_threads(2)
    run, work = Path(sys.argv[1]) / "budget-0.015625", Path(sys.argv[2])
    shutil.rmtree(work, ignore_errors=True)
    pipeline = Pipeline(load_config(None, [f"search.episodes={EPISODES}"]), work, progress=False)
    for method in ("arq", "haq", "uniform"):
        started = time.time()
        path = pipeline._quantize(Policy.load(run / method / "search" / "best_policy.json"), work / method)
        mine = torch.load(path, weights_only=True)["state_dict"]
        theirs = torch.load(run / method / "model.pt", weights_only=True)["state_dict"]
        same = all(torch.equal(mine[k], theirs[k]) for k in mine)
        print(f"{method}: fine-tuned at 2 threads == the run's model bitwise: {same} ({time.time() - started:.0f}s)")
    started = time.time()
    pipeline.search(0.015625, "arq")
    read = lambda path: [json.loads(line) for line in path.read_text().splitlines()]  # noqa: E731
    mine = read(work / "budget-0.015625" / "arq" / "search" / "history.jsonl")
    theirs = read(run / "arq" / "search" / "history.jsonl")[:EPISODES]
    same = len(mine) == EPISODES and all(
        (a["w_bits"], a["a_bits"], a["reward"]) == (b["w_bits"], b["a_bits"], b["reward"]) for a, b in zip(mine, theirs)
    )
    print(f"ARQ search, first {EPISODES} episodes at 2 threads == the run's: {same} ({time.time() - started:.0f}s)")


if __name__ == "__main__":
    main()
