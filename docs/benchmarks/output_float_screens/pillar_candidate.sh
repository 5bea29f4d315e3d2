#!/bin/sh
# Issue 17: the pillar candidate chosen on held-out calibration frames (runs/r17/heldout_fast128.txt: the lowest
# worst-window held-out loss): lidar-ptq-fast + keep_float_outputs + equalization_frames 32, 128 frames, on calibration
# windows 0 / 256 / 512; then its test rows (1000 frames, paired intervals).
for start in 0 256 512; do
  out=runs/r17/sim_pillar_int8_fast128_calib$start.safetensors
  [ -f $out ] && continue
  ./dev run lidar-ptq quantize --checkpoint sim_pillar --calib sim --sim-start $start --frames 128 --method lidar-ptq-fast \
    --set keep_float_outputs=true equalization_frames=32 --threads 2 --quiet --no-input-check --out $out
done
./dev run python benchmarks/test_split_headline.py --model sim_pillar --checkpoints \
  runs/r17/sim_pillar_int8_fast128_calib0.safetensors runs/r17/sim_pillar_int8_fast128_calib256.safetensors \
  runs/r17/sim_pillar_int8_fast128_calib512.safetensors
