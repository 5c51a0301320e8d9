"""A slow network on one machine: a Linux network namespace whose loopback
is shaped by ``tc``'s token bucket filter.

Processes started inside the namespace (``ip netns exec NAME ...``) reach
each other only through its loopback, so every byte ``torch.distributed``
moves between them passes the bucket: a real link of the given rate, not a
simulated delay. The bucket holds 10 ms of traffic (at least 256 KiB, more
than a 9000-byte packet), and the loopback's MTU is 9000 so that a whole
packet fits. Needs root (or ``CAP_NET_ADMIN`` and ``CAP_SYS_ADMIN``) and
iproute2; ``netem`` (added latency) is not used, since not every kernel has it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from types import TracebackType
from typing import Optional

from ..errors import GistError
from ..settings import parse_rate

__all__ = [
    "ShapedNamespace",
    "ShapingUnavailable",
    "burst_bytes",
    "check_can_shape",
    "namespace_pids",
    "remove_orphaned_namespaces",
    "run_ip",
    "tbf_arguments",
]

MIN_BURST_BYTES = 256 * 1024
BURST_SECONDS = 0.01
LOOPBACK_MTU = 9000


class ShapingUnavailable(GistError, RuntimeError):
    """This machine or user cannot make a shaped namespace (the message says what is missing)."""


def check_can_shape() -> None:
    """``ShapingUnavailable`` unless this process can make shaped namespaces."""
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        raise ShapingUnavailable(
            f"a shaped network needs iproute2's {' and '.join(missing)} on PATH (e.g. apt install iproute2)"
        )
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        raise ShapingUnavailable("a shaped network needs root: network namespaces and tc need CAP_SYS_ADMIN")


def run_ip(*argv: str) -> None:
    """``ip *argv``; :class:`ShapingUnavailable` with its last line of output if it fails."""
    result = subprocess.run(["ip", *argv], capture_output=True, text=True)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise ShapingUnavailable(f"`ip {' '.join(argv)}` failed: {detail[-1] if detail else result.returncode}")


def tbf_arguments(bandwidth: str) -> list[str]:
    """``tc qdisc ... root`` arguments of a token bucket of rate ``bandwidth``
    holding :data:`BURST_SECONDS` of traffic (at least :data:`MIN_BURST_BYTES`)."""
    rate_bits = parse_rate(bandwidth)
    return ["tbf", "rate", f"{rate_bits:.0f}bit", "burst", str(burst_bytes(rate_bits)), "latency", "100ms"]


def burst_bytes(rate_bits: float) -> int:
    """The bucket's size at ``rate_bits`` bits per second."""
    return max(MIN_BURST_BYTES, int(rate_bits / 8 * BURST_SECONDS))


def namespace_pids(namespace: str) -> list[int]:
    """The processes running inside network namespace ``namespace``."""
    listed = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True).stdout
    return [int(pid) for pid in listed.split()]


def remove_orphaned_namespaces() -> list[str]:
    """Delete the namespaces of :class:`ShapedNamespace` and of
    :class:`~gist.comm.hosts.VirtualHosts` whose launcher is gone without
    deleting them (killed by SIGKILL or the out-of-memory killer) and in
    which nothing runs any more; return their names."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    removed = []
    for name in (line.split()[0] for line in listed.splitlines() if line.strip()):
        match = ORPHAN_NAME.fullmatch(name)
        if match is None or _alive(int(match["pid"])) or namespace_pids(name):
            continue
        subprocess.run(["ip", "netns", "delete", name], capture_output=True)
        removed.append(name)
    return removed


ORPHAN_NAME = re.compile(r"gist-(?:sw-|h\d+-)?(?P<pid>\d+)-[0-9a-f]{6,8}")
"""The name of a :class:`ShapedNamespace` (``gist-PID-TAG``) or of a virtual
host or its switch (``gist-h0-PID-TAG``, ``gist-sw-PID-TAG``): the pid of the
process that made it, and a random tag."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # (PermissionError: alive, another user's)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


class ShapedNamespace:
    """``with ShapedNamespace("100mbit") as ns: subprocess.run(ns.command([...]))``.

    Makes the namespace on entry and deletes it on exit, whatever happened
    inside (an error, Ctrl-C); processes still running in it are not killed
    by the deletion, so wait for them inside the block. A process killed
    with SIGKILL cannot delete its namespace: the next one made removes it
    (:func:`remove_orphaned_namespaces`)."""

    def __init__(self, bandwidth: str) -> None:
        self.bandwidth = bandwidth
        self.rate_bits = parse_rate(bandwidth)
        self.name = f"gist-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.burst_bytes = burst_bytes(self.rate_bits)
        self.active = False

    def __enter__(self) -> ShapedNamespace:
        check_can_shape()
        remove_orphaned_namespaces()
        run_ip("netns", "add", self.name)
        self.active = True
        try:
            run_ip("-n", self.name, "link", "set", "lo", "up", "mtu", str(LOOPBACK_MTU))
            bucket = tbf_arguments(self.bandwidth)
            run_ip("netns", "exec", self.name, "tc", "qdisc", "add", "dev", "lo", "root", *bucket)
        except BaseException:
            self.close()
            raise
        return self

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the namespace."""
        if not self.active:
            raise RuntimeError("the namespace exists only inside the with block")
        return ["ip", "netns", "exec", self.name, *argv]

    def close(self) -> None:
        """Delete the namespace (idempotent)."""
        if self.active:
            subprocess.run(["ip", "netns", "delete", self.name], capture_output=True)
            self.active = False

    def __exit__(
        self,
        kind: Optional[type[BaseException]],
        value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        self.close()
