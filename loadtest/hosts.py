"""Several web hosts on one machine, for real: `loadtest --hosts N` and the tests that kill one.

Each host is a network namespace of its own (devtools/netns.py) running what a web host of a
deployment runs: gunicorn (config/gunicorn.conf.py, bound to the host's own address) and its
settlers (`manage.py settle_payments`). All of them use ONE PostgreSQL and ONE Redis, the
project's own in the root namespace, reached over the private network at the gateway address,
as other hosts would reach a database server: DATABASE_URL and REDIS_URL name that address,
passwords as on loopback. k6 and the runner stay in the root namespace.

How the servers become reachable: while the hosts' network exists they also listen on the
gateway address (devservers.also_listening_on: both restarted, there and back), PostgreSQL
letting the private /24 in with its password. Not a forwarder: a process copying every byte
between the hosts and the servers would add its own CPU to every order, the figure a run with
several hosts is there to measure. Nothing listens on 0.0.0.0 or on a public interface.

The hosts share the Prometheus directory (a shared filesystem here, unlike real hosts), so one
host's /metrics counts every host's orders: what a metrics system adding the hosts up would show.
"""

from __future__ import annotations

import contextlib
import functools
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings
from django.db import connections

from config import web_server
from config.local import current_database_url
from devtools import devservers, netns
from inventory import redis_counts
from inventory.reconciliation import inventory_reconcile
from loadtest import async_run, server


@dataclass
class Host:
    """One host: its namespace, its gunicorn's URL and the processes started in it, with the
    environment and the log folder they were started with (to start them again)."""

    namespace: netns.Namespace
    base_url: str
    gunicorn: subprocess.Popen
    settlers: list[subprocess.Popen] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    log_dir: Path | None = None

    @property
    def name(self) -> str:
        return f"h{self.namespace.number}"

    def start_settler(self, index: int) -> subprocess.Popen:
        return _settler(self.namespace, index, env=self.env, log_dir=self.log_dir)

    def restart_settler(self, dead: subprocess.Popen) -> subprocess.Popen:
        """One of this host's settlers that died, started again in its place."""
        index = next(i for i, settler in enumerate(self.settlers) if settler is dead)
        self.settlers[index] = self.start_settler(index + 1)
        return self.settlers[index]

    def start_again(self) -> None:
        """After kill(): gunicorn and as many settlers as before, as the host booting; returns
        once gunicorn answers /healthz."""
        self.gunicorn = _gunicorn(self.namespace, env=self.env, log_dir=self.log_dir)
        self.settlers = [self.start_settler(index) for index in range(1, len(self.settlers) + 1)]
        server.wait_until_healthy(self.base_url, self.gunicorn)

    def kill(self) -> list[int]:
        """The host dies whole, no goodbye: SIGKILL to every process in its namespace (gunicorn's
        master and workers, the settlers, any child), as a machine losing power. Returns the pids."""
        killed = netns.kill_all(self.namespace.name)
        for process in [self.gunicorn, *self.settlers]:
            process.wait()
        return killed


def _at(url: str, host: str) -> str:
    """`url` with its host replaced by `host` (user, password, port, path kept)."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo + '@' if userinfo else ''}{host}{f':{parts.port}' if parts.port else ''}"
    return urlunsplit(parts._replace(netloc=netloc))


@functools.cache
def metrics_token() -> str:
    """The token the hosts' /metrics want (METRICS_TOKEN, else one made for this process): the
    runner scrapes them from the gateway address, which is not their loopback."""
    return settings.METRICS_TOKEN or secrets.token_urlsafe(32)


def host_environment(
    made: netns.Network, namespace: netns.Namespace, *, strategy: str, port: int, extra_env: dict[str, str] | None
) -> dict[str, str]:
    """server_environment's, with the database and Redis at the gateway and gunicorn on the host's own address."""
    env = server.server_environment(strategy=strategy)
    env.update(
        DATABASE_URL=_at(current_database_url(), made.gateway),
        REDIS_URL=_at(settings.REDIS_URL, made.gateway),
        BIND=f"{namespace.address}:{port}",
        METRICS_TOKEN=metrics_token(),
        ALLOWED_HOSTS=",".join([*settings.ALLOWED_HOSTS, namespace.address]),  # k6 asks for it by address
        **(extra_env or {}),
    )
    return env


def _cut_own_connections() -> None:
    """Before the servers restart: this process's connections would be cut under it."""
    connections.close_all()
    redis_counts.redis_client().connection_pool.disconnect()


@contextlib.contextmanager
def network(count: int) -> Iterator[netns.Network]:
    """`count` namespaces on the bridge, PostgreSQL and Redis listening on its gateway address too,
    and stock loaded again in the restarted Redis (reconciliation, as after any Redis restart).
    Everything undone on the way out, whatever happens: the servers back to loopback alone (and
    restarted again: a check after that needs reconciliation first), the namespaces removed.
    Raises NamespacesUnavailable (with the reason) where namespaces cannot be made."""
    with netns.network(count) as made:
        _cut_own_connections()
        try:
            with devservers.also_listening_on(made.gateway, network=made.network):
                inventory_reconcile()
                try:
                    yield made
                finally:
                    _cut_own_connections()
        finally:
            _cut_own_connections()  # what the restart back left stale


def _start(namespace: netns.Namespace, command: list[str], *, env: dict[str, str], log) -> subprocess.Popen:
    """In its own session, as the runner starts its processes (a Ctrl-C reaches k6, not it)."""
    return subprocess.Popen(
        [*namespace.exec_prefix, *command],
        cwd=settings.BASE_DIR,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _gunicorn(namespace: netns.Namespace, *, env: dict[str, str], log_dir: Path) -> subprocess.Popen:
    """gunicorn in the namespace, on the host's address (env's BIND), appending to gunicorn-h<n>.log."""
    with (log_dir / f"gunicorn-h{namespace.number}.log").open("ab") as log:
        return _start(namespace, web_server.command(env["BIND"]), env=env, log=log)


def _settler(namespace: netns.Namespace, index: int, *, env: dict[str, str], log_dir: Path) -> subprocess.Popen:
    """Settler number `index` (1-based) in the namespace, appending to settler-h<n>-<index>.log."""
    with (log_dir / f"settler-h{namespace.number}-{index}.log").open("ab") as log:
        return _start(namespace, async_run.settler_command(), env=env, log=log)


@contextlib.contextmanager
def serving(
    made: netns.Network,
    *,
    count: int,
    strategy: str,
    port: int,
    log_dir: Path,
    settlers_each: int = 1,
    extra_env: dict[str, str] | None = None,
    extra_env_by_host: dict[int, dict[str, str]] | None = None,
) -> Iterator[list[Host]]:
    """gunicorn and `settlers_each` settlers in each of the first `count` namespaces of `made`,
    each gunicorn answering /healthz before this yields; logs gunicorn-h<n>.log and
    settler-h<n>-<i>.log in `log_dir`. `extra_env` goes to every host's processes,
    `extra_env_by_host` {host number: ...} to one host's (a crash drill's hooks). On the way out,
    whatever happens: SIGTERM to all (a settler finishes its batch), SIGKILL after the timeout,
    then SIGKILL to anything still in a namespace."""
    if count > len(made.namespaces):
        raise ValueError(f"{count} hosts asked for, {len(made.namespaces)} namespaces made")
    shutil.rmtree(server.metrics_dir(), ignore_errors=True)  # this run's counts only, every host's
    server.metrics_dir().mkdir(parents=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    hosts: list[Host] = []
    try:
        for namespace in made.namespaces[:count]:
            extra = {**(extra_env or {}), **(extra_env_by_host or {}).get(namespace.number, {})}
            env = host_environment(made, namespace, strategy=strategy, port=port, extra_env=extra)
            host = Host(namespace, f"http://{namespace.address}:{port}",
                        _gunicorn(namespace, env=env, log_dir=log_dir), env=env, log_dir=log_dir)  # fmt: skip
            hosts.append(host)
            host.settlers = [host.start_settler(index) for index in range(1, settlers_each + 1)]
        for host in hosts:
            server.wait_until_healthy(host.base_url, host.gunicorn)
        yield hosts
    finally:
        # The processes each host holds now: a host started again (chaos' host-kill) holds its new ones.
        server.stop_all([p for host in hosts for p in [host.gunicorn, *host.settlers]],
                        timeout=async_run.SETTLER_STOP_TIMEOUT_S)  # fmt: skip
        for namespace in made.namespaces[:count]:
            netns.kill_all(namespace.name)
