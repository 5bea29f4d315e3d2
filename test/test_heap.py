"""runtime/heap.py: with the allocator set to keep freed memory, a frame of voxelize stops faulting its arrays in
again; onnxruntime sessions of the project set it; the user's own allocator settings win."""

import json
import os
import platform
import subprocess
import sys

import pytest

from lidar_ptq_core.runtime.heap import SWITCH, USER_SETTINGS

glibc_only = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the setting exists in glibc only")

# A fresh process per case: the allocator's state is per process and the thresholds cannot be unset.
FRAMES_SCRIPT = """
import json, resource, sys
import numpy as np
from lidar_ptq_core.runtime.heap import keep_freed_memory
from lidar_ptq_core.voxelize import VoxelConfig, voxelize_clouds

state = keep_freed_memory() if sys.argv[1] == "keep" else "default"
# A pillar grid and clouds the size of a 64-beam sweep (120k points), so the arrays are MBs as in the node.
config = VoxelConfig((-50.0, -50.0, -3.0, 50.0, 50.0, 3.0), (0.2, 0.2, 6.0), 16, 30000)
rng = np.random.default_rng(0)
clouds = [np.concatenate([rng.uniform(-55, 55, (120000, 2)), rng.uniform(-2, 2, (120000, 2))], axis=1)
          .astype(np.float32) for _ in range(3)]
faults = []
for frame in range(9):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    voxelize_clouds([clouds[frame % 3]], config, 4, as_numpy=True)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"state": state, "faults": faults[3:]}))
"""


def _environment_without_user_settings() -> dict:
    return {k: v for k, v in os.environ.items() if k not in (*USER_SETTINGS, SWITCH)}


def _run_frames(mode: str, env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", FRAMES_SCRIPT, mode], env=env, capture_output=True, text=True,
                         check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc_only
def test_kept_memory_takes_the_page_faults_out_of_a_frame():
    env = _environment_without_user_settings()
    default, kept = _run_frames("default", env), _run_frames("keep", env)
    assert kept["state"] == "set"
    # By default every frame maps its MB-sized arrays afresh (thousands of 4 KB faults); kept, almost none.
    assert min(default["faults"]) > 500, default
    assert max(kept["faults"]) < 50, kept


@glibc_only
def test_user_settings_are_left_alone_and_the_switch_turns_it_off():
    env = _environment_without_user_settings() | {"MALLOC_TRIM_THRESHOLD_": "131072"}
    assert _run_frames("keep", env)["state"] == "user settings"
    off = _run_frames("keep", _environment_without_user_settings() | {SWITCH: "0"})
    assert off["state"] == "off" and min(off["faults"]) > 500, off


@glibc_only
def test_onnxruntime_session_options_keep_freed_memory():
    pytest.importorskip("onnxruntime")
    script = ("from lidar_ptq_core.runtime import heap\nassert heap._state is None\n"
              "from lidar_ptq_core.runtime.ort_profile import session_options\nsession_options(2)\n"
              "print(heap.keep_freed_memory())")
    out = subprocess.run([sys.executable, "-c", script], env=_environment_without_user_settings(),
                         capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "set"
