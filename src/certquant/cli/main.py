"""``certquant``: every command, one line of help each. Commands live in modules by concern; this file wires them."""

from __future__ import annotations

from certquant.cli import deploy as deploy_cli
from certquant.cli import foundation
from certquant.cli import quant as quant_cli
from certquant.cli import run as run_cli
from certquant.cli import smoothing as smoothing_cli
from certquant.cli.common import new_app

app = new_app("certquant: certifiably robust mixed-precision quantization (ARQ) of noise-trained classifiers.")

app.command(
    "run",
    help="The main job: certify FP32, search, fine-tune, certify each method, write the report.",
    epilog=run_cli.EPILOG,
)(run_cli.run_cmd)
app.command("report", help="Rebuild the report of a run folder from its files.")(run_cli.report_cmd)

app.add_typer(foundation.data_app, name="data", help="Datasets: list them, fetch one.")
app.command("models", help="List the model architectures.")(foundation.models_cmd)
app.command("train", help="Train a model with Gaussian noise augmentation (resumable).")(foundation.train_cmd)
app.command("evaluate", help="Clean and noisy test accuracy of checkpoints (default: the zoo).")(
    foundation.evaluate_cmd
)
app.command("zoo", help="List the shipped noise-trained checkpoints.")(foundation.zoo_cmd)
app.command("quantize", help="Quantize a checkpoint with a bit policy (noisy calibration, optional fine-tune).")(
    quant_cli.quantize_cmd
)
app.command("cost", help="Per-layer bits, MACs and BitOPs of a policy on a checkpoint.")(quant_cli.cost_cmd)
app.command(
    "search",
    help="Search per-layer bit-widths under BitOPs budgets: ARQ, HAQ, random, uniform (resumable).",
    epilog=run_cli.EPILOG,
)(run_cli.search_cmd)
run_cli.config_app.command("show", help="Print the fully resolved run config as YAML.", epilog=run_cli.EPILOG)(
    run_cli.config_show_cmd
)
app.add_typer(run_cli.config_app, name="config", help="Configs: show the resolved config of run and search.")
app.command("certify", help="Certify test images with randomized smoothing (resumable).")(smoothing_cli.certify_cmd)
app.command("predict", help="Smoothed-classifier predictions with abstention (resumable).")(smoothing_cli.predict_cmd)
app.command("analyze", help="Certified-accuracy table and plot of certify runs.")(smoothing_cli.analyze_cmd)
app.command("export", help="Export a checkpoint as a QDQ ONNX file (what the quantized model computes).")(
    deploy_cli.export_cmd
)
app.command("card", help="Print (or write) the certificate card of an exported ONNX file; check its graph hash.")(
    deploy_cli.card_cmd
)
app.command("import", help="Import Cohen et al.'s checkpoints or a PyTorch model you define (no pickled code).")(
    deploy_cli.import_cmd
)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
