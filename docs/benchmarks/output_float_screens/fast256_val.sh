#!/bin/sh
# Next candidate for the pillar recipe (seen on test in the method table, so it must be chosen on val first):
# lidar-ptq-fast, all INT8, 256 frames, on the three windows; val rows (500 frames).
cd /work/main
for start in 0 256 512; do
  out=runs/s24/sim_pillar_int8_fast256_calib$start.safetensors
  [ -f $out ] || ./dev run lidar-ptq quantize --checkpoint sim_pillar --calib sim --sim-start $start --frames 256 \
    --method lidar-ptq-fast --threads 2 --quiet --no-input-check --out $out
  echo "[$(date +%T)] window $start rc $?"
done
./dev run python benchmarks/test_split_headline.py --model sim_pillar --split val --frames 500 --threads 2 \
  --out docs/benchmarks/val_split_sim_pillar_fast --checkpoints runs/s24/sim_pillar_int8_fast256_calib0.safetensors \
  runs/s24/sim_pillar_int8_fast256_calib256.safetensors runs/s24/sim_pillar_int8_fast256_calib512.safetensors
echo "[$(date +%T)] val rows rc $?"
