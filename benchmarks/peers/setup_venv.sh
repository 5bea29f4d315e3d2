#!/usr/bin/env bash
# Creates /work/main/.venv-peers: a venv of its own for the NVIDIA peer quantizers (ModelOpt, pytorch-quantization),
# so their dependencies never land in the project's .venv. torch stays pinned to the project's 2.13.0 (a local wheel on
# the project's machines): every pip call gets the same pin as a constraint, so no peer package can swap torch.
# Idempotent: skips when the venv was built by this exact script (sha256 of this file, stored in the venv).
#   benchmarks/peers/setup_venv.sh          build or reuse;  FORCE=1 ... rebuilds packages anyway
# Log: build/peers_pip.log
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
venv=$root/.venv-peers
py=${PYTHON:-python3.11}
log=$root/build/peers_pip.log
stamp=$venv/.peers_setup_hash
TORCH_VERSION=2.13.0

want=$(sha256sum "$0" | cut -c1-16)
if [ -z "${FORCE:-}" ] && [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null || true)" = "$want" ]; then
  echo "[peers] $venv is up to date"
  exit 0
fi

mkdir -p "$root/build"
: >"$log"
started=$(date +%s)
if [ ! -x "$venv/bin/python" ]; then
  echo "[peers] creating $venv"
  "$py" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip)
# The pin as a constraint file, handed to every install after the first so nothing can up- or downgrade torch.
constraints=$venv/peers_constraints.txt
printf 'torch==%s\n' "$TORCH_VERSION" >"$constraints"

step() {  # step NAME pip-args...: one logged pip call; on failure show the log's tail
  echo "[peers] $1 (log: $log)"
  shift
  echo "===== pip $*" >>"$log"
  "${pip[@]}" "$@" >>"$log" 2>&1 || { grep -v '^WARNING: Location' "$log" | tail -30; exit 1; }
}
check_torch() {  # fail loudly if a step replaced the pinned torch
  local have
  have=$("$venv/bin/python" -c 'import torch; print(torch.__version__)')
  case "$have" in
    "$TORCH_VERSION"|"$TORCH_VERSION"+*) ;;
    *) echo "[peers] torch is $have after $1, want $TORCH_VERSION" >&2; exit 1 ;;
  esac
}

step "upgrading pip" install --upgrade pip setuptools wheel
step "installing torch==$TORCH_VERSION and the project's runtime deps" install -c "$constraints" \
  "torch==$TORCH_VERSION" "spconv-cu120==2.3.6" "numpy>=1.26,<3" "PyYAML>=6" "safetensors>=0.4" "scipy>=1.11" \
  "tqdm>=4.66" "matplotlib>=3.8" "rosbags>=0.11"
check_torch "runtime deps"
step "installing nvidia-modelopt" install -c "$constraints" nvidia-modelopt huggingface_hub
check_torch "nvidia-modelopt"
# 2.2.1 on PyPI is a placeholder that only raises; 2.1.3 is the last real release there.
step "installing pytorch-quantization==2.1.3" install -c "$constraints" "pytorch-quantization==2.1.3"
check_torch "pytorch-quantization"
step "installing lidar_ptq (editable, no deps)" install -c "$constraints" --no-deps -e "$root"
check_torch "lidar_ptq"

"$venv/bin/python" - <<'EOF' | tee -a "$log"
from importlib.metadata import version
import modelopt.torch.quantization  # noqa: F401  (import check only)
import pytorch_quantization  # noqa: F401
import lidar_ptq_core  # noqa: F401
print("[peers] torch", version("torch"), "| spconv-cu120", version("spconv-cu120"), "| nvidia-modelopt",
      version("nvidia-modelopt"), "| pytorch-quantization", version("pytorch-quantization"))
EOF
echo "$want" >"$stamp"
echo "[peers] ready in $(( $(date +%s) - started )) s: $venv"
