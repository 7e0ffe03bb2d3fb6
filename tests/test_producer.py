"""The per-process producer: lazy, thread-safe, fork-safe, flushed at exit, bounded when the broker is down."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import uuid
from typing import Any

import pytest

import ktasks.producer
from ktasks import BrokerUnavailable
from ktasks.message import decode
from tests.helpers import wait_until


def _ids(records: list[Any]) -> list[str]:
    return [decode(r.value).id for r in records]


def test_producer_settings(make_app):
    app = make_app(linger_ms=7, send_timeout_ms=4000, kafka_options={"retry_backoff_ms": 55})
    cfg = app.producer.config()
    assert cfg["acks"] == "all" and cfg["enable_idempotence"] is True
    assert cfg["linger_ms"] == 7 and cfg["max_block_ms"] == 4000 and cfg["bootstrap_timeout_ms"] == 4000
    assert cfg["delivery_timeout_ms"] >= cfg["linger_ms"] + cfg["request_timeout_ms"]
    assert cfg["retry_backoff_ms"] == 55 and cfg["client_id"] == app.client_id
    assert not app.producer.started  # lazy: nothing built yet
    producer = app.producer.get()
    assert producer.config["acks"] == -1 and producer.config["enable_idempotence"] is True
    assert app.producer.get() is producer and app.producer.started


def test_one_producer_shared_by_threads(app, read_records):
    @app.task
    def job(t: int, i: int) -> None: ...

    barrier = threading.Barrier(8)
    producers: list[Any] = []
    ids: list[str] = []
    lock = threading.Lock()

    def worker(t: int) -> None:
        barrier.wait()
        mine = [job.delay(t, i) for i in range(25)]
        with lock:
            producers.append(app.producer.get())
            ids.extend(h.id for h in mine)
        for h in mine:
            h.wait_sent()

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert len({id(p) for p in producers}) == 1
    got = _ids(read_records(job.topic, min_count=200))
    assert sorted(got) == sorted(ids) and len(got) == 200


def _wait_child(pid: int, timeout_s: float = 60.0) -> int:
    """Exit status of a forked child, killing it if it does not finish in time."""
    status: list[int] = []

    def done() -> bool:
        waited, code = os.waitpid(pid, os.WNOHANG)
        if waited:
            status.append(code)
        return bool(waited)

    try:
        wait_until(done, timeout_s, message=f"forked child {pid} did not finish")
    except AssertionError:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    return os.waitstatus_to_exitcode(status[0])


def test_enqueue_from_a_forked_child_after_the_parent_enqueued(app, read_records, unique):
    @app.task
    def job(who: str) -> None: ...

    parent_first = job.delay("parent-before")
    parent_first.wait_sent()
    parent_producer = app.producer.get()
    child_topic = unique("child")  # the child must also create a topic: admin client and locks too
    # Hold every lock the enqueue path takes, as another parent thread might at fork time.
    locks = [app.producer._lock, app._ensure_lock, app.topics._lock]
    for lock in locks:
        lock.acquire()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            os.close(read_fd)
            own = app.producer.get()
            assert own is not parent_producer
            assert any(p is parent_producer for p in ktasks.producer._inherited)
            h1 = job.delay("child")
            h2 = job.apply_async(args=("child-topic",), topic=child_topic)
            h1.wait_sent(timeout=30)
            h2.wait_sent(timeout=30)
            os.write(write_fd, f"{h1.id} {h2.id}".encode())
            code = 0
        except BaseException as exc:
            os.write(write_fd, f"ERROR {exc!r}".encode())
        finally:
            os._exit(code)
    for lock in locks:
        lock.release()
    os.close(write_fd)
    try:
        assert _wait_child(pid) == 0
        reply = os.read(read_fd, 4096).decode()
    finally:
        os.close(read_fd)
    assert not reply.startswith("ERROR"), reply
    child_id, child_topic_id = reply.split()
    parent_after = job.delay("parent-after")  # the parent's producer still works after the fork
    parent_after.wait_sent()
    assert app.producer.get() is parent_producer
    assert sorted(_ids(read_records(job.topic, min_count=3))) == sorted(
        [parent_first.id, child_id, parent_after.id])
    assert _ids(read_records(child_topic, min_count=1)) == [child_topic_id]


def _child_enqueue_without_waiting(job: Any, task_id: str) -> None:
    job.apply_async(args=("mp",), task_id=task_id)  # no wait_sent: the exit must flush


def test_multiprocessing_fork_children_enqueue_and_flush_at_exit(make_app, read_records):
    app = make_app(linger_ms=500)  # nothing goes out before the child exits unless the exit flushes

    @app.task
    def job(who: str) -> None: ...

    job.delay("parent").wait_sent()
    ctx = multiprocessing.get_context("fork")
    ids = [uuid.uuid4().hex for _ in range(3)]
    procs = [ctx.Process(target=_child_enqueue_without_waiting, args=(job, i)) for i in ids]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    records = read_records(job.topic, min_count=4)
    assert sorted(i for i in _ids(records) if i in ids) == sorted(ids)
    assert len(records) == 4


def _pool_enqueue(i: int) -> str:
    return _POOL_JOB.delay(i).id  # type: ignore[no-any-return]


_POOL_JOB: Any = None


def test_multiprocessing_pool_workers_enqueue(app, read_records):
    global _POOL_JOB

    @app.task
    def job(i: int) -> None: ...

    _POOL_JOB = job
    try:
        job.delay(-1).wait_sent()
        with multiprocessing.get_context("fork").Pool(2) as pool:
            ids = pool.map(_pool_enqueue, range(40))
            pool.close()
            pool.join()
    finally:
        _POOL_JOB = None
    got = _ids(read_records(job.topic, min_count=41))
    assert len(got) == 41 and set(ids) <= set(got)


def test_interpreter_exit_flushes(kafka_bootstrap, unique, read_records):
    topic = unique("atexit")
    script = textwrap.dedent("""
        from ktasks import App
        app = App("atexit", linger_ms=5000)   # only the exit flush can send these in time
        @app.task
        def job(i): ...
        print(" ".join(job.delay(i).id for i in range(20)), flush=True)
    """)
    env = dict(os.environ, KTASKS_BOOTSTRAP_SERVERS=kafka_bootstrap, KTASKS_DEFAULT_TOPIC=topic)
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    ids = out.stdout.split()
    assert len(ids) == 20
    assert sorted(_ids(read_records(topic, min_count=20))) == sorted(ids)


def test_close_then_enqueue_builds_a_new_producer(app, read_records):
    @app.task
    def job() -> None: ...

    job.delay().wait_sent()
    first = app.producer.get()
    app.close()
    app.close()  # idempotent
    assert not app.producer.started
    job.delay().wait_sent()
    assert app.producer.get() is not first
    assert len(read_records(job.topic, min_count=2)) == 2


@pytest.mark.timeout(60)  # a hang guard only: no timing is asserted
def test_down_broker_gives_broker_unavailable_naming_the_address(make_app, closed_port):
    address = f"127.0.0.1:{closed_port}"
    app = make_app(bootstrap_servers=address, send_timeout_ms=2000, auto_create_topics=False)

    @app.task
    def job() -> None: ...

    with pytest.raises(BrokerUnavailable, match=f"Kafka at {address} unreachable after 2000 ms"):
        job.delay()
    assert not app.producer.started
