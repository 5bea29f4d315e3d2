#!/bin/sh
# lidar-ptq-fast variants on three 32-frame calibration windows (issue 17 screens; choices made on val only)
set -e
H="dense_head.heads_list.0"
for start in 0 256 512; do
  for v in base outfloat hmfloat; do
    out=runs/r17/fast_${v}_calib$start.safetensors
    [ -f $out ] && continue
    case $v in
      base) kf="";;
      outfloat) kf="--keep-float $H.hm.1 $H.center.1 $H.center_z.1 $H.dim.1 $H.rot.1";;
      hmfloat) kf="--keep-float $H.hm.1";;
    esac
    lidar-ptq quantize --checkpoint sim_pillar --calib sim --sim-start $start --frames 32 --method lidar-ptq-fast \
      --threads 2 --quiet --no-input-check $kf --out $out
  done
done
