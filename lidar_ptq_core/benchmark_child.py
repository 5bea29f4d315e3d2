"""Run one benchmark function in a fresh Python process and take back its JSON result.

Benchmarks that compare process-wide settings (allocator, environment, another source tree) must measure each side in
a process of its own. This module imports nothing heavy, so the parent that orchestrates stays as light as it was.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

RESULT_PREFIX = "RESULT "


def run_in_child(script: str | Path, call: str, cwd: str | Path, env: dict | None = None,
                 run_name: str = "child", what: str = "the child") -> dict:
    """Load `script` with runpy as module `m` (under `run_name`, so its main block does not run), evaluate `call`
    (e.g. "m['measure'](10, 5)") in a new interpreter started in `cwd` (its packages come first on the path) with
    `env`, and return the JSON the call's result printed as. Raises RuntimeError with the child's stderr tail."""
    code = (f"import json, runpy; m = runpy.run_path({str(Path(script).resolve())!r}, run_name={run_name!r}); "
            f"print({RESULT_PREFIX!r} + json.dumps({call}))")
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, check=False)
    line = next((x for x in done.stdout.splitlines() if x.startswith(RESULT_PREFIX)), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"{what} failed:\n{done.stderr[-2000:]}")
    return json.loads(line[len(RESULT_PREFIX):])
