"""The torch-free runtime as an install: requirements-runtime.txt into an empty folder (pip --target), its size on
disk per package beside torch's and spconv's in the full environment, and a detection on the shipped INT8 pillar
bundle by a python that sees only that folder and this package (-S: no site-packages, so neither torch nor spconv
exist for it).

    python benchmarks/runtime_install.py --out docs/benchmarks/runtime_install
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FULL_ENVIRONMENT_PACKAGES = ("torch", "spconv", "cumm", "cumm_cu120.libs", "onnx", "numpy", "onnxruntime")
DETECT = """
import json, sys
import numpy as np
from lidar_ptq_core.runtime import Detector
detector = Detector.load("sim_pillar_int8.lptq", "auto", threads=1)
found = detector.detect(np.fromfile(sys.argv[1], np.float32).reshape(-1, 4))
top = sorted({m.split(".")[0] for m in sys.modules} - set(sys.stdlib_module_names) - {"__main__"})
print(json.dumps({"backend": detector.backend.name, "boxes": len(found), "confident": int((found.scores >= 0.3).sum()),
                  "third_party_modules": top}))
"""


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="write OUT.txt and OUT.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="lidar_ptq_runtime_") as scratch:
        target = Path(scratch) / "site"
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-cache-dir", "--target", str(target),
                        "-r", str(REPO / "requirements-runtime.txt")], check=True)
        sizes = {}
        for entry in sorted(target.iterdir()):
            if entry.name.endswith((".dist-info", "__pycache__")) or entry.name == "bin":
                continue
            sizes[entry.name] = folder_size(entry) if entry.is_dir() else entry.stat().st_size
        total = folder_size(target)
        # The runtime is this package (its own files) plus that folder: -S hides every site-packages folder.
        from lidar_ptq_core.sim import generate_frame, load_sim_config  # the frame is made here: sim needs tqdm

        frame = Path(scratch) / "frame.bin"
        generate_frame(load_sim_config("default"), 0).points[:, :4].astype("float32").tofile(frame)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(REPO)]), "PYTHONWARNINGS": "ignore"}
        child = subprocess.run([sys.executable, "-S", "-c", DETECT, str(frame)], cwd=REPO, env=env,
                               capture_output=True, text=True)
        if child.returncode != 0:
            raise SystemExit(f"the runtime-only detection failed:\n{child.stderr[-3000:]}")
        detection = json.loads(child.stdout.strip().splitlines()[-1])

    site = Path(sysconfig.get_paths()["purelib"])
    full = {name: folder_size(site / name) for name in FULL_ENVIRONMENT_PACKAGES if (site / name).exists()}
    full_total = folder_size(site)
    lines = ["Runtime-only install (requirements-runtime.txt, pip --target into an empty folder):",
             *(f"  {name:<24}{size / 2**20:>8.1f} MiB" for name, size in sorted(sizes.items(), key=lambda kv: -kv[1])),
             f"  {'total':<24}{total / 2**20:>8.1f} MiB", "",
             f"Full environment ({site}): {full_total / 2**20:.0f} MiB in all, of which",
             *(f"  {name:<24}{size / 2**20:>8.1f} MiB" for name, size in full.items()), "",
             f"Detection on sim frame 0 by `python -S` with only that folder and this package on the path: backend "
             f"{detection['backend']}, {detection['boxes']} boxes ({detection['confident']} with score >= 0.3); "
             f"third-party modules imported: {', '.join(detection['third_party_modules'])}"]
    text = "\n".join(lines)
    print(text)
    if args.out:
        from lidar_ptq_core.io_utils import write_text_and_json

        write_text_and_json(args.out, text, {"runtime_bytes": sizes, "runtime_total_bytes": total,
                                             "full_environment_bytes": full, "full_environment_total_bytes": full_total,
                                             "detection": detection})
    return 0


if __name__ == "__main__":
    sys.exit(main())
