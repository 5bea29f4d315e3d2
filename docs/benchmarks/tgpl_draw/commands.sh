# How the reports in this folder were made (2026-12-04, 2-core CPU, torch 2.13.0). Window 0 = the first 256 frames of
# the sim calib split. The TGPL-only runs resume from the calibration + grid search states of the first run's work
# folder (same frames, same settings, 2 threads), so every TGPL starts from the same model (held-out loss 6.743).

# the checked candidate, reconstruction included (its test rows: docs/benchmarks/test_split_sim_pillar.txt)
./dev run lidar-ptq quantize --checkpoint sim_pillar --calib sim --frames 256 --sim-start 0 --method lidar-ptq \
   --set stage_check_frames=8 --threads 2 --quiet --no-input-check --out $W/sim_pillar_int8_checked_calib0.safetensors \
   > $W/sim_pillar_int8_checked_calib0.log 2>&1
echo "[$(date +%T)] checked recipe, window 0, quantized (rc $?)"

# TGPL variants (adaround off); copy state_calibration + state_grid_search of the run above into each work folder
# Issue 17: does a cosine TGPL schedule make TGPL's end state independent of the float-order draw? Held-out TGPL loss
# (calibration frames 248-255, the stage check) after TGPL alone, on 2 and 1 threads, from the same calibration and
# grid search as the checked run (window 0). No test frames involved.
cd /work/main
W=runs/windows
for t in 2 1; do
  ./dev run lidar-ptq quantize --checkpoint sim_pillar --calib sim --frames 256 --method lidar-ptq \
    --set stage_check_frames=8 tgpl_schedule=cosine adaround=false sensitivity_frames=0 --threads $t --quiet \
    --no-input-check --out $W/tgpl_cosine_t$t.safetensors --work-dir $W/tgpl_cosine_t$t.work > $W/tgpl_cosine_t$t.log 2>&1
  echo "[$(date +%T)] cosine, $t threads: rc $?"; grep "stage tgpl" $W/tgpl_cosine_t$t.report.txt
done
# Issue 17: TGPL over 224 calibration frames (0-223; the stage check holds out 248-255) with the cosine schedule,
# 2 threads: does more data make TGPL help on held-out frames?
cd /work/main
W=runs/windows
while pgrep -f tgpl_study.sh >/dev/null; do sleep 10; done
./dev run lidar-ptq quantize --checkpoint sim_pillar --calib sim --frames 256 --method lidar-ptq \
  --set stage_check_frames=8 tgpl_schedule=cosine tgpl_frames=224 adaround=false sensitivity_frames=0 --threads 2 \
  --quiet --no-input-check --out $W/tgpl_cosine_f224.safetensors --work-dir $W/tgpl_cosine_f224.work \
  > $W/tgpl_cosine_f224.log 2>&1
echo "[$(date +%T)] cosine, 224 frames, 2 threads: rc $?"; grep "stage tgpl" $W/tgpl_cosine_f224.report.txt
# Issue 17: cosine TGPL at a quarter of the preset's learning rate (5e-4), 32 frames, on 2 and 1 threads.
cd /work/main
W=runs/windows
for t in 2 1; do
  ./dev run lidar-ptq quantize --checkpoint sim_pillar --calib sim --frames 256 --method lidar-ptq \
    --set stage_check_frames=8 tgpl_schedule=cosine tgpl_lr=0.0005 adaround=false sensitivity_frames=0 --threads $t \
    --quiet --no-input-check --out $W/tgpl_cosine_lr5e-4_t$t.safetensors --work-dir $W/tgpl_cosine_lr5e-4_t$t.work \
    > $W/tgpl_cosine_lr5e-4_t$t.log 2>&1
  echo "[$(date +%T)] cosine, lr 5e-4, $t threads: rc $?"; grep "stage tgpl" $W/tgpl_cosine_lr5e-4_t$t.report.txt
done

# bias correction after TGPL
./dev run lidar-ptq quantize --checkpoint sim_pillar --calib sim --frames 256 --method lidar-ptq --set stage_check_frames=8 tgpl_schedule=cosine bias_correction=true bias_correction_frames=8 adaround=false sensitivity_frames=0 --threads 2 --quiet --no-input-check --out runs/windows/tgpl_cosine_bc.safetensors --work-dir runs/windows/tgpl_cosine_bc.work

# Issue 20 (2026-12-05): TGPL's recorded first / last step loss of the committed checkpoint (until 2026-12-04: the
# file of commit c499744^), the 2-thread rerun of that recipe (work folder of benchmarks/reproduce_checkpoint.py's
# run, unfinished) and the checked run above, from their own reports (nothing recomputed).
git show c499744^:checkpoints/sim_pillar_int8.safetensors > /tmp/old_pillar.safetensors
./dev run python benchmarks/tgpl_end_state.py /tmp/old_pillar.safetensors runs/repro/sim_pillar_int8.work \
  runs/windows/sim_pillar_int8_checked_calib0.safetensors \
  --labels "committed until 2026-12-04" "rerun, 2 threads" "checked, window 0, 2 threads" \
  --out docs/benchmarks/tgpl_draw/tgpl_end_state.txt
