"""The README's default-run table, regenerated in one command.

Runs exactly the README's command (``certquant run``: the embedded default config, torch's default thread count)
into a fresh work folder, times it, and copies what it wrote (results.json, report.md, report.html, the plots and
run.json with the machine) to ``benchmarks/results/default-run/``; ``benchmarks/results/default-run.{json,md}`` hold
the command, the wall-clock time, the machine and the table. ``tests/test_readme.py`` checks that the README's table
is that results.json's.

    python benchmarks/default_run.py                      # ~5 minutes on an idle 2-core CPU
    python benchmarks/default_run.py --resume             # continue an interrupted run (its time is then not valid)
    python benchmarks/default_run.py --report-only --work DIR --log LOG   # a finished run: rebuild, copy, and
                                                          # take the time from certquant's own log of it
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from certquant.report.run_report import summary_table
from certquant.utils.threads import machine_info
from common import RESULTS, ROOT, write_results

NAME = "default-run"
COMMAND = ["certquant", "run"]  # the README's command; --out is the work folder
COPIED = (
    "results.json",
    "report.md",
    "report.html",
    "run.json",
    "certified_accuracy.png",
    "bitops_vs_acr.png",
    "bit_widths.png",
)


def _logged_seconds(log: Path) -> float:
    """The run's own time: the N of '[certquant run] all stages done in Ns' in its log."""
    match = re.search(r"\[certquant run\] all stages done in (\d+)s", log.read_text())
    if match is None:
        sys.exit(f"error: {log} holds no '[certquant run] all stages done in Ns' line")
    return float(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / NAME, help="run folder of certquant run")
    parser.add_argument("--resume", action="store_true", help="continue the run in --work (timing then not valid)")
    parser.add_argument("--no-progress", action="store_true", help="hide certquant's progress bars")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="do not run: rebuild the report of the finished run in --work (certquant report) and copy it",
    )
    parser.add_argument(
        "--log",
        type=Path,
        help="with --report-only: certquant's log of that run (its '[certquant "
        "run] all stages done in N s' line gives the time); copied beside the results",
    )
    parser.add_argument("--note", help="a sentence about the circumstances (e.g. the machine's load), kept with it")
    args = parser.parse_args()
    machine = machine_info()
    if args.report_only:
        subprocess.run(["certquant", "report", str(args.work)], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        seconds = _logged_seconds(args.log) if args.log else None
        machine = json.loads((args.work / "run.json").read_text()).get("machine") or machine
    else:
        if args.work.exists() and not args.resume:
            sys.exit(f"error: {args.work} exists: pass --resume to continue it, or delete it for a fresh, timed run")
        command = (
            COMMAND
            + ["--out", str(args.work)]
            + (["--resume"] if args.resume else [])
            + (["--no-progress"] if args.no_progress else [])
        )
        started = time.perf_counter()
        subprocess.run(command, check=True, cwd=ROOT)
        seconds = None if args.resume else time.perf_counter() - started
    target = RESULTS / NAME
    target.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        if (args.work / name).is_file():
            shutil.copyfile(args.work / name, target / name)
    if args.log:
        lines = [line for line in args.log.read_text().replace("\r", "\n").splitlines() if line.startswith("[")]
        (target / "certquant-run.log").write_text("\n".join(lines) + "\n")
    results = json.loads((args.work / "results.json").read_text())
    shown = " ".join(COMMAND + (["--resume"] if args.resume else []))
    timing = f"{seconds // 60:.0f} min {seconds % 60:.0f} s" if seconds is not None else "not measured (resumed)"
    markdown = "\n".join(
        [
            f"# The default run (`{' '.join(COMMAND)}`)",
            "",
            f"Command: `{shown}` (with `--out` a work folder), the embedded default config; regenerate with "
            "`python benchmarks/default_run.py`.",
            "",
            f"Wall-clock: {timing} on {machine['cpu']} ({machine['cpu_count']} cores, torch {machine['torch_threads']} "
            f"threads, OMP_NUM_THREADS={machine['omp_num_threads']}).",
            "",
            *([args.note, ""] if args.note else []),
            summary_table(results),
            "",
            f"Report: `{NAME}/report.md`, `{NAME}/report.html`; every number: `{NAME}/results.json`.",
            "",
        ]
    )
    write_results(
        NAME,
        {
            "command": shown,
            "wall_seconds": seconds,
            "resumed": args.resume,
            "note": args.note,
            "machine": machine,
            "rows": results["rows"],
        },
        markdown,
    )
    print(markdown)


if __name__ == "__main__":
    main()
