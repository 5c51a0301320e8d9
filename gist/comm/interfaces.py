"""Which network interface a rank of a job that spans hosts talks through.

gloo binds the address this host's name resolves to, and falls back to the
loopback address without a word where that is one (``127.0.1.1 myhost`` in
``/etc/hosts`` is common): its peers on other hosts then cannot reach it and
the first collective waits for ever. :func:`bind_gloo_interface` chooses the
interface that reaches rank 0's host (``MASTER_ADDR``) instead, unless the user
chose one (``GLOO_SOCKET_IFNAME``), and :func:`check_master_address` names the
torchrun set-up that hands ranks on other hosts a loopback ``MASTER_ADDR``.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from typing import Optional

from ..errors import ConfigError

__all__ = ["GLOO_INTERFACE_ENV", "bind_gloo_interface", "check_master_address", "interface_towards", "spans_hosts"]

GLOO_INTERFACE_ENV = "GLOO_SOCKET_IFNAME"
SIOCGIFADDR = 0x8915
"""Linux's ioctl for an interface's IPv4 address."""


def spans_hosts() -> bool:
    """Whether this torchrun job has ranks on other hosts (``WORLD_SIZE`` > ``LOCAL_WORLD_SIZE``)."""
    world, local = os.environ.get("WORLD_SIZE"), os.environ.get("LOCAL_WORLD_SIZE")
    return world is not None and local is not None and int(world) > int(local)


def _is_loopback(host: str) -> bool:
    try:
        return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None))
    except (socket.gaierror, ValueError):
        return False


def check_master_address() -> None:
    """:class:`~gist.errors.ConfigError` where the job spans hosts but
    ``MASTER_ADDR`` is a loopback address, which ranks on other hosts cannot
    reach (torchrun's agent reports its host's name, and where that resolves
    to a loopback address every rank is told to meet at ``localhost``)."""
    master = os.environ.get("MASTER_ADDR", "")
    if spans_hosts() and _is_loopback(master):
        raise ConfigError(
            f"this job spans hosts (WORLD_SIZE {os.environ['WORLD_SIZE']}, LOCAL_WORLD_SIZE "
            f"{os.environ['LOCAL_WORLD_SIZE']}) but rank 0 is said to be at {master!r}, a loopback address the "
            f"other hosts cannot reach: this host's name resolves to a loopback address, so pass torchrun "
            f"--local-addr <this host's address> on every host (or fix its entry in /etc/hosts)"
        )


def interface_towards(address: str) -> Optional[str]:
    """The name of this host's interface whose IPv4 address the kernel would
    send from to reach ``address`` (``None`` where it cannot tell: not Linux,
    or no interface holds that address)."""
    try:
        import fcntl
    except ImportError:  # not a POSIX system
        return None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((address, 9))  # a UDP connect sends nothing; it only picks the route
        except OSError as exc:
            raise ConfigError(
                f"rank 0's host {address} (MASTER_ADDR) cannot be reached from this host: {exc.strerror or exc}"
            ) from exc
        source = probe.getsockname()[0]
        for _, name in socket.if_nameindex():
            request = struct.pack("256s", name.encode()[:15])
            try:
                answer = fcntl.ioctl(probe.fileno(), SIOCGIFADDR, request)
            except OSError:  # no IPv4 address on this interface
                continue
            if socket.inet_ntoa(answer[20:24]) == source:
                return name
    return None


def bind_gloo_interface() -> Optional[str]:
    """In a job that spans hosts, set ``GLOO_SOCKET_IFNAME`` (if unset) to the
    interface that reaches ``MASTER_ADDR``, and return the interface gloo
    will bind (``None``: gloo's own choice, on one host or where it was set)."""
    chosen = os.environ.get(GLOO_INTERFACE_ENV)
    if chosen or not spans_hosts():
        return chosen or None
    master = os.environ["MASTER_ADDR"]
    try:
        address = socket.gethostbyname(master)
    except socket.gaierror as exc:
        raise ConfigError(f"rank 0's host {master!r} (MASTER_ADDR) does not resolve: {exc.strerror}") from exc
    name = interface_towards(address)
    if name is None:
        raise ConfigError(
            f"cannot tell which network interface reaches rank 0's host {master} (MASTER_ADDR): set "
            f"{GLOO_INTERFACE_ENV} to the interface the hosts share (see `ip addr`)"
        )
    os.environ[GLOO_INTERFACE_ENV] = name
    return name
