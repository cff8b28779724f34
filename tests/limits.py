"""Run a Python snippet in a subprocess whose address space is capped (``resource.RLIMIT_AS``) at what
it uses after importing dcnviz (and torch) plus a margin: a reader that allocates in proportion to a
crafted size field fails there with MemoryError instead of exhausting the test machine."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_PRELUDE = """
import resource
import dcnviz.convert.weights, dcnviz.io.images, safetensors.torch  # the imports count, not the margin
def _vm_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (_vm_bytes() + {margin}, resource.RLIM_INFINITY))
"""


def run_limited(code: str, margin: int = 512 << 20, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``code`` with the address-space cap; returns the finished process (stdout, stderr as text)."""
    program = _PRELUDE.format(margin=margin) + textwrap.dedent(code)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True,
                          timeout=timeout)
