#!/bin/sh
# Issue 17: the method table on the test split. Each method's preset quantizes the bundled FP32 model on the first
# 256 frames of the sim calib split (1 thread), then benchmarks/test_split_headline.py scores it on the same 1000 test
# frames as FP32 (paired intervals, agreement); rows land in docs/benchmarks/test_split_<model>_methods.* as they
# finish. Usage: sh docs/benchmarks/methods_test_commands.sh sim_voxel "max mse entropy ..."
cd "$(dirname "$0")/../.."
model=$1
for method in $2; do
  out=runs/s24/methods/${model}_$method.safetensors
  if [ ! -f $out ]; then
    ./dev run lidar-ptq quantize --checkpoint $model --calib sim --frames 256 --method $method --threads 1 --quiet \
      --no-input-check --out $out --work-dir runs/s24/methods/${model}_$method.work || { echo "$method failed"; continue; }
  fi
  echo "[$(date +%T)] $model $method quantized"
  ./dev run python benchmarks/test_split_headline.py --model $model --checkpoints $out \
    --out docs/benchmarks/test_split_${model}_methods \
    --note "method table: each preset on 256 frames of the sim calib split (window 0), 1 thread"
  echo "[$(date +%T)] $model $method scored"
done
