#!/usr/bin/env bash
# Re-creates the shipped model zoo (src/certquant/zoo) with `certquant train` itself. CPU, 2 cores: about 45 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${ZOO_RUNS:-runs/zoo}
certquant train --dataset fashion-mnist --model small-cnn --sigma 0.25 --epochs 10 --lr 0.05 --seed 0 --out "$out/small-cnn-fmnist-s0.25" --resume
certquant train --dataset fashion-mnist --model small-cnn --sigma 0.5 --epochs 10 --lr 0.05 --seed 0 --out "$out/small-cnn-fmnist-s0.50" --resume
certquant train --dataset fashion-mnist --model resnet20 --sigma 0.25 --epochs 12 --lr 0.1 --seed 0 --out "$out/resnet20-fmnist-s0.25" --resume
python scripts/build_zoo.py "$out"
