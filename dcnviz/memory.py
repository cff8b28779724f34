"""Keep freed memory in the process for the next forward (glibc's malloc).

PyTorch's CPU allocator hands every tensor straight to ``malloc`` and back. glibc serves blocks over
its mmap threshold (at most 32 MB: the R-FCN head's 38 MB class-score map, DeepLab's 67 MB res5 maps
at 1024x2048) with fresh pages from the system, and returns the top of the heap to it once enough is
free there, so every forward faults its largest maps in again, page by zeroed page (~50 000 page
faults per R-FCN forward at 600x1000; 15-20 % of its time on 2 cores, README "bench"). MXNet's
executor keeps a pool for the same reason. The price is peak memory, which the process keeps until it
exits and which the heap's fragmentation raises (by ~20-30 % for those models' forwards).
"""
from __future__ import annotations

import ctypes
import os

_M_TRIM_THRESHOLD = -1  # from glibc's <malloc.h>
_M_MMAP_MAX = -4
# A user who tunes glibc's malloc themselves keeps their setting.
_USER_TUNABLES = ("GLIBC_TUNABLES", "MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
                  "MALLOC_TOP_PAD_")
_OPT_OUT = "DCNVIZ_KEEP_MEMORY"  # =0: leave malloc as it is
_kept = False


def keep_freed_memory() -> bool:
    """Have glibc's ``malloc`` serve every block from its heap and never give freed memory back.

    Process-wide, for the rest of the process; the ``dcnviz`` command calls it at start. Returns whether
    it took effect: not with ``DCNVIZ_KEEP_MEMORY=0`` in the environment, nor where one of glibc's own
    tunables (``GLIBC_TUNABLES``, ``MALLOC_*_``) is set there, nor where the C library is not glibc
    (musl's ``mallopt`` does nothing; macOS has none).
    """
    if os.environ.get(_OPT_OUT) == "0" or any(name in os.environ for name in _USER_TUNABLES):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 -- only glibc has it
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    global _kept
    _kept = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    return _kept


def freed_memory_kept() -> bool:
    """Whether :func:`keep_freed_memory` took effect in this process (the benchmarks report it: it changes
    a CPU forward's time by up to ~20 %)."""
    return _kept
