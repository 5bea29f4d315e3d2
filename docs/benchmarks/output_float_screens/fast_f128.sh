#!/bin/sh
# lidar-ptq-fast + keep_float_outputs on 128-frame windows (val screen: does more calibration data steady it?)
for start in 0 256 512; do
  out=runs/r17/fast_outfloat_f128_calib$start.safetensors
  [ -f $out ] && continue
  ./dev run lidar-ptq quantize --checkpoint sim_pillar --calib sim --sim-start $start --frames 128 --method lidar-ptq-fast \
    --set keep_float_outputs=true --threads 2 --quiet --no-input-check --out $out
done
while pgrep -f "split val --frames 500 --model sim_pillar --checkpoints runs/r17/fast_base" > /dev/null; do sleep 20; done
./dev run python benchmarks/test_split_headline.py --split val --frames 500 --model sim_pillar --checkpoints \
  runs/r17/fast_outfloat_f128_calib0.safetensors runs/r17/fast_outfloat_f128_calib256.safetensors \
  runs/r17/fast_outfloat_f128_calib512.safetensors --out runs/r17/val_fast
