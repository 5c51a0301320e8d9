"""Hosts on one machine: ``N`` network namespaces joined by a bridge, each
behind a link of its own that ``tc`` can shape, slow down or cut.

Every host gets its own namespace with a fast loopback (processes on one
host talk through it, as on a real machine) and an interface ``eth0`` with
its own address (``10.231.0.1``, ``10.231.0.2``, ...), the end of a veth pair
whose other end joins a bridge in a namespace of its own (the switch). Traffic
between hosts crosses two veth links (the sender's and the receiver's), and
both directions of each are shaped to the same rate by ``tc``'s token bucket
filter, so a byte from one host to another passes a real link of that rate.
Nothing is created in the machine's own network namespace, so any number of
test beds can exist at once with the same addresses.

The faults a cluster has are methods of the test bed: :meth:`VirtualHosts.set_rate`
(a link that degrades), :meth:`VirtualHosts.cut` and :meth:`VirtualHosts.mend`
(a network partition, the host's processes alive), :meth:`VirtualHosts.kill`
(every process of a host, as when the machine dies). On exit every process
still running in a host is killed before the namespaces go, so nothing
outlives the test bed. Needs root and iproute2,
as :mod:`.netns` does; ``netem`` latency is not used (not every kernel has it).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Optional

from ..settings import parse_rate
from .netns import (
    ShapingUnavailable,
    check_can_shape,
    namespace_pids,
    remove_orphaned_namespaces,
    run_ip,
    tbf_arguments,
)

__all__ = ["HOST_INTERFACE", "ShapingUnavailable", "VirtualHosts"]

HOST_INTERFACE = "eth0"
"""The name of every host's interface to the others."""
SUBNET = "10.231.0"
"""The hosts' /24: host ``i`` is ``SUBNET.(i + 1)``."""
MAX_HOSTS = 200


class VirtualHosts:
    """``with VirtualHosts(2, "1gbit") as bed: subprocess.Popen(bed.command(1, argv))``.

    ``bandwidth`` is the rate of every host's link (``"none"``: unshaped).
    ``private``: folders (existing) that each host sees on a disk of its own,
    as machines that share no file system do: its processes find an empty
    folder there (a tmpfs mounted in their own mount namespace), and what
    they write stays theirs.
    The namespaces are made on entry and removed on exit, whatever happened
    inside, after the processes still running in them are killed; those of
    a test bed whose process was killed are removed by the next one."""

    def __init__(self, hosts: int, bandwidth: str = "none", private: Sequence[str | Path] = ()) -> None:
        if not 1 <= hosts <= MAX_HOSTS:
            raise ValueError(f"hosts must be between 1 and {MAX_HOSTS}, got {hosts}")
        self.hosts = hosts
        self.bandwidth = bandwidth
        tag = f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.switch = f"gist-sw-{tag}"
        self.names = [f"gist-h{i}-{tag}" for i in range(hosts)]
        self.addresses = [f"{SUBNET}.{i + 1}" for i in range(hosts)]
        self.private = [str(Path(folder).absolute()) for folder in private]
        self._made: list[str] = []

    def __enter__(self) -> VirtualHosts:
        check_can_shape()
        remove_orphaned_namespaces()  # of test beds whose launcher was killed
        try:
            self._make()
        except BaseException:
            self.close()
            raise
        return self

    def _make(self) -> None:
        run_ip("netns", "add", self.switch)
        self._made.append(self.switch)
        run_ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        run_ip("-n", self.switch, "link", "set", "br0", "up")
        for i, (name, address) in enumerate(zip(self.names, self.addresses)):
            run_ip("netns", "add", name)
            self._made.append(name)
            port = self._switch_port(i)
            veth = ("type", "veth", "peer", "name", HOST_INTERFACE, "netns", name)
            run_ip("-n", self.switch, "link", "add", port, *veth)
            run_ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
            run_ip("-n", name, "link", "set", "lo", "up")
            run_ip("-n", name, "addr", "add", f"{address}/24", "dev", HOST_INTERFACE)
            run_ip("-n", name, "link", "set", HOST_INTERFACE, "up")
            if self.bandwidth != "none":
                self._shape(i, self.bandwidth, "add")

    @staticmethod
    def _switch_port(host: int) -> str:
        return f"port{host}"

    def _links(self, host: int) -> list[tuple[str, str]]:
        """``(namespace, interface)`` of both ends of ``host``'s link."""
        return [(self.names[host], HOST_INTERFACE), (self.switch, self._switch_port(host))]

    def _shape(self, host: int, bandwidth: str, verb: str) -> None:
        for namespace, interface in self._links(host):
            run_ip("netns", "exec", namespace, "tc", "qdisc", verb, "dev", interface, "root", *tbf_arguments(bandwidth))

    def command(self, host: int, argv: list[str]) -> list[str]:
        """``argv`` run on ``host`` (inside its namespace)."""
        self._check_active()
        inside = ["ip", "netns", "exec", self.names[host]]  # (in a mount namespace of its own)
        if not self.private:
            return [*inside, *argv]
        mounts = " && ".join(f"mount -t tmpfs gist-private {shlex.quote(folder)}" for folder in self.private)
        return [*inside, "sh", "-c", f'{mounts} && exec "$@"', "sh", *argv]

    def set_rate(self, host: int, bandwidth: str) -> None:
        """Shape ``host``'s link (both directions) to ``bandwidth`` from now on
        (``"none"``: unshaped); connections stay open."""
        self._check_active()
        if bandwidth != "none":
            parse_rate(bandwidth)  # a clear error before anything changes
        shaped = (
            "tbf"
            in subprocess.run(
                ["ip", "netns", "exec", self.names[host], "tc", "qdisc", "show", "dev", HOST_INTERFACE],
                capture_output=True,
                text=True,
            ).stdout
        )
        if bandwidth == "none":
            if shaped:
                for namespace, interface in self._links(host):
                    run_ip("netns", "exec", namespace, "tc", "qdisc", "del", "dev", interface, "root")
            return
        self._shape(host, bandwidth, "change" if shaped else "add")

    def cut(self, host: int) -> None:
        """Take ``host``'s link down (a partition: its processes live on, unreachable)."""
        self._check_active()
        run_ip("-n", self.switch, "link", "set", self._switch_port(host), "down")

    def mend(self, host: int) -> None:
        """Bring ``host``'s link back up after :meth:`cut`."""
        self._check_active()
        run_ip("-n", self.switch, "link", "set", self._switch_port(host), "up")

    def traffic(self, host: int) -> dict[str, int]:
        """Bytes that ``host`` has moved so far, as its kernel counted them
        (whole packets: headers, handshakes and heartbeats included):
        ``link_sent`` / ``link_received`` over its link to the other hosts,
        ``loopback`` between its own processes."""
        self._check_active()
        listed = subprocess.run(
            ["ip", "-n", self.names[host], "-s", "-j", "link", "show"], capture_output=True, text=True, check=True
        ).stdout
        stats = {link["ifname"]: link["stats64"] for link in json.loads(listed)}
        return {
            "link_sent": stats[HOST_INTERFACE]["tx"]["bytes"],
            "link_received": stats[HOST_INTERFACE]["rx"]["bytes"],
            "loopback": stats["lo"]["tx"]["bytes"],
        }

    def pids(self, host: int) -> list[int]:
        """The processes running on ``host`` (in its namespace)."""
        self._check_active()
        return namespace_pids(self.names[host])

    def kill(self, host: int, sig: int = signal.SIGKILL) -> list[int]:
        """Send ``sig`` to every process of ``host`` (SIGKILL: the host died) and return their pids."""
        pids = self.pids(host)
        for pid in pids:
            _signal(pid, sig)
        return pids

    def _check_active(self) -> None:
        if not self._made:
            raise RuntimeError("the hosts exist only inside the with block")

    def close(self) -> None:
        """Kill what still runs on the hosts, then remove every namespace made
        (idempotent); the veth pairs go with them."""
        for name in self._made:
            _kill_all(name)
        while self._made:
            subprocess.run(["ip", "netns", "delete", self._made.pop()], capture_output=True)

    def __exit__(
        self,
        kind: Optional[type[BaseException]],
        value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        self.close()


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:  # it ended meanwhile
        pass


KILL_WAIT_S = 5.0
"""How long :meth:`VirtualHosts.close` waits for killed processes to be gone."""


def _kill_all(namespace: str) -> None:
    """SIGKILL every process in ``namespace`` and wait (a bounded time) until none is left."""
    deadline = time.monotonic() + KILL_WAIT_S
    while (pids := namespace_pids(namespace)) and time.monotonic() < deadline:
        for pid in pids:
            _signal(pid, signal.SIGKILL)
        time.sleep(0.05)
