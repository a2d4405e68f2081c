"""Copy trained checkpoints into the package zoo and write zoo.json (name, file, metrics, the exact command)."""

from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path

from certquant.models import load_checkpoint
from certquant.models.zoo import MANIFEST, ZOO_DIR
from certquant.utils.io import atomic_write_json, atomic_write_text


def command_for(args: dict) -> str:
    parts = ["certquant", "train", "--dataset", args["dataset"], "--model", args["model"], "--sigma", str(args["sigma"]),
             "--epochs", str(args["epochs"]), "--lr", str(args["lr"]), "--seed", str(args["seed"])]
    if args.get("device", "auto") not in ("auto", "cpu"):
        parts += ["--device", args["device"]]
    return shlex.join(parts + ["--out", "RUN_DIR"])


def main(runs: str) -> None:
    entries, notes = [], ["# How each zoo checkpoint was made", "",
                          "Each file is `RUN_DIR/model.pt` of the command below (on the CPU unless it names "
                          "`--device cuda`); `scripts/train_zoo.sh` runs them all.", ""]
    for run in sorted(Path(runs).iterdir()):
        if not (run / "model.pt").is_file():
            continue
        _, info = load_checkpoint(run / "model.pt")
        name = run.name
        shutil.copyfile(run / "model.pt", ZOO_DIR / f"{name}.pt")
        m, args = info["metrics"], info["train_args"]
        entries.append({"name": name, "file": f"{name}.pt", "dataset": info["dataset"], "model": info["arch"],
                        "sigma": info["sigma"], "clean_accuracy": round(m["test_clean_accuracy"], 4),
                        "noisy_accuracy": round(m["test_noisy_accuracy"], 4), "command": command_for(args)})
        notes += [f"## {name}", "", "```", command_for(args), "```", "",
                  f"Test accuracy (10,000 images): clean {m['test_clean_accuracy']:.4f}, "
                  f"noisy (sigma {info['sigma']}) {m['test_noisy_accuracy']:.4f}.", ""]
    atomic_write_json(MANIFEST, entries)
    atomic_write_text(ZOO_DIR / "COMMANDS.md", "\n".join(notes))
    print(f"zoo: {len(entries)} checkpoints in {ZOO_DIR}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/zoo")
