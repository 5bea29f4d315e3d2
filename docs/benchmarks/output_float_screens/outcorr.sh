#!/bin/sh
# Issue 17: the candidate + output correction (quant/output_correction.py), windows 0/256/512, then val rows.
for start in 0 256 512; do
  out=runs/r17/sim_pillar_int8_fast128oc_calib$start.safetensors
  [ -f $out ] && continue
  ./dev run lidar-ptq quantize --checkpoint sim_pillar --calib sim --sim-start $start --frames 128 --method lidar-ptq-fast \
    --set keep_float_outputs=true equalization_frames=32 output_correction=true --threads 2 --quiet --no-input-check --out $out
done
./dev run python benchmarks/test_split_headline.py --split val --frames 500 --model sim_pillar --out docs/benchmarks/val_split_sim_pillar_fast --checkpoints \
  runs/r17/sim_pillar_int8_fast128oc_calib0.safetensors runs/r17/sim_pillar_int8_fast128oc_calib256.safetensors \
  runs/r17/sim_pillar_int8_fast128oc_calib512.safetensors
