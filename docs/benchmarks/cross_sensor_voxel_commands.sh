#!/bin/sh
# Issue 17: cross-sensor rows, voxel. The 64-beam sim_voxel calibrated from 32-beam (vlp32) frames with its committed
# recipe (full lidar-ptq, 256 frames of window 0, 1 thread), then FP32 / committed INT8 / vlp32-calibrated INT8 on
# 1000 vlp32 test frames.
cd /work/main
out=runs/s24/sim_voxel_int8_vlp32calib.safetensors
[ -f $out ] || ./dev run lidar-ptq quantize --checkpoint sim_voxel --calib sim --sim-config vlp32 --frames 256 \
  --method lidar-ptq --threads 1 --quiet --no-input-check --out $out
echo "[$(date +%T)] voxel vlp32 calibration rc $?"
./dev run python benchmarks/test_split_headline.py --model sim_voxel --sim-config vlp32 \
  --checkpoints sim_voxel_int8 $out
echo "[$(date +%T)] voxel cross-sensor rows rc $?"
