#!/usr/bin/env bash
# Build the vision_msgs Detection3D messages (tools/vision_msgs) into the venv prefix with the rosidl tooling from
# PyPI, as ../shared/notes/ros2-from-pypi.md records. Idempotent: skipped when the built package is newer than its sources.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${1:-$root/.venv}
src=$root/tools/vision_msgs
build=$root/build/vision_msgs
stamp=$venv/share/vision_msgs/.lidar_ptq_build_stamp
py=$venv/bin/python

sources_hash=$(cat "$src"/package.xml "$src"/CMakeLists.txt "$src"/msg/*.msg | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sources_hash" ] && "$py" -c "import vision_msgs.msg" 2>/dev/null; then
  exit 0
fi
echo "[setup] building vision_msgs into $venv (about 30 s)"

# The exported CMake files of the wheels carry the wheel builder's include paths; point them at this interpreter.
py_include=$("$py" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
np_include=$("$py" -c "import numpy; print(numpy.get_include())")
grep -rl --include='*.cmake' -e '/opt/python/cp311-cp311/include/python3.11' -e 'site-packages/numpy/_core/include' \
    "$venv/share" 2>/dev/null | while read -r f; do
  sed -i -e "s#/opt/python/cp311-cp311/include/python3.11#$py_include#g" \
         -e "s#[^;\" ]*site-packages/numpy/_core/include#$np_include#g" "$f"
done

rm -rf "$build"
mkdir -p "$build"
export AMENT_PREFIX_PATH=$venv
cmake -S "$src" -B "$build" -DCMAKE_PREFIX_PATH="$venv" -DCMAKE_INSTALL_PREFIX="$venv" \
  -DPython3_EXECUTABLE="$py" -DBUILD_TESTING=OFF -DCMAKE_BUILD_TYPE=Release >"$build/configure.log" 2>&1 \
  || { tail -30 "$build/configure.log"; exit 1; }
cmake --build "$build" -j "$(nproc)" >"$build/build.log" 2>&1 || { tail -30 "$build/build.log"; exit 1; }
cmake --install "$build" >"$build/install.log" 2>&1 || { tail -30 "$build/install.log"; exit 1; }
"$py" -c "from vision_msgs.msg import Detection3DArray" || { echo "vision_msgs built but does not import"; exit 1; }
echo "$sources_hash" > "$stamp"
