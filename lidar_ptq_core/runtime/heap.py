"""Keep freed heap memory in the process between frames instead of handing it back to the kernel (glibc only).

Every frame of the detection pipeline allocates and frees the same large numpy arrays (the cloud's columns, voxel
features, the BEV canvas, decode's maps: 0.5-14 MB each). By default glibc serves an allocation above its mmap
threshold (128 KB at start, raised only as mapped chunks are freed) with fresh pages from mmap, and gives a freed heap
top above its trim threshold back to the kernel; so each frame faults the same memory in again, zero-filled by the
kernel. Measured on the sim pillar INT8 bundle (onnxruntime, 2 threads): 1600-3600 minor page faults per frame, and
voxelize 8.7 ms of which about half was those faults (3.9 ms with none). That was also why the same pipeline took
4.6 ms to voxelize in `lidar-ptq demo`'s process, whose allocator state had been raised by earlier large frees, and
8-10 ms in a fresh one such as the detector node's: the time depended on the process's history.

`keep_freed_memory()` sets glibc's thresholds once per process (mallopt): allocations up to 32 MB come from the heap,
and up to 128 MB of freed heap stay in the process. The process keeps what its frames used at their peak, which it
takes again at the next frame anyway. Thresholds given in the environment (MALLOC_MMAP_THRESHOLD_,
MALLOC_TRIM_THRESHOLD_, GLIBC_TUNABLES) are left as the user set them, and LIDAR_PTQ_KEEP_FREED_MEMORY=0 leaves
glibc's defaults (benchmarks/node_pipeline_variants.py compares the two).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import threading

MMAP_THRESHOLD_BYTES = 32 << 20  # the largest glibc accepts on 64-bit (HEAP_MAX_SIZE / 2): the BEV canvas fits
TRIM_THRESHOLD_BYTES = 128 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")
SWITCH = "LIDAR_PTQ_KEEP_FREED_MEMORY"  # "0": leave the allocator as glibc sets it

_lock = threading.Lock()
_state: str | None = None  # what the first call did, for every later call


def keep_freed_memory() -> str:
    """Set the thresholds (once per process). Returns what was done: 'set', 'off' (LIDAR_PTQ_KEEP_FREED_MEMORY=0),
    'user settings' (the environment sets the allocator), 'not glibc' (nothing to set) or 'refused' (mallopt said
    no)."""
    global _state
    with _lock:
        if _state is None:
            _state = _apply()
        return _state


def _apply() -> str:
    if os.environ.get(SWITCH, "").strip() == "0":
        return "off"
    if any(os.environ.get(name) for name in USER_SETTINGS):
        return "user settings"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "not glibc"
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return "not glibc"
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # The trim threshold first: setting either one turns off glibc's own raising of both.
    ok = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1 and ok
    return "set" if ok else "refused"
