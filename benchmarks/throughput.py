"""Worker throughput: ``ktasks worker -c 2 --burst`` against a bare kafka-python consume-and-commit loop.

Not a test. Produces N no-op task records once, to one topic, then drains
them several times, each run in its own consumer group so every run reads the
same records:

* ktasks: ``ktasks worker -A <app> -c 2 --burst --loglevel WARNING`` as a
  subprocess, with the ledger on (a fresh ledger file per run, so nothing is
  skipped); as many times at ``--loglevel INFO``, which logs one line per task.
* bare: one ``KafkaConsumer`` in this process, polling and committing the
  explicit offsets of every poll batch (no decoding, no work).

The rate counts from the first task start (the ledger's earliest
``started_at``; for the bare loop, the first non-empty poll) until the
group's committed offsets cover all N records (read with the admin API; for
the bare loop, its last commit), so process start-up and the group join are
left out; the whole wall time of the worker process is shown too::

    python -m benchmarks.throughput --n 20000
    python -m benchmarks.throughput --n 20000 --write docs/performance.md
    python -m benchmarks.throughput --n 20000 --profile      # the parent in-process, under cProfile

With ``--pure-crc`` every contender runs again with the ``crc32c`` package
hidden, so kafka-python falls back to its pure-Python CRC-32C.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import platform
import pstats
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kafka
import msgpack
from kafka import KafkaAdminClient, KafkaConsumer
from kafka.structs import OffsetAndMetadata

from benchmarks.report import crc_in_use, write_section

SECTION = "Worker throughput"
CONCURRENCY = 2
STALL_S = 180.0   # a loaded machine can take a minute to start a worker
#: Ends the generated part of the section; what follows it up to the next section is kept.
KEEP_MARKER = "<!-- benchmarks/throughput.py: text below this line is kept when the figures are rewritten -->"

APP_SOURCE = '''
import atexit
import cProfile
import multiprocessing
import os

from ktasks import App

if os.environ.get("BENCH_CHILD_PROFILE_DIR") and multiprocessing.current_process().name.startswith("ktasks-child"):
    # --profile: a worker child profiles itself from the import of the app until it exits.
    _profile = cProfile.Profile()
    _profile.enable()
    atexit.register(lambda: _profile.dump_stats(os.path.join(
        os.environ["BENCH_CHILD_PROFILE_DIR"], f"child-{{os.getpid()}}.prof")))

app = App({name!r}, bootstrap_servers={bootstrap!r}, default_topic={topic!r}, partitions={partitions})


@app.task(name="bench.noop")
def noop(i, label, ratio):
    """Does nothing: only the worker's own cost is measured."""
'''


@dataclass
class Run:
    label: str
    rate: float             # records/s, first task start to all committed
    seconds: float          # that span
    wall: float | None = None   # the whole worker process, start-up included (ktasks only)
    cpu: float | None = None    # CPU seconds of the worker and its children, start-up included (ktasks only)


#: The CRC-32C implementations a run can use: the ``crc32c`` package (C), or kafka-python's own.
CRCS = ("C", "pure-Python")
#: What each CRC mode runs: the bare loop and ktasks at WARNING and INFO (``rounds`` times each), and no ledger.
KINDS = ("bare", "warning", "info", "no-ledger")


@dataclass
class Results:
    runs: dict[tuple[str, str], list[Run]] = field(default_factory=dict)   # (crc, kind) -> runs
    # Same-run pairs with the ledger changelog on (the default) and off: what it costs.
    changelog_on: list[Run] = field(default_factory=list)
    changelog_off: list[Run] = field(default_factory=list)

    def add(self, crc: str, kind: str, run: Run) -> None:
        self.runs.setdefault((crc, kind), []).append(run)

    def best(self, crc: str, kind: str) -> Run | None:
        runs = self.runs.get((crc, kind))
        return max(runs, key=lambda r: r.rate) if runs else None

    def ratio(self, crc: str = "C", kind: str = "warning", to: str = "bare") -> float | None:
        a, b = self.best(crc, kind), self.best(crc, to)
        return None if a is None or b is None else a.rate / b.rate


class Bench:
    def __init__(self, bootstrap: str, n: int, partitions: int) -> None:
        self.bootstrap = bootstrap
        self.n = n
        self.partitions = partitions
        self.tag = uuid.uuid4().hex[:8]
        self.dir = Path(tempfile.mkdtemp(prefix=f"ktasks-bench-{self.tag}-"))
        self.module = f"bench_throughput_{self.tag}"
        self.topic = f"bench-throughput-{self.tag}"
        (self.dir / f"{self.module}.py").write_text(textwrap.dedent(APP_SOURCE.format(
            name=f"bench-{self.tag}", bootstrap=bootstrap, topic=self.topic, partitions=partitions)))
        sys.path.insert(0, str(self.dir))
        self.app_module: Any = __import__(self.module)
        self.app = self.app_module.app
        self.admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="ktasks-bench")
        self._runs = 0

    def produce(self) -> None:
        """N records of the no-op task, once; every run drains these same records."""
        self.app.ensure_topics([self.topic])
        start = time.perf_counter()
        for i in range(self.n):
            self.app_module.noop.delay(i, "order", 0.5)
        self.app.flush()
        print(f"produced {self.n:,} records to {self.topic} ({self.partitions} partitions) in "
              f"{time.perf_counter() - start:.1f}s", flush=True)

    def _group(self, kind: str) -> str:
        self._runs += 1
        return f"bench-{self.tag}-{kind}-{self._runs}"

    def committed(self, group: str) -> int:
        try:
            offsets = self.admin.list_group_offsets({group: None}).get(group, {})
        except kafka.errors.KafkaError as exc:
            if not exc.retriable:   # e.g. the group coordinator of a fresh broker still loading
                raise
            return 0
        return sum(om.offset for tp, om in offsets.items() if tp.topic == self.topic and om.offset > 0)

    # -- ktasks -------------------------------------------------------------------
    def ktasks(self, loglevel: str = "WARNING", ledger_on: bool = True, extra_args: tuple[str, ...] = (),
               extra_env: dict[str, str] | None = None, label: str = "", crc: str = "C") -> Run:
        group = self._group("ktasks")
        ledger = self.dir / f"{group}.ledger.sqlite3"
        log = self.dir / f"{group}.log"
        cmd = [sys.executable, "-m", "ktasks", "worker", "-A", f"{self.module}:app", "-c", str(CONCURRENCY),
               "--burst", "--loglevel", loglevel, "--group", group]
        cmd += ["--ledger", str(ledger)] if ledger_on else ["--no-ledger"]
        cmd += list(extra_args)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(self.dir), os.environ.get("PYTHONPATH", "")]))
        # A changelog of its own per run: every run drains the same records (same task ids),
        # which a shared changelog would tell the next run's fresh ledger were done.
        env["KTASKS_LEDGER_CHANGELOG_SUFFIX"] = f".ledger-{group}"
        if crc != "C":
            # A crc32c module that fails to import, ahead of the real one: kafka-python falls back.
            env["PYTHONPATH"] = os.pathsep.join([str(self._hide_crc32c()), env["PYTHONPATH"]])
        env.update(extra_env or {})
        began = time.time()
        # CPU of the worker and its children (waited for by it, then by us): unlike the rate,
        # it hardly depends on what else the machine runs meanwhile.
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        first_seen: float | None = None
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, cwd=self.dir, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
            done_at = None
            progress = (-1, time.monotonic())
            while done_at is None:
                committed = self.committed(group)
                if committed and first_seen is None:
                    first_seen = time.time()
                if committed >= self.n:
                    done_at = time.time()
                elif proc.poll() is not None:
                    raise SystemExit(f"worker exited with {proc.returncode} before draining; see {log}:\n"
                                     + log.read_text()[-3000:])
                elif committed != progress[0]:
                    progress = (committed, time.monotonic())
                elif time.monotonic() - progress[1] > STALL_S:
                    proc.kill()
                    raise SystemExit(f"worker stalled: committed {committed:,} of {self.n:,} and no progress for "
                                     f"{STALL_S:.0f}s (pid {proc.pid}); see {log}")
                else:
                    time.sleep(0.02)
            code = proc.wait(timeout=120)
        wall = time.time() - began
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
        if code != 0:
            raise SystemExit(f"worker exited with {code}; see {log}")
        if ledger_on:
            with sqlite3.connect(ledger) as conn:
                first, count = conn.execute("SELECT min(started_at), count(*) FROM ktasks_ledger").fetchone()
            if count != self.n:
                raise SystemExit(f"the ledger has {count} entries, expected {self.n}")
        else:
            # No ledger to date the first task: take the first commit seen, which comes a commit
            # interval (200 ms) or less after it; so this rate is, if anything, flattered.
            assert first_seen is not None
            first = first_seen
        seconds = done_at - first
        changelog = (extra_env or {}).get("KTASKS_LEDGER_CHANGELOG", "true") == "true"
        what = "off" if not ledger_on else "on, changelog on" if changelog else "on, changelog off"
        return Run(f"ktasks worker -c {CONCURRENCY} --burst, ledger {what}, "
                   f"--loglevel {loglevel}{label}", self.n / seconds, seconds, wall, cpu)

    def _hide_crc32c(self) -> Path:
        shadow = self.dir / "no-crc32c"
        (shadow / "crc32c").mkdir(parents=True, exist_ok=True)
        (shadow / "crc32c" / "__init__.py").write_text(
            'raise ImportError("crc32c hidden by benchmarks.throughput (pure-Python CRC run)")\n')
        return shadow

    # -- bare -------------------------------------------------------------------
    def bare(self, crc: str = "C") -> Run:
        from kafka.record import util as record_util

        # kafka-python binds its CRC function as a default argument: swap it for this run.
        saved = record_util.calc_crc32c.__defaults__
        if crc != "C":
            record_util.calc_crc32c.__defaults__ = (record_util.crc32c_py,)
        try:
            return self._bare()
        finally:
            record_util.calc_crc32c.__defaults__ = saved

    def _bare(self) -> Run:
        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, group_id=self._group("bare"),
                                 enable_auto_commit=False, auto_offset_reset="earliest", max_poll_records=500)
        consumer.subscribe([self.topic])
        seen = 0
        first = None
        while seen < self.n:
            batch = consumer.poll(timeout_ms=100)
            if not batch:
                continue
            if first is None:
                first = time.perf_counter()
            offsets = {}
            for tp, records in batch.items():
                seen += len(records)
                offsets[tp] = OffsetAndMetadata(records[-1].offset + 1, "", -1)
            consumer.commit(offsets)
        assert first is not None
        seconds = time.perf_counter() - first
        consumer.close()
        return Run("bare kafka-python poll + commit loop", self.n / seconds, seconds)

    # -- profile ------------------------------------------------------------------
    def profile(self, top: int, loglevel: str = "WARNING") -> str:
        """Drain once with the worker's parent in this process under cProfile; return the top entries."""
        from ktasks.logs import configure_logging
        from ktasks.worker import Worker

        group = self._group("profile")
        configure_logging(loglevel, "text", process_name="worker")
        worker = Worker(self.app, f"{self.module}:app", concurrency=CONCURRENCY, group_id=group,
                        loglevel=loglevel, burst=True,
                        overrides={"ledger_path": str(self.dir / f"{group}.ledger.sqlite3")})
        children = self.dir / "child-profiles"
        children.mkdir(exist_ok=True)
        os.environ["BENCH_CHILD_PROFILE_DIR"] = str(children)   # inherited by the spawned children
        prof = cProfile.Profile()
        start = time.perf_counter()
        prof.enable()
        try:
            code = worker.run()
        finally:
            prof.disable()
            del os.environ["BENCH_CHILD_PROFILE_DIR"]
        print(f"in-process worker: exit {code}, {time.perf_counter() - start:.1f}s including start-up",
              flush=True)
        out = io.StringIO()
        out.write("== worker parent (main thread) ==\n")
        stats = pstats.Stats(prof, stream=out)
        stats.sort_stats("tottime").print_stats(top)
        stats.sort_stats("cumulative").print_stats(top)
        dumps = sorted(str(p) for p in children.glob("child-*.prof"))
        if dumps:
            out.write(f"== the {len(dumps)} children, together ==\n")
            stats = pstats.Stats(*dumps, stream=out)
            stats.sort_stats("tottime").print_stats(top)
            stats.sort_stats("cumulative").print_stats(top)
        return out.getvalue()

    def machine(self) -> str:
        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap)
        broker = ".".join(map(str, consumer.config.get("api_version") or ())) or "unknown"
        consumer.close()
        return (f"{os.cpu_count()} cores ({platform.machine()}, {platform.system()}), "
                f"Python {platform.python_version()}, kafka-python {kafka.__version__} ({crc_in_use()} installed; "
                f"the pure-Python rows hide it), "
                f"msgpack {'.'.join(map(str, msgpack.version))}, SQLite {sqlite3.sqlite_version}, "
                f"broker API version {broker} (as detected by kafka-python)")

    def close(self, keep_files: bool = False) -> None:
        self.admin.close()
        self.app.close()
        if not keep_files:
            shutil.rmtree(self.dir, ignore_errors=True)


_KIND_LABELS = {
    "bare": "bare kafka-python poll + commit loop",
    "warning": f"ktasks worker -c {CONCURRENCY} --burst, ledger on, --loglevel WARNING",
    "info": f"ktasks worker -c {CONCURRENCY} --burst, ledger on, --loglevel INFO",
    "no-ledger": f"ktasks worker -c {CONCURRENCY} --burst, --no-ledger, --loglevel WARNING",
}


def render(results: Results, n: int, partitions: int, command: str, where: str, notes: str) -> str:
    rows = []
    for crc in CRCS:
        for kind in KINDS:
            runs = results.runs.get((crc, kind))
            best = results.best(crc, kind)
            if not runs or best is None:
                continue
            ratio = results.ratio(crc, kind)
            cpu = min((r.cpu for r in runs if r.cpu is not None), default=None)
            rows.append(f"| {_KIND_LABELS[kind]} | {crc} | {best.rate:,.0f} | "
                        f"{', '.join(f'{r.rate:,.0f}' for r in runs)} | "
                        f"{'' if ratio is None else f'{ratio:.2f}'} | {'' if cpu is None else f'{cpu:.1f}'} |")
    lines = []
    for crc in CRCS:
        ratio, info = results.ratio(crc), results.ratio(crc, "info", "warning")
        nol = results.ratio(crc, "no-ledger", "warning")
        if ratio is None:
            continue
        line = f"- {crc} CRC-32C: ktasks at WARNING is **{ratio:.2f}** of the bare loop"
        if info is not None:
            line += f"; at INFO it does **{info:.2f}** of its WARNING rate"
        if nol is not None:
            line += f"; with `--no-ledger`, {nol:.2f}x its rate with the ledger"
        lines.append(line + ".")
    summary = "\n".join(lines)
    info = ""
    if results.changelog_on and results.changelog_off:
        on, off = max(r.rate for r in results.changelog_on), max(r.rate for r in results.changelog_off)
        pairs = ", ".join(f"{a.rate:,.0f} on / {b.rate:,.0f} off"
                          for a, b in zip(results.changelog_on, results.changelog_off, strict=False))
        cpu_on = min(r.cpu or 0.0 for r in results.changelog_on)
        cpu_off = min(r.cpu or 0.0 for r in results.changelog_off)
        info += (f"\nThe ledger changelog's cost, {len(results.changelog_on)} same-run pairs alternating "
                 f"(`KTASKS_LEDGER_CHANGELOG=false` for off): {pairs} records/s; best on / best off = "
                 f"**{on / off:.2f}**. Worker CPU (parent and children, start-up included), least of each: "
                 f"{cpu_on:.2f} s on, {cpu_off:.2f} s off: **{cpu_off / cpu_on:.2f}x** the rate a CPU-bound "
                 f"drain would keep.\n")
    return (
        f"## {SECTION}\n\n"
        f"{n:,} records of a no-op task (three small arguments) on one topic with {partitions} partitions, "
        f"produced once, then drained by each contender in its own consumer group, so all read the same "
        f"records in the same run. ktasks: `ktasks worker -c {CONCURRENCY} --burst` as a subprocess, with "
        f"the ledger (a fresh file per run) and its changelog on unless the row says otherwise. Bare: one "
        f"kafka-python `KafkaConsumer` that polls and commits the explicit offsets of every poll batch, and "
        f"does nothing else. Rates count from the first task start (the ledger's earliest `started_at`; for "
        f"the bare loop, its first non-empty poll) until the group's committed offsets cover every record, "
        f"so start-up and the group join are not counted. Every contender ran once with the `crc32c` "
        f"package (C) and once with it hidden (kafka-python's pure-Python CRC-32C, what an install without "
        f"it gets). Worker CPU is the worker and its children, start-up included.\n\n"
        f"- Machine: {where}; the broker runs on the same machine\n"
        f"- Command: `{command}`\n\n"
        f"| | CRC-32C | records/s (best) | all runs | ratio to the bare loop (same CRC) | worker CPU, s |\n"
        f"|---|---|---:|---|---:|---:|\n" + "\n".join(rows) + "\n\n"
        f"{summary}\n"
        f"{info}"
        f"{notes}"
        f"\n{KEEP_MARKER}\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--bootstrap", default=os.environ.get("KTASKS_BOOTSTRAP_SERVERS", "127.0.0.1:9092"))
    parser.add_argument("-n", "--n", type=int, default=20_000, dest="n", help="records (default 20,000)")
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="runs of each contender, alternating")
    parser.add_argument("--no-info", action="store_true", help="skip the run at --loglevel INFO")
    parser.add_argument("--no-ledger-run", action="store_true",
                        help="also run once with --no-ledger, to show what the ledger costs")
    parser.add_argument("--changelog-rounds", type=int, default=0,
                        help="also this many pairs of runs with the ledger changelog on and off")
    parser.add_argument("--no-bare", action="store_true", help="skip the main rounds (with --changelog-rounds)")
    parser.add_argument("--pure-crc", action="store_true",
                        help="run everything a second time with the crc32c package hidden (pure-Python CRC-32C)")
    parser.add_argument("--profile", action="store_true",
                        help="instead: drain once with the worker parent in-process under cProfile")
    parser.add_argument("--top", type=int, default=30, help="profile entries to print")
    parser.add_argument("--profile-loglevel", default="WARNING", help="the worker's log level under --profile")
    parser.add_argument("--notes", type=Path, help="markdown appended to the written section (profile findings)")
    parser.add_argument("--write", type=Path, metavar="FILE", help="write the results into this markdown file")
    args = parser.parse_args(argv)

    bench = Bench(args.bootstrap, args.n, args.partitions)
    ok = False
    try:
        bench.produce()
        if args.profile:
            print(bench.profile(args.top, args.profile_loglevel))
            ok = True
            return 0
        results = Results()
        for crc in CRCS if args.pure_crc else CRCS[:1]:
            # INFO runs in every round beside WARNING, in turn first and second, so its ratio is
            # best against best under the same drift of the machine's load, not one run against three.
            kinds = ["warning", "bare"] if args.no_info else ["warning", "info", "bare"]
            for r in range(0 if args.no_bare else args.rounds):
                order = kinds[r % len(kinds):] + kinds[:r % len(kinds)]
                for kind in order:
                    run = (bench.bare(crc) if kind == "bare"
                           else bench.ktasks("INFO" if kind == "info" else "WARNING", crc=crc))
                    results.add(crc, kind, run)
                    print(f"{crc} CRC, round {r + 1}: {run.label}: {run.rate:,.0f} records/s in "
                          f"{run.seconds:.2f}s", flush=True)
            if args.no_bare:
                continue
            if args.no_ledger_run:
                run = bench.ktasks(ledger_on=False, crc=crc)
                results.add(crc, "no-ledger", run)
                print(f"{crc} CRC: {run.label}: {run.rate:,.0f} records/s in {run.seconds:.2f}s", flush=True)
        for r in range(args.changelog_rounds):
            order = [True, False] if r % 2 == 0 else [False, True]
            for on in order:
                run = bench.ktasks(extra_env={"KTASKS_LEDGER_CHANGELOG": "true" if on else "false"})
                (results.changelog_on if on else results.changelog_off).append(run)
                print(f"changelog pair {r + 1}: {run.label}: {run.rate:,.0f} records/s in {run.seconds:.2f}s, "
                      f"worker CPU {run.cpu:.2f}s", flush=True)
        if args.no_bare:
            return 0
        for crc in CRCS:
            ours, bare = results.best(crc, "warning"), results.best(crc, "bare")
            if ours is not None and bare is not None:
                print(f"{crc} CRC: ktasks {ours.rate:,.0f} records/s, bare {bare.rate:,.0f} records/s, "
                      f"ratio {ours.rate / bare.rate:.2f}")
        if args.write:
            command = "python -m benchmarks.throughput " + " ".join(sys.argv[1:] if argv is None else argv)
            notes = "\n" + args.notes.read_text().strip() + "\n" if args.notes else ""
            write_section(args.write, render(results, args.n, args.partitions, command, bench.machine(), notes), SECTION,
                          KEEP_MARKER)
            print(f"wrote {args.write}")
        ok = True
    finally:
        bench.close(keep_files=not ok)   # worker logs and ledgers stay when something failed
    return 0


if __name__ == "__main__":
    sys.exit(main())
