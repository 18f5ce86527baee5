"""Hosts on one machine: a Linux network namespace each, on a bridge, for `loadtest --hosts N`.

Each host is a network namespace of its own (`ip netns add`) with one end of a veth pair inside
(named eth0 there) and the other end on a bridge in the root namespace. The bridge holds the
gateway address: the root namespace as a host on the same private network, where PostgreSQL and
Redis listen while the hosts exist (devservers.also_listening_on) and where k6 reaches each host's
gunicorn. One bridge, so the servers listen on one address, whatever the number of hosts:

    10.231.<k>.1    the root namespace (PostgreSQL, Redis, k6), on the bridge <prefix>br
    10.231.<k>.11   host 1, namespace <prefix>-h1 (veth <prefix>h1 to the bridge)
    10.231.<k>.12   host 2, ...

The names and <k> come from this checkout's PostgreSQL port (SHOP_PG_PORT), so two checkouts on
one machine make different ones; a /24 already used by some other interface is refused. What is
made is removed on the way out whatever happens (every process inside killed first), and a
leftover of this checkout's from a crashed run is removed before anything is made.

Needs root and iproute2's `ip`; where either is missing, or `ip netns add` fails (a container
without the privilege), NamespacesUnavailable says which. After a run killed before it could clean
up (SIGKILL), `python -m devtools.netns clean` removes what it left; the next run does too.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

from config.local import PG_PORT

PREFIX = f"shop{PG_PORT}"  # interface names: at most 15 characters (shop54341h12 is 12)
BRIDGE = f"{PREFIX}br"
NETWORK = ipaddress.ip_network(f"10.231.{PG_PORT % 256}.0/24")
GATEWAY = str(NETWORK[1])
FIRST_HOST = 11  # host n at .(10 + n)
MAX_HOSTS = 200
KILL_TIMEOUT_S = 10.0


class NamespacesUnavailable(RuntimeError):
    """Network namespaces cannot be made here; the message says why."""


@dataclass(frozen=True)
class Namespace:
    number: int  # 1, 2, ...
    name: str  # as `ip netns` knows it
    address: str  # its own address on the bridge

    @property
    def exec_prefix(self) -> list[str]:
        """Put before a command to run it inside this namespace (`ip netns exec` execs it: same pid)."""
        return ["ip", "netns", "exec", self.name]


@dataclass(frozen=True)
class Network:
    gateway: str  # the root namespace's address on the bridge
    network: str  # the private /24, as CIDR
    namespaces: tuple[Namespace, ...]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def unavailable_reason() -> str | None:
    """Why namespaces cannot be made here, or None when they may (`ip netns add` may still fail)."""
    if not hasattr(os, "geteuid") or not os.path.isdir("/proc/self/ns"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "making network namespaces needs root (`ip netns add`); this process runs as uid " + str(os.geteuid())
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2) on PATH"
    return None


def namespace_name(number: int) -> str:
    return f"{PREFIX}-h{number}"


def pids(name: str) -> list[int]:
    """Every process in namespace `name` (none if it does not exist)."""
    found = _ip("netns", "pids", name, check=False)
    return [int(pid) for pid in found.stdout.split()] if found.returncode == 0 else []


def kill_all(name: str, *, timeout: float = KILL_TIMEOUT_S) -> list[int]:
    """SIGKILL every process in namespace `name`, again until none is left (one may fork between
    the listing and the kill: gunicorn's master replacing a worker); returns the pids killed."""
    killed: list[int] = []
    deadline = time.monotonic() + timeout
    while found := pids(name):
        for pid in found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        killed += [pid for pid in found if pid not in killed]
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes still alive in namespace {name} after {timeout:.0f} s: {found}")
        time.sleep(0.05)
    return killed


def ours() -> list[str]:
    """This checkout's namespaces, from `ip netns list` ("name (id: 3)" lines)."""
    listed = _ip("netns", "list", check=False).stdout.splitlines()
    return [line.split()[0] for line in listed if line.split() and line.split()[0].startswith(f"{PREFIX}-h")]


def clean() -> None:
    """Remove whatever this checkout's hosts left: the processes in each namespace, the
    namespaces (their veth ends go with them, and so the root ends) and the bridge."""
    for name in ours():
        kill_all(name)
        _ip("netns", "del", name, check=False)
    if _ip("link", "show", BRIDGE, check=False).returncode == 0:
        _ip("link", "del", BRIDGE)


def _refuse_a_network_in_use() -> None:
    """Another interface (another checkout's bridge, a VPN) on our /24 would make routing ambiguous."""
    for line in _ip("-o", "-4", "addr", "show").stdout.splitlines():
        device, address = line.split()[1], line.split()[3]
        if device != BRIDGE and ipaddress.ip_interface(address).network.overlaps(NETWORK):
            raise NamespacesUnavailable(f"{NETWORK} is in use by {device} ({address}); this checkout's hosts need it")


def _make(count: int) -> Network:
    _refuse_a_network_in_use()
    try:
        _ip("netns", "add", namespace_name(1))
    except subprocess.CalledProcessError as exc:
        raise NamespacesUnavailable(f"`ip netns add` failed: {exc.stderr.strip() or exc.returncode}") from None
    _ip("link", "add", BRIDGE, "type", "bridge")
    _ip("addr", "add", f"{GATEWAY}/{NETWORK.prefixlen}", "dev", BRIDGE)
    _ip("link", "set", BRIDGE, "up")
    namespaces = []
    for number in range(1, count + 1):
        name, address = namespace_name(number), str(NETWORK[FIRST_HOST - 1 + number])
        if number > 1:
            _ip("netns", "add", name)
        veth = f"{PREFIX}h{number}"
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", name)
        _ip("link", "set", veth, "master", BRIDGE)
        _ip("link", "set", veth, "up")
        _ip("-n", name, "addr", "add", f"{address}/{NETWORK.prefixlen}", "dev", "eth0")
        _ip("-n", name, "link", "set", "eth0", "up")
        _ip("-n", name, "link", "set", "lo", "up")
        namespaces.append(Namespace(number, name, address))
    return Network(gateway=GATEWAY, network=str(NETWORK), namespaces=tuple(namespaces))


@contextlib.contextmanager
def network(count: int) -> Iterator[Network]:
    """`count` namespaces on the bridge, removed on the way out whatever happens (a leftover of
    an earlier run first). Raises NamespacesUnavailable where they cannot be made."""
    if not 1 <= count <= MAX_HOSTS:
        raise ValueError(f"between 1 and {MAX_HOSTS} hosts, not {count}")
    reason = unavailable_reason()
    if reason:
        raise NamespacesUnavailable(reason)
    clean()
    try:
        yield _make(count)
    finally:
        clean()


def main(argv: list[str]) -> int:
    """`python -m devtools.netns list|clean`: after a run that was killed before it could clean up."""
    command = argv[1] if len(argv) > 1 else "list"
    if command == "clean":
        clean()
    elif command != "list":
        print("python -m devtools.netns list|clean")
        return 2
    print("\n".join(ours()) or f"no namespaces of this checkout ({PREFIX}-h<n>)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
