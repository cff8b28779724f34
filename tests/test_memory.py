"""The ``dcnviz`` command keeps freed memory for the next forward (:mod:`dcnviz.memory`)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

# Allocates and frees a 48 MiB tensor, over glibc's largest mmap threshold (32 MiB), as a detector's
# forward does its larger maps, and counts the page faults of twenty rounds after ten to warm up.
PROBE = """
import resource, torch
from dcnviz.memory import freed_memory_kept, keep_freed_memory
print(keep_freed_memory() and freed_memory_kept())
for _ in range(10):  # the heap grows to its steady size
    torch.empty(48 << 20, dtype=torch.uint8).fill_(1)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    torch.empty(48 << 20, dtype=torch.uint8).fill_(1)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
glibc = pytest.mark.skipif(not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
                           reason="the setting is glibc's")


def probe(**env_extra) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "DCNVIZ_KEEP_MEMORY")}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**env, **env_extra}, capture_output=True,
                         text=True, check=True).stdout.split()
    return out[0], int(out[1])


@glibc
def test_freed_blocks_are_reused_without_page_faults():
    took, faults = probe()
    assert took == "True"
    # 20 x 48 MiB of fresh pages would be ~250 000 faults (480 with 2 MiB pages); reused ones, none.
    assert faults < 50


@glibc
@pytest.mark.parametrize("env", [{"DCNVIZ_KEEP_MEMORY": "0"}, {"MALLOC_TRIM_THRESHOLD_": "131072"}])
def test_opting_out_leaves_malloc_as_it_is(env):
    took, faults = probe(**env)
    assert took == "False"
    assert faults > 200  # the control: glibc maps each block afresh


def test_the_command_sets_it_before_running(monkeypatch):
    import dcnviz.memory
    from dcnviz.cli import run

    calls = []
    monkeypatch.setattr(dcnviz.memory, "keep_freed_memory", lambda: calls.append(True))
    monkeypatch.setattr(sys, "argv", ["dcnviz", "--version"])
    with pytest.raises(SystemExit) as exit_:
        run()
    assert exit_.value.code == 0 and calls == [True]
