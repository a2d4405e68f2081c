#!/usr/bin/env bash
# Re-creates the shipped model zoo (src/certquant/zoo) with `certquant train` itself. 2-core CPU: about 20 minutes
# for the small CNNs and 40 for ResNet-20 (the shipped ResNet-20 was trained with ZOO_DEVICE=cuda on an H200).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${ZOO_RUNS:-runs/zoo}
certquant train --dataset fashion-mnist --model small-cnn --sigma 0.25 --epochs 10 --lr 0.05 --seed 0 --out "$out/small-cnn-fmnist-s0.25" --resume
certquant train --dataset fashion-mnist --model small-cnn --sigma 0.5 --epochs 10 --lr 0.05 --seed 0 --out "$out/small-cnn-fmnist-s0.50" --resume
certquant train --dataset fashion-mnist --model resnet20 --sigma 0.25 --epochs 30 --lr 0.1 --seed 0 --device "${ZOO_DEVICE:-auto}" --out "$out/resnet20-fmnist-s0.25" --resume
python scripts/build_zoo.py "$out"
