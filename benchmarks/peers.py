"""ktasks against the peers: the same tasks through ktasks, a bare kafka-python loop, Celery and Dramatiq.

Not a test. One command runs every system in turn on this machine and
(with ``--write``) puts one table into docs/performance.md::

    python -m benchmarks.peers --n 5000 --write docs/performance.md

Systems (each with two worker processes, or one parent and two children):

* ktasks: ``ktasks worker -c 2 --loglevel WARNING``, ledger on;
* bare kafka-python: two processes of a consume, run, commit loop
  (:mod:`benchmarks.peerapps.bare`), the ceiling for this client;
* Celery 5 on Redis: ``celery worker -P prefork -c 2``;
* Celery on kombu's Kafka transport (``confluentkafka://``, needs confluent-kafka);
* Dramatiq on Redis: ``dramatiq --processes 2 --threads 1``.

Every system runs the same task body (:mod:`benchmarks.peerapps.record`),
which appends a fixed-size record to a file: completions are counted, and
latencies read, the same way everywhere. Per system:

1. enqueue ``--n`` no-op tasks from this process (timed: enqueue throughput),
2. start the worker and time until the last completion (drain throughput,
   from the worker's start, so start-up counts; the rate between the first
   and the last completion is reported too),
3. with the worker running, enqueue no-op tasks at ``--rate`` per second for
   ``--seconds`` and read each task's enqueue-to-start latency,
4. stop it; enqueue ``--io-n`` tasks that sleep 10 ms, start a fresh worker
   and time the drain again.

The worker's memory is the peak over the run of the summed RSS (and PSS) of
its whole process tree, sampled from /proc. Redis runs as a throwaway
``redis-server`` on a free loopback port; Kafka is ``--bootstrap``, else
``KTASKS_BOOTSTRAP_SERVERS``, else a dev broker started for the run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.peerapps import procs, record
from benchmarks.report import crc_in_use, write_section

SECTION = "Against the peers"
ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
BIN = Path(sys.executable).parent
TASK = "bench.work"


# -- results --------------------------------------------------------------------------------
@dataclass
class Drain:
    """One drain: ``n`` tasks enqueued beforehand, timed from the worker's start."""

    n: int
    done: int = 0
    seconds: float | None = None           # worker start -> last completion
    startup_s: float | None = None         # worker start -> first completion
    steady_rate: float | None = None       # first -> last completion

    @property
    def rate(self) -> float | None:
        return self.n / self.seconds if self.seconds else None


@dataclass
class SystemResult:
    """Everything measured for one system (``error`` set when it could not run or finish)."""

    key: str
    label: str
    error: str | None = None
    enqueue_rate: float | None = None
    noop: Drain | None = None
    io: Drain | None = None
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    latency_n: int = 0
    rss_mb: float | None = None
    pss_mb: float | None = None
    notes: list[str] = field(default_factory=list)


class RunError(RuntimeError):
    """A system failed in a way that goes into the table as its reason."""


# -- systems ------------------------------------------------------------------------------
class System:
    """One system under test: how to enqueue, and how to start its workers."""

    key = ""
    label = ""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.queue = ""

    def unavailable(self) -> str | None:
        """Why this system cannot run here (checked before anything starts), or None."""
        return None

    def new_queue(self, workload: str) -> None:
        """Fresh topic/queue (and group) names for a workload."""
        self.queue = f"bench-{self.key}-{workload}-{uuid.uuid4().hex[:8]}"

    def open_sender(self) -> tuple[Callable[[float, float], object], Callable[[], object], Callable[[], object]]:
        """``(send(enqueued_at, sleep_s), flush(), close())`` for the current queue."""
        raise NotImplementedError

    def start(self, out: Path, log: Path) -> list[subprocess.Popen[bytes]]:
        """Start the worker processes; their task records go to ``out``."""
        raise NotImplementedError

    def env(self, out: Path) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
        env["BENCH_OUT"] = str(out)
        env["BENCH_QUEUE"] = self.queue
        return env

    def spawn(self, cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "ab") as f:
            return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)


class KtasksSystem(System):
    key = "ktasks"
    label = "ktasks (`-c 2`, ledger on)"

    def _settings(self) -> dict[str, Any]:
        return {"bootstrap_servers": self.ctx.bootstrap, "default_topic": self.queue,
                "group_id": self.queue + "-group", "partitions": 2}

    def open_sender(self) -> tuple[Callable[[float, float], object], Callable[[], object], Callable[[], object]]:
        from ktasks import App

        app = App("benchpeers", **self._settings())
        app.ensure_topics([self.queue], partitions=2)
        app.producer.get()

        def send(enqueued_at: float, sleep_s: float) -> object:
            return app.send_task(TASK, (enqueued_at, sleep_s))

        return send, app.flush, app.close

    def start(self, out: Path, log: Path) -> list[subprocess.Popen[bytes]]:
        env = self.env(out)
        s = self._settings()
        env.update(KTASKS_BOOTSTRAP_SERVERS=s["bootstrap_servers"], KTASKS_DEFAULT_TOPIC=s["default_topic"],
                   KTASKS_GROUP_ID=s["group_id"], KTASKS_PARTITIONS="2",
                   KTASKS_LEDGER_PATH=str(self.ctx.tmp / f"{self.queue}.ledger.sqlite3"))
        env.pop("KTASKS_FAULTS", None)
        return [self.spawn([str(BIN / "ktasks"), "worker", "-A", "benchmarks.peerapps.ktasks_app:app", "-c", "2",
                            "--loglevel", "WARNING"], env, log)]


class BareSystem(System):
    key = "bare"
    label = "bare kafka-python loop (2 processes)"

    def open_sender(self) -> tuple[Callable[[float, float], object], Callable[[], object], Callable[[], object]]:
        from kafka import KafkaProducer

        from ktasks import App
        from ktasks.message import Message, encode, headers_of

        app = App("benchpeers", bootstrap_servers=self.ctx.bootstrap, partitions=2)
        app.ensure_topics([self.queue], partitions=2)
        producer = KafkaProducer(**app.producer.config())   # the settings ktasks' producer uses
        app.close()
        topic = self.queue

        def send(enqueued_at: float, sleep_s: float) -> object:
            message = Message(task=TASK, args=[enqueued_at, sleep_s])
            return producer.send(topic, value=encode(message), headers=headers_of(message))

        return send, producer.flush, producer.close

    def start(self, out: Path, log: Path) -> list[subprocess.Popen[bytes]]:
        env = self.env(out)
        cmd = [PYTHON, "-m", "benchmarks.peerapps.bare", "--bootstrap", self.ctx.bootstrap, "--topic", self.queue,
               "--group", self.queue + "-group"]
        return [self.spawn(cmd, env, log), self.spawn(cmd, env, log)]


class CelerySystem(System):
    key = "celery-redis"
    label = "Celery + Redis (prefork `-c 2`)"

    def broker_url(self) -> str:
        assert self.ctx.redis is not None
        return self.ctx.redis.url

    def unavailable(self) -> str | None:
        return self.ctx.redis_missing

    def open_sender(self) -> tuple[Callable[[float, float], object], Callable[[], object], Callable[[], object]]:
        from benchmarks.peerapps.celery_app import make_app

        app = make_app(self.broker_url(), self.queue)
        app.connection_for_write().ensure_connection(max_retries=3)
        producer_pool = app.producer_pool
        prod = producer_pool.acquire(block=True)
        queue = self.queue

        def send(enqueued_at: float, sleep_s: float) -> object:
            return app.send_task(TASK, args=(enqueued_at, sleep_s), queue=queue, producer=prod)

        def close() -> None:
            prod.release()
            app.close()

        return send, lambda: None, close

    def start(self, out: Path, log: Path) -> list[subprocess.Popen[bytes]]:
        env = self.env(out)
        env["BENCH_BROKER_URL"] = self.broker_url()
        return [self.spawn([str(BIN / "celery"), "-A", "benchmarks.peerapps.celery_app", "worker", "-P", "prefork",
                            "-c", "2", "--loglevel", "WARNING", "--without-gossip", "--without-mingle",
                            "--without-heartbeat", "-Q", self.queue, "-n", f"{self.queue}@%h"], env, log)]


class CeleryKafkaSystem(CelerySystem):
    key = "celery-kafka"
    label = "Celery + kombu Kafka transport (prefork `-c 2`)"

    def broker_url(self) -> str:
        return f"confluentkafka://{self.ctx.bootstrap}"

    def unavailable(self) -> str | None:
        try:
            import confluent_kafka  # noqa: F401
        except ImportError as exc:
            return f"confluent-kafka is not importable ({exc}); kombu's Kafka transport needs it"
        return None


class DramatiqSystem(System):
    key = "dramatiq-redis"
    label = "Dramatiq + Redis (2 processes × 1 thread)"

    def unavailable(self) -> str | None:
        return self.ctx.redis_missing

    def open_sender(self) -> tuple[Callable[[float, float], object], Callable[[], object], Callable[[], object]]:
        import dramatiq
        from dramatiq.brokers.redis import RedisBroker

        assert self.ctx.redis is not None
        broker = RedisBroker(url=self.ctx.redis.url)
        broker.declare_queue(self.queue)
        queue = self.queue

        def send(enqueued_at: float, sleep_s: float) -> object:
            return broker.enqueue(dramatiq.Message(queue_name=queue, actor_name="bench_work",
                                                   args=(enqueued_at, sleep_s), kwargs={}, options={}))

        return send, lambda: None, broker.close

    def start(self, out: Path, log: Path) -> list[subprocess.Popen[bytes]]:
        env = self.env(out)
        assert self.ctx.redis is not None
        env["BENCH_REDIS_URL"] = self.ctx.redis.url
        return [self.spawn([str(BIN / "dramatiq"), "benchmarks.peerapps.dramatiq_app", "--processes", "2",
                            "--threads", "1", "--queues", self.queue], env, log)]


SYSTEMS: list[type[System]] = [KtasksSystem, BareSystem, CelerySystem, CeleryKafkaSystem, DramatiqSystem]


# -- the run --------------------------------------------------------------------------------
@dataclass
class Context:
    bootstrap: str
    tmp: Path
    n: int
    io_n: int
    rate: int
    seconds: float
    phase_timeout_s: float
    redis: procs.RedisServer | None = None
    redis_missing: str | None = None
    broker_note: str = ""


def _wait_count(out: Path, target: int, workers: list[subprocess.Popen[bytes]], timeout_s: float,
                log: Path) -> int:
    deadline = time.monotonic() + timeout_s
    while True:
        done = record.count(out)
        if done >= target:
            return done
        dead = [w for w in workers if w.poll() is not None]
        if dead:
            raise RunError(f"worker exited with code {dead[0].returncode} after {done} of {target} tasks: "
                           + _tail(log))
        if time.monotonic() > deadline:
            return done
        time.sleep(0.01)


def _tail(log: Path, lines: int = 3) -> str:
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " / ".join(line.strip() for line in text[-lines:]) or "(empty log)"


def _drain(system: System, ctx: Context, n: int, sleep_s: float, sampler: procs.MemorySampler, result: SystemResult,
           timed_enqueue: bool, latency: bool) -> Drain:
    workload = "io" if sleep_s else "noop"
    system.new_queue(workload)
    out = ctx.tmp / f"{system.key}-{workload}.records"
    log = ctx.tmp / f"{system.key}-{workload}.log"
    out.unlink(missing_ok=True)
    send, flush, close = system.open_sender()
    try:
        t0 = time.perf_counter()
        now = time.time()
        for _ in range(n):
            send(now, sleep_s)
        flush()
        if timed_enqueue:
            result.enqueue_rate = n / (time.perf_counter() - t0)
        drain = Drain(n)
        started = time.time()
        workers = system.start(out, log)
        sampler.watch(w.pid for w in workers)
        try:
            drain.done = _wait_count(out, n, workers, ctx.phase_timeout_s, log)
            if drain.done < n:
                raise RunError(f"{workload} drain did not finish: {drain.done} of {n} tasks in "
                               f"{ctx.phase_timeout_s:.0f} s; " + _tail(log))
            ends = sorted(t for _, t in record.read(out)[:n])
            drain.seconds = ends[-1] - started
            drain.startup_s = ends[0] - started
            if ends[-1] > ends[0]:
                drain.steady_rate = (n - 1) / (ends[-1] - ends[0])
            if latency:
                _latency(send, flush, out, n, workers, ctx, result, log)
        finally:
            codes = [procs.stop_process(w, 60) for w in workers]
            sampler.watch([])
            if any(c not in (0, None) for c in codes):
                result.notes.append(f"{workload} worker exit codes {codes}")
    finally:
        close()
    return drain


def _latency(send: Callable[[float, float], object], flush: Callable[[], object], out: Path, base: int,
             workers: list[subprocess.Popen[bytes]], ctx: Context, result: SystemResult, log: Path) -> None:
    total = int(ctx.rate * ctx.seconds)
    start = time.perf_counter()
    for i in range(total):
        delay = start + i / ctx.rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        send(time.time(), 0.0)
    flush()
    done = _wait_count(out, base + total, workers, 60, log)
    lat = sorted(x for x, _ in record.read(out, base))
    result.latency_n = len(lat)
    if done < base + total or not lat:
        raise RunError(f"latency: only {done - base} of {total} tasks completed in 60 s")
    result.latency_p50_ms = statistics.median(lat) * 1000
    result.latency_p99_ms = lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))] * 1000


def run_system(cls: type[System], ctx: Context) -> SystemResult:
    system = cls(ctx)
    result = SystemResult(system.key, system.label)
    reason = system.unavailable()
    if reason:
        result.error = f"not run: {reason}; `make peers-deps` installs the peers"
        return result
    if ctx.redis is not None:
        ctx.redis.flush()
    sampler = procs.MemorySampler()
    sampler.start()
    try:
        print(f"[{system.key}] no-op: enqueue {ctx.n}, drain, latency at {ctx.rate}/s", flush=True)
        result.noop = _drain(system, ctx, ctx.n, 0.0, sampler, result, timed_enqueue=True, latency=True)
        print(f"[{system.key}] 10 ms: enqueue {ctx.io_n}, drain", flush=True)
        result.io = _drain(system, ctx, ctx.io_n, 0.01, sampler, result, timed_enqueue=False, latency=False)
    except RunError as exc:
        result.error = f"failed: {exc}"
    except Exception as exc:
        result.error = f"failed: {type(exc).__name__}: {exc}"
    finally:
        sampler.stop()
        if sampler.samples:
            result.rss_mb = sampler.peak_rss / 2**20
            result.pss_mb = sampler.peak_pss / 2**20
    print(f"[{system.key}] {summary(result)}", flush=True)
    return result


def summary(r: SystemResult) -> str:
    if r.error:
        return r.error
    assert r.noop and r.io
    return (f"enqueue {r.enqueue_rate:,.0f}/s, no-op drain {r.noop.rate:,.0f}/s (steady {r.noop.steady_rate or 0:,.0f}/s,"
            f" first after {r.noop.startup_s:.2f} s), 10 ms drain {r.io.rate:,.0f}/s, latency p50 "
            f"{r.latency_p50_ms:.1f} ms p99 {r.latency_p99_ms:.1f} ms, RSS {r.rss_mb:.0f} MB (PSS {r.pss_mb:.0f} MB)")


# -- environment --------------------------------------------------------------------------------
@contextlib.contextmanager
def kafka(bootstrap: str | None, tmp: Path) -> Iterator[tuple[str, str]]:
    """``(bootstrap, description)``: the given broker, or a dev broker started for the run."""
    given = bootstrap or os.environ.get("KTASKS_BOOTSTRAP_SERVERS")
    if given:
        yield given, f"external broker at {given}"
        return
    from ktasks.dev import KAFKA_VERSION, DevBroker, free_port

    broker = DevBroker(port=free_port(), state_dir=tmp / "kafka")
    print(f"starting a Kafka {KAFKA_VERSION} dev broker for the run...", flush=True)
    broker.up(timeout_s=180)
    try:
        yield broker.bootstrap, f"Apache Kafka {KAFKA_VERSION} dev broker started for the run (`ktasks.dev`)"
    finally:
        broker.down(wipe=True)


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gb = 0.0
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gb = int(line.split()[1]) / 2**20
    return f"{os.cpu_count()} cores ({cpu}), {mem_gb:.0f} GiB RAM, {platform.system()} {platform.release()}"


def versions(ctx: Context) -> str:
    librdkafka = ""
    with contextlib.suppress(ImportError):
        import confluent_kafka

        librdkafka = f" (librdkafka {confluent_kafka.libversion()[0]})"
    redis_server = ctx.redis.version if ctx.redis is not None else "not available"
    from ktasks.dev import KAFKA_VERSION

    return (f"Python {platform.python_version()}, ktasks {_version('ktasks')}, kafka-python {_version('kafka-python')} "
            f"({crc_in_use()}, ktasks and the bare loop), "
            f"Kafka broker {KAFKA_VERSION}, celery {_version('celery')}, kombu {_version('kombu')}, "
            f"confluent-kafka {_version('confluent-kafka')}{librdkafka}, dramatiq {_version('dramatiq')}, "
            f"redis-py {_version('redis')}, redis-server {redis_server}")


# -- the table ----------------------------------------------------------------------------------
def _fmt(value: float | None, base: float | None, digits: int = 0) -> str:
    if value is None:
        return "–"
    text = f"{value:,.{digits}f}"
    if base and value is not None:
        text += f" ({value / base:.2f}×)"
    return text


def render(results: list[SystemResult], ctx: Context, command: str, elapsed_s: float, load: tuple[float, ...]) -> str:
    k = next((r for r in results if r.key == "ktasks" and not r.error), None)

    def base(get: Callable[[SystemResult], float | None]) -> float | None:
        return get(k) if k is not None else None

    rows = []
    for r in results:
        if r.error:
            rows.append(f"| {r.label} | {r.error.replace('|', '/')} |||||||||")
            continue
        assert r.noop and r.io
        rows.append(
            f"| {r.label} "
            f"| {_fmt(r.noop.rate, base(lambda x: x.noop.rate if x.noop else None))} "
            f"| {_fmt(r.noop.steady_rate, base(lambda x: x.noop.steady_rate if x.noop else None))} "
            f"| {_fmt(r.noop.startup_s, None, 2)} "
            f"| {_fmt(r.io.rate, base(lambda x: x.io.rate if x.io else None))} "
            f"| {_fmt(r.io.steady_rate, base(lambda x: x.io.steady_rate if x.io else None))} "
            f"| {_fmt(r.enqueue_rate, base(lambda x: x.enqueue_rate))} "
            f"| {_fmt(r.latency_p50_ms, base(lambda x: x.latency_p50_ms), 1)} "
            f"| {_fmt(r.latency_p99_ms, base(lambda x: x.latency_p99_ms), 1)} "
            f"| {_fmt(r.rss_mb, base(lambda x: x.rss_mb))} / {_fmt(r.pss_mb, None)} |")
    notes = [f"- {r.label}: {'; '.join(r.notes)}" for r in results if r.notes]
    shared = max(load) if load else 0.0
    return (
        f"## {SECTION}\n\n"
        f"The same task body on every system: no-op, or `time.sleep(0.01)`; each completion appends a "
        f"16-byte record (enqueue-to-start latency, completion time) to a file, which is how completions are "
        f"counted everywhere. Two worker processes each (ktasks and Celery: one parent, two children; "
        f"Dramatiq: two processes of one thread; bare loop: two consumer processes). "
        f"Drain: {ctx.n:,} no-op tasks (and {ctx.io_n:,} of the 10 ms ones) enqueued first, then timed "
        f"from the worker's start (start-up included) to the last completion; *steady* is the rate "
        f"between the first and the last completion. Enqueue: {ctx.n:,} no-op tasks from one process, "
        f"to the broker's acknowledgement. Latency: enqueue-to-start at {ctx.rate} tasks/s for "
        f"{ctx.seconds:g} s, worker already running. Memory: peak over the run of the worker's whole "
        f"process tree, RSS / PSS (PSS splits pages shared between forked processes). Ratios are to "
        f"ktasks, from the same run.\n\n"
        f"- Machine: {machine()}; everything (broker, Redis, workers, this harness) on it\n"
        f"- Versions: {versions(ctx)}\n"
        f"- Kafka: {ctx.broker_note}; Redis: throwaway redis-server on loopback, no persistence\n"
        f"- Command: `{command}` ({elapsed_s / 60:.1f} minutes)\n"
        f"- Load: 1-minute load average {load[0]:.1f} at the start, {', '.join(f'{x:.1f}' for x in load[1:])} "
        f"after each system"
        + (" — the machine was shared with other engineers' test runs, so figures are noisy; ratios come "
           "from the same run" if shared > 1.5 else "") + "\n\n"
        "| system | no-op drain, tasks/s | no-op steady, tasks/s | first completion after, s "
        "| 10 ms drain, tasks/s | 10 ms steady, tasks/s | enqueue, tasks/s | latency p50, ms | latency p99, ms | worker RSS / PSS, MB |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        + "\n".join(rows) + "\n"
        + ("\n" + "\n".join(notes) + "\n" if notes else "")
        + "\nSettings are each system's defaults except: results ignored (Celery); one thread per Dramatiq "
        "process (its default is 8, which would run 16 tasks at once against everyone else's 2); "
        "remote control, gossip, mingle and heartbeats off for Celery on Kafka (kombu's Kafka transport "
        "has no fanout exchanges). Celery acknowledges before running a task (its default), Dramatiq "
        "after; ktasks commits after completion and records every execution in its SQLite ledger.\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5000, help="no-op tasks per drain (default 5000)")
    parser.add_argument("--io-n", type=int, default=1000, help="10 ms tasks per drain (default 1000)")
    parser.add_argument("--rate", type=int, default=50, help="tasks/s of the latency phase (default 50)")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of the latency phase (default 4)")
    parser.add_argument("--phase-timeout", type=float, default=150.0, help="longest drain, s (default 150)")
    parser.add_argument("--bootstrap", help="Kafka to use (default: KTASKS_BOOTSTRAP_SERVERS, else start one)")
    parser.add_argument("--only", help="comma-separated system keys: " + ", ".join(s.key for s in SYSTEMS))
    parser.add_argument("--write", type=Path, metavar="FILE", help="write the table into this markdown file")
    args = parser.parse_args(argv)
    started = time.monotonic()
    load = [os.getloadavg()[0]]
    tmp = Path(tempfile.mkdtemp(prefix="bench-peers-"))
    systems = [s for s in SYSTEMS if not args.only or s.key in args.only.split(",")]
    results: list[SystemResult] = []
    try:
        with kafka(args.bootstrap, tmp) as (bootstrap, broker_note):
            ctx = Context(bootstrap, tmp, args.n, args.io_n, args.rate, args.seconds, args.phase_timeout,
                          broker_note=broker_note)
            ctx.redis_missing = procs.RedisServer.missing_reason()
            if ctx.redis_missing:
                print(f"redis-server missing: {ctx.redis_missing}; the Redis systems will not run", flush=True)
            else:
                ctx.redis = procs.RedisServer()
                ctx.redis.start()
            try:
                for cls in systems:
                    results.append(run_system(cls, ctx))
                    load.append(os.getloadavg()[0])
            finally:
                if ctx.redis is not None:
                    ctx.redis.stop()
            elapsed = time.monotonic() - started
            command = "python -m benchmarks.peers " + " ".join(sys.argv[1:] if argv is None else argv)
            section = render(results, ctx, command, elapsed, tuple(load))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    print(section)
    if args.write:
        write_section(args.write, section, SECTION)
        print(f"wrote {args.write}")
    return 0


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    sys.exit(main())
