#!/bin/sh
# Issue 17: cross-sensor rows, pillar. The 64-beam sim_pillar calibrated from 32-beam (vlp32) frames with its committed
# recipe (same window 256-383, 1 thread), then FP32 / committed INT8 (64-beam calibration) / vlp32-calibrated INT8 on
# 1000 vlp32 test frames.
cd /work/main
out=runs/s24/sim_pillar_int8_vlp32calib.safetensors
[ -f $out ] || ./dev run lidar-ptq quantize --checkpoint sim_pillar --calib sim --sim-config vlp32 --sim-start 256 \
  --frames 128 --method lidar-ptq-fast --config config/quantization/sim_pillar_int8.yaml --threads 1 --quiet \
  --no-input-check --out $out
echo "[$(date +%T)] pillar vlp32 calibration rc $?"
./dev run python benchmarks/test_split_headline.py --model sim_pillar --sim-config vlp32 \
  --checkpoints sim_pillar_int8 $out
echo "[$(date +%T)] pillar cross-sensor rows rc $?"
