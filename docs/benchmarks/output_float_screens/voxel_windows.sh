#!/bin/bash
# Issue 17/20: the committed voxel recipe (lidar-ptq, 256 frames; window 0 on 2 threads, 256 and 512 on 1 thread at low priority) re-made with provenance on calibration
# windows 0, 256 and 512, then scored on 1000 test frames (paired intervals).
cd /work/main
W=runs/r17
for start in 0 256 512; do
  out=$W/sim_voxel_int8_calib$start.safetensors
  [ -f $out ] && continue
  nice -n 19 ./dev run lidar-ptq quantize --checkpoint sim_voxel --calib sim --frames 256 --sim-start $start --method lidar-ptq \
     --threads 1 --quiet --no-input-check --out $out > $W/sim_voxel_int8_calib$start.log 2>&1
  echo "[$(date +%T)] voxel window $start quantized (rc $?)"
done
nice -n 19 ./dev run python benchmarks/test_split_headline.py --model sim_voxel --checkpoints sim_voxel_int8 \
   $W/sim_voxel_int8_calib0.safetensors $W/sim_voxel_int8_calib256.safetensors $W/sim_voxel_int8_calib512.safetensors \
   >> $W/test_split_voxel.log 2>&1
echo "[$(date +%T)] voxel test rows done"
