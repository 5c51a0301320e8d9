"""gist.host_memory: freed buffers go back to the system (in a process of its own: the setting is process-wide)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = """
import sys, psutil, torch
from gist.host_memory import release_freed_memory
if sys.argv[1] != "default":
    assert release_freed_memory() == (sys.argv[1] == "release")
rss = psutil.Process().memory_info
x = torch.ones(1 << 21); del x  # 8 MiB: glibc maps it, and on free raises its threshold above it
before = rss().rss
x = torch.ones(1 << 21); del x  # the same size again: from the heap, which keeps it
print((rss().rss - before) / 2**20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_a_freed_buffer_is_returned_to_the_system():
    def kept_mib(how: str) -> float:
        env = {**os.environ, "GIST_KEEP_FREED_MEMORY": "1" if how == "switched off" else "0"}
        probe = subprocess.run([sys.executable, "-c", PROBE, how], capture_output=True, text=True, check=True, env=env)
        return float(probe.stdout)

    kept = {how: kept_mib(how) for how in ("default", "release", "switched off")}
    assert kept["default"] > 6, kept  # glibc's default keeps the 8 MiB (else this test shows nothing)
    assert kept["release"] < 1, kept
    assert kept["switched off"] > 6, kept  # GIST_KEEP_FREED_MEMORY=1: glibc's default stays
