#!/bin/sh
# Issue 17: NVIDIA's quantizers on the test split. Each tool's standard recipe quantizes the bundled FP32 model on the
# first 256 frames of the sim calib split (1 thread, in the peers' own venv), detects the 1000 test frames into box
# folders, and benchmarks/test_split_headline.py scores those against FP32 with paired intervals (in .venv).
# Usage: sh docs/benchmarks/peers_test_commands.sh sim_pillar "entropy max"
cd "$(dirname "$0")/../.."
model=$1
benchmarks/peers/setup_venv.sh
.venv-peers/bin/python benchmarks/peers/peer_ptq.py --model $model --split test --test-frames 1000 --calib-frames 256 \
  --threads 1 --tool modelopt pytorch-quantization --calib-method ${2:-entropy} | tee runs/peers_test_$model.log
dirs=$(sed -n 's/.*--box-dirs \(.*\) --out.*/\1/p' runs/peers_test_$model.log | tail -1)
./dev run python benchmarks/test_split_headline.py --model $model --frames 1000 --box-dirs $dirs \
  --out docs/benchmarks/test_split_${model}_peers \
  --note "NVIDIA peers: each tool's standard recipe on 256 frames of the sim calib split (window 0), 1 thread"
