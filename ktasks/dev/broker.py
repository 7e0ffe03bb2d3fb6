"""The local development broker: one Apache Kafka process in KRaft mode.

A :class:`DevBroker` is a single node that is both broker and controller,
listening on ``127.0.0.1``. Everything it owns lives in one state directory
(default ``<cache>/dev/<port>/``)::

    state.json          port, controller port, cluster id (kept across restarts)
    server.properties   the broker's configuration, rewritten at each start
    log4j2.properties   logging: everything to stdout, which goes to broker.log
    broker.log          the broker's output (the previous run's is broker.log.1)
    broker.pid          pid of the running broker
    data/               the Kafka log directory (topics, offsets, metadata)

``ktasks dev up|down|status|logs`` and the test fixtures both drive this class.
Progress is logged at INFO level on this module's logger.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from .._proc import pid_alive
from ..errors import DevBrokerError
from .jars import KAFKA_VERSION, KafkaRuntime, cache_root, file_lock, kafka_runtime
from .security import LISTENER as SASL_LISTENER
from .security import SaslSsl, client_settings

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "BrokerStatus", "DevBroker", "NodeConfig", "default_state_dir",
           "free_port"]

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9092
NODE_ID = 1

#: JVM options for a small (2-core) machine: small heap, serial GC, C1 only
#: (faster start-up). ``KTASKS_DEV_JAVA_OPTS`` is appended to these.
JVM_OPTIONS = (
    "-Xms128m",
    "-Xmx512m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-Xshare:auto",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)

_LOG4J2 = """\
# Written by ktasks: all broker logging goes to stdout, which is broker.log.
status = warn
shutdownHook = disable
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.authorizer.name = kafka.authorizer.logger
logger.authorizer.level = WARN
"""

_FORMAT_TIMEOUT_S = 120.0
_KILL_WAIT_S = 10.0
_STATE_VERSION = 1


@dataclass(frozen=True)
class BrokerStatus:
    """What a running dev broker looks like from outside."""

    bootstrap: str
    """``host:port`` for ``bootstrap_servers``."""
    pid: int
    """Process id of the broker's JVM."""
    kafka_version: str
    """Apache Kafka version the broker runs."""
    port: int
    """Client (PLAINTEXT) port."""
    controller_port: int
    """KRaft controller port."""
    state_dir: Path
    """Directory holding everything below."""
    data_dir: Path
    """Kafka's log directory (topics and metadata)."""
    log_path: Path
    """The broker's log file."""
    started_at: float
    """Start time, seconds since the epoch (0.0 if unknown)."""
    sasl_ssl_port: int | None = None
    """Port of the SASL_SSL listener, if the broker has one (see :mod:`ktasks.dev.security`)."""


@dataclass(frozen=True)
class NodeConfig:
    """A node's place in a cluster: the defaults make a cluster of one.

    :class:`ktasks.dev.cluster.DevCluster` gives each of its nodes one of these.
    """

    node_id: int = NODE_ID
    """KRaft ``node.id``."""
    controller_port: int | None = None
    """Fixed controller port; None chooses a free one (kept across restarts)."""
    quorum_voters: str | None = None
    """``controller.quorum.voters``; None means this node alone."""
    cluster_id: str | None = None
    """Cluster id to format with; None chooses one (kept across restarts)."""
    replication_factor: int = 1
    """``default.replication.factor`` and the internal topics' replication."""
    min_insync_replicas: int = 1
    """``min.insync.replicas`` (and the transaction log's)."""
    extra_properties: tuple[tuple[str, str], ...] = ()
    """Further ``server.properties`` entries; they win over ktasks' own."""
    format_args: tuple[str, ...] = ()
    """Further arguments to ``StorageTool format`` (for example ``--add-scram``)."""
    java_options: tuple[str, ...] = ()
    """JVM options after :data:`JVM_OPTIONS` (later ones win, such as a smaller ``-Xmx``)."""


def new_cluster_id() -> str:
    """A fresh KRaft cluster id."""
    while True:  # Kafka's Uuid: url-safe base64 of 16 random bytes; avoid a leading "-"
        candidate = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not candidate.startswith("-"):
            return candidate


def default_state_dir(port: int) -> Path:
    """State directory of the dev broker on ``port``: ``<cache>/dev/<port>``."""
    return cache_root() / "dev" / str(port)


def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port on ``host`` that nothing listens on right now (chosen by the kernel)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class DevBroker:
    """A single-node Kafka (combined broker and controller) for development and tests.

    Creating the object does nothing; :meth:`up` starts the broker (resolving
    the jars and formatting the storage first when needed) and :meth:`down`
    stops it. Any number of objects, in any number of processes, may point at
    the same state directory: the pid file and the process's command line tell
    whether the broker is running, and a lock serialises ``up`` and ``down``.

    Args:
        port: client port, on ``host``.
        state_dir: where the data, configuration, log and pid file live;
            defaults to :func:`default_state_dir` of ``port``.
        host: address to listen on and advertise.
        kafka_version: Kafka release to resolve from Maven Central (ignored
            when ``KAFKA_HOME`` is set).
        node: this node's place in a cluster (see :class:`NodeConfig`); the
            default is a cluster of one.
    """

    def __init__(self, port: int = DEFAULT_PORT, state_dir: str | os.PathLike[str] | None = None,
                 host: str = DEFAULT_HOST, kafka_version: str = KAFKA_VERSION,
                 node: NodeConfig | None = None, sasl_ssl: SaslSsl | None = None) -> None:
        if not 0 < port < 65536:
            raise DevBrokerError(f"invalid port {port}")
        self.port = port
        self.host = host
        self.kafka_version = kafka_version
        self.node = node or NodeConfig()
        self._sasl_ssl = sasl_ssl
        self.state_dir = Path(state_dir if state_dir is not None else default_state_dir(port))
        self.state_dir = self.state_dir.expanduser().resolve()
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_at = time.monotonic()

    def __repr__(self) -> str:
        return f"DevBroker({self.bootstrap!r}, state_dir={str(self.state_dir)!r})"

    # -- paths -------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        """``host:port`` to give clients as ``bootstrap_servers``."""
        return f"{self.host}:{self.port}"

    @property
    def sasl_ssl(self) -> SaslSsl | None:
        """The SASL_SSL listener: the one given, else the one recorded at the first start, else None."""
        if self._sasl_ssl is not None:
            return self._sasl_ssl
        recorded = self._load_state().get("sasl_ssl")
        return SaslSsl(**recorded) if isinstance(recorded, dict) else None

    @property
    def tls_dir(self) -> Path:
        """Where the SASL_SSL listener's CA (``ca.pem``) and broker certificate live."""
        return self.state_dir / "tls"

    def client_settings(self) -> dict[str, Any]:
        """ktasks settings that reach this broker: over SASL_SSL when it has that listener."""
        if self.sasl_ssl is None:
            return {"bootstrap_servers": self.bootstrap}
        return client_settings(self.sasl_ssl, self.host, self.tls_dir)

    @property
    def data_dir(self) -> Path:
        """Kafka's log directory."""
        return self.state_dir / "data"

    @property
    def log_path(self) -> Path:
        """The broker's log file (stdout and stderr of the JVM)."""
        return self.state_dir / "broker.log"

    @property
    def pid_path(self) -> Path:
        """File holding the pid of the running broker."""
        return self.state_dir / "broker.pid"

    @property
    def config_path(self) -> Path:
        """The broker's ``server.properties``."""
        return self.state_dir / "server.properties"

    @property
    def _state_path(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def _log4j_path(self) -> Path:
        return self.state_dir / "log4j2.properties"

    @property
    def _lock_path(self) -> Path:
        return self.state_dir / ".lock"

    # -- status ------------------------------------------------------------------

    def status(self) -> BrokerStatus | None:
        """The running broker, or None if it is not running.

        Running means: the pid file names a live process whose command line is
        ``kafka.Kafka`` with this state directory's configuration, so a stale
        pid file or a reused pid is never taken for our broker.
        """
        pid = self._read_pid()
        if pid is None or not self._is_our_broker(pid):
            return None
        state = self._load_state()
        return BrokerStatus(
            bootstrap=self.bootstrap,
            pid=pid,
            kafka_version=str(state.get("kafka_version", "unknown")),
            port=self.port,
            controller_port=int(state.get("controller_port", 0)),
            state_dir=self.state_dir,
            data_dir=self.data_dir,
            log_path=self.log_path,
            started_at=float(state.get("started_at", 0.0)),
            sasl_ssl_port=self.sasl_ssl.port if self.sasl_ssl is not None else None,
        )

    def is_running(self) -> bool:
        """Whether the broker is running (see :meth:`status`)."""
        return self.status() is not None

    # -- up ----------------------------------------------------------------------

    def up(self, timeout_s: float = 60.0) -> bool:
        """Start the broker and wait until it answers; do nothing if it already runs.

        Resolves the jars (once), formats the storage (first start only),
        starts the JVM detached from this process, and waits until the broker
        answers a DescribeCluster request.

        Args:
            timeout_s: longest wait for the started broker to answer.

        Returns:
            True if this call started the broker, False if it was already running.

        Raises:
            DevBrokerError: java 17+ or mvn is missing, the jars cannot be
                resolved, the port is taken, formatting fails, or the broker
                exits or does not answer within ``timeout_s`` (it is then
                stopped, and the message names the log file).
        """
        if not self.start():
            return False
        self.wait_ready(timeout_s)
        return True

    def start(self) -> bool:
        """Start the broker's JVM without waiting for it to answer (see :meth:`up`).

        A node of a multi-node cluster cannot answer until a quorum of
        controllers runs, so a cluster starts every node first and then
        waits on each with :meth:`wait_ready`.

        Returns:
            True if this call started the broker, False if it was already running.
        """
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with file_lock(self._lock_path, f"waiting for another command on the broker in {self.state_dir}..."):
            current = self.status()
            if current is not None:
                logger.debug("broker already running at %s (pid %d)", current.bootstrap, current.pid)
                return False
            self.pid_path.unlink(missing_ok=True)  # stale: its process is gone
            runtime = kafka_runtime(self.kafka_version)
            _check_port_free(self.host, self.port)
            if self.sasl_ssl is not None:
                _check_port_free(self.host, self.sasl_ssl.port)
            state = self._load_state()
            controller_port = self._controller_port(state)
            cluster_id = self.node.cluster_id or self._cluster_id(state)
            self._log4j_path.write_text(_LOG4J2)
            self.config_path.write_text(self._server_properties(controller_port))
            formatted = (self.data_dir / "meta.properties").exists()
            if formatted and self.sasl_ssl is not None and not state.get("sasl_ssl"):
                raise DevBrokerError(f"the broker in {self.state_dir} was formatted without a SASL_SSL listener "
                                     "(its SCRAM user is created at format time); `ktasks dev down --wipe` first")
            if not formatted:
                self._format(runtime, cluster_id)
            state.update(version=_STATE_VERSION, host=self.host, port=self.port,
                         controller_port=controller_port, cluster_id=cluster_id,
                         kafka_version=runtime.kafka_version, libs_dir=str(runtime.libs_dir),
                         node_id=self.node.node_id, started_at=time.time())
            if self.sasl_ssl is not None:
                state["sasl_ssl"] = dataclasses.asdict(self.sasl_ssl)
            self._save_state(state)
            self._spawn(runtime)
            self._started_at = time.monotonic()
            return True

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Wait until the broker started by :meth:`start` answers; stop it if it does not.

        Raises:
            DevBrokerError: the broker exited, or did not answer within
                ``timeout_s`` (the message names the log file).
        """
        proc = self._proc
        if proc is None:
            raise DevBrokerError(f"broker on {self.bootstrap} was not started by this object")
        try:
            self._wait_ready(proc, timeout_s)
        except BaseException:
            self._stop_pid(proc.pid, timeout_s=10.0)
            self.pid_path.unlink(missing_ok=True)
            raise
        logger.info("%s ready in %.1f s", self.bootstrap, time.monotonic() - self._started_at)

    def _controller_port(self, state: dict[str, Any]) -> int:
        if self.node.controller_port is not None:
            _check_port_free(self.host, self.node.controller_port)
            return self.node.controller_port
        recorded = state.get("controller_port")
        if isinstance(recorded, int) and recorded != self.port:
            if _port_is_free(self.host, recorded):
                return recorded
            logger.info("controller port %d is taken now; choosing another", recorded)
        while True:
            port = free_port(self.host)
            if port != self.port:
                return port

    def _cluster_id(self, state: dict[str, Any]) -> str:
        meta = self.data_dir / "meta.properties"
        if meta.exists():
            for line in meta.read_text(errors="replace").splitlines():
                if line.startswith("cluster.id="):
                    return line.split("=", 1)[1].strip()
        recorded = state.get("cluster_id")
        if isinstance(recorded, str) and recorded:
            return recorded
        return new_cluster_id()

    def _server_properties(self, controller_port: int) -> str:
        h, p, c = self.host, self.port, controller_port
        n, rf = self.node.node_id, str(self.node.replication_factor)
        props = {
            "process.roles": "broker,controller",
            "node.id": str(n),
            "controller.quorum.voters": self.node.quorum_voters or f"{n}@{h}:{c}",
            "listeners": f"PLAINTEXT://{h}:{p},CONTROLLER://{h}:{c}",
            "advertised.listeners": f"PLAINTEXT://{h}:{p}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self.data_dir),
            "num.partitions": "1",
            "default.replication.factor": rf,
            "min.insync.replicas": str(self.node.min_insync_replicas),
            "offsets.topic.replication.factor": rf,
            # Fewer partitions of __consumer_offsets: the group coordinator loads faster.
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": rf,
            "transaction.state.log.min.isr": str(self.node.min_insync_replicas),
            "share.coordinator.state.topic.replication.factor": rf,
            "share.coordinator.state.topic.min.isr": str(self.node.min_insync_replicas),
            "group.initial.rebalance.delay.ms": "0",
            # Tests may use short consumer sessions (the broker's default minimum is 6000).
            "group.min.session.timeout.ms": "500",
            "auto.create.topics.enable": "false",
        }
        if self.sasl_ssl is not None:
            s = self.sasl_ssl.port
            props["listeners"] += f",{SASL_LISTENER}://{h}:{s}"
            props["advertised.listeners"] += f",{SASL_LISTENER}://{h}:{s}"
            props["listener.security.protocol.map"] += f",{SASL_LISTENER}:{SASL_LISTENER}"
            props.update(self.sasl_ssl.properties(self.tls_dir))
        props.update(self.node.extra_properties)
        lines = ["# Written by ktasks dev (rewritten at each start)."]
        lines += [f"{key}={value}" for key, value in props.items()]
        return "\n".join(lines) + "\n"

    def _java_command(self, runtime: KafkaRuntime, main: str, *args: str) -> list[str]:
        extra = shlex.split(os.environ.get("KTASKS_DEV_JAVA_OPTS", ""))
        return [runtime.java, *JVM_OPTIONS, *self.node.java_options, *extra, f"-Dlog4j2.configurationFile={self._log4j_path}",
                "-cp", runtime.classpath, main, *args]

    def _format(self, runtime: KafkaRuntime, cluster_id: str) -> None:
        logger.info("formatting storage in %s...", self.data_dir)
        cmd = self._java_command(runtime, "kafka.tools.StorageTool", "format", "-t", cluster_id,
                                 "-c", str(self.config_path), *self.node.format_args,
                                 *(self.sasl_ssl.format_args() if self.sasl_ssl is not None else ()))
        try:
            proc = subprocess.run(cmd, cwd=self.state_dir, stdin=subprocess.DEVNULL, capture_output=True,
                                  text=True, timeout=_FORMAT_TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DevBrokerError(f"formatting the broker storage failed: {exc}") from exc
        if proc.returncode != 0:
            output = (proc.stdout + proc.stderr).splitlines()
            reason = failure_reason(output) or f"exit code {proc.returncode}"
            raise DevBrokerError(f"formatting the broker storage in {self.data_dir} failed: {reason}")

    def _spawn(self, runtime: KafkaRuntime) -> subprocess.Popen[bytes]:
        logger.info("starting broker on %s...", self.bootstrap)
        if self.log_path.exists() and self.log_path.stat().st_size > 0:
            os.replace(self.log_path, self.log_path.with_name(self.log_path.name + ".1"))
        cmd = self._java_command(runtime, "kafka.Kafka", str(self.config_path))
        with open(self.log_path, "ab") as log:
            try:
                proc = subprocess.Popen(cmd, cwd=self.state_dir, stdin=subprocess.DEVNULL, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
            except OSError as exc:
                raise DevBrokerError(f"cannot start {runtime.java}: {exc}") from exc
        self._proc = proc
        _CHILDREN[proc.pid] = proc
        self.pid_path.write_text(f"{proc.pid}\n")
        return proc

    def _wait_ready(self, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            code = proc.poll()
            if code is not None:
                reason = failure_reason(self.read_log(200)) or "no reason in the log"
                raise DevBrokerError(f"broker exited with code {code} while starting: {reason} "
                                     f"(see {self.log_path})")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DevBrokerError(f"broker on {self.bootstrap} did not come up within {timeout_s:g} s; "
                                     f"see {self.log_path}")
            if self._answers(min(remaining, 5.0)):
                return
            time.sleep(min(0.1, max(remaining, 0.0)))

    def _answers(self, timeout_s: float) -> bool:
        """Whether the broker answers DescribeCluster, listing itself unfenced."""
        try:
            with socket.create_connection((self.host, self.port), timeout=min(timeout_s, 1.0)):
                pass
        except OSError:
            return False
        from ..kafka import KafkaAdminClient

        timeout_ms = max(int(timeout_s * 1000), 100)
        admin = None
        try:
            admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="ktasks-dev-probe",
                                     bootstrap_timeout_ms=timeout_ms, request_timeout_ms=timeout_ms)
            cluster = admin.describe_cluster()
        except Exception as exc:  # not ready yet: any client error means "ask again"
            logger.debug("broker not ready yet: %r", exc)
            return False
        finally:
            if admin is not None:
                admin.close()
        brokers = cluster.get("brokers") or []
        return any(b.get("port") == self.port and not b.get("is_fenced") for b in brokers)

    # -- down --------------------------------------------------------------------

    def down(self, wipe: bool = False, timeout_s: float = 30.0) -> bool:
        """Stop the broker this state directory's pid file names, and wait for it to exit.

        Sends SIGTERM (Kafka then shuts down cleanly), and SIGKILL if it has not
        exited after ``timeout_s``. Keeps the data unless ``wipe``, which deletes
        the state directory's contents (data, configuration, log, state).

        Returns:
            True if a running broker was stopped, False if none was running.

        Raises:
            DevBrokerError: the process would not die even after SIGKILL.
        """
        if not self.state_dir.exists():
            return False
        with file_lock(self._lock_path, f"waiting for another command on the broker in {self.state_dir}..."):
            current = self.status()
            if current is not None:
                logger.info("stopping broker %s (pid %d)...", current.bootstrap, current.pid)
                started = time.monotonic()
                self._stop_pid(current.pid, timeout_s)
                logger.info("stopped in %.1f s", time.monotonic() - started)
            self.pid_path.unlink(missing_ok=True)
            if wipe:
                self._wipe()
        if wipe:
            try:
                self._lock_path.unlink(missing_ok=True)
                self.state_dir.rmdir()
            except OSError:
                pass  # something else lives there too: leave it
        return current is not None

    def _stop_pid(self, pid: int, timeout_s: float) -> None:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        if _wait_exit(pid, timeout_s):
            return
        logger.info("broker (pid %d) still running after %g s; killing it", pid, timeout_s)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        if not _wait_exit(pid, _KILL_WAIT_S):
            raise DevBrokerError(f"broker (pid {pid}) did not exit even after SIGKILL")

    def _wipe(self) -> None:
        logger.info("wiping %s", self.state_dir)
        shutil.rmtree(self.data_dir, ignore_errors=True)
        shutil.rmtree(self.tls_dir, ignore_errors=True)
        for path in (self.config_path, self._log4j_path, self.log_path,
                     self.log_path.with_name(self.log_path.name + ".1"), self.pid_path, self._state_path):
            path.unlink(missing_ok=True)

    # -- logs --------------------------------------------------------------------

    def read_log(self, lines: int | None = None) -> list[str]:
        """The last ``lines`` lines of the broker log (all if None), without newlines.

        Returns an empty list when there is no log yet.
        """
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as handle:
                if lines is None:
                    return handle.read().splitlines()
                return [line.rstrip("\n") for line in deque(handle, maxlen=max(lines, 0))]
        except FileNotFoundError:
            return []

    def follow_log(self, lines: int = 10, interval_s: float = 0.2,
                   stop: Callable[[], bool] | None = None) -> Iterator[str]:
        """The last ``lines`` lines of the log, then each line written after this call (``tail -F``).

        The log is opened when this is called, so nothing written afterwards is
        missed however late iteration starts. Follows the log across broker
        restarts (each start replaces the file). Iteration ends when ``stop()``
        returns True, or never if ``stop`` is None.
        """
        handle: TextIO | None = None
        backlog: deque[str] = deque(maxlen=max(lines, 0))
        partial = ""
        try:
            handle = open(self.log_path, encoding="utf-8", errors="replace")  # noqa: SIM115
        except FileNotFoundError:
            pass
        else:
            for line in handle:  # reads to the end: following starts exactly there
                backlog.append(line)
            if backlog and not backlog[-1].endswith("\n"):
                partial = backlog.pop()
        return self._follow(handle, [line.rstrip("\n") for line in backlog], partial, interval_s, stop)

    def _follow(self, handle: TextIO | None, backlog: list[str], partial: str, interval_s: float,
                stop: Callable[[], bool] | None) -> Iterator[str]:
        inode = os.fstat(handle.fileno()).st_ino if handle is not None else None
        try:
            yield from backlog
            while stop is None or not stop():
                chunk = handle.read() if handle is not None else ""
                if chunk:
                    partial += chunk
                    *complete, partial = partial.split("\n")
                    yield from complete
                    continue
                try:
                    current: int | None = os.stat(self.log_path).st_ino
                except FileNotFoundError:
                    current = None
                if current is not None and current != inode:  # replaced by a restart: reopen
                    if handle is not None:
                        handle.close()
                    handle = open(self.log_path, encoding="utf-8", errors="replace")  # noqa: SIM115
                    inode = current
                    if partial:
                        yield partial
                    partial = ""
                    continue
                time.sleep(interval_s)
        finally:
            if handle is not None:
                handle.close()

    # -- files -------------------------------------------------------------------

    def _read_pid(self) -> int | None:
        try:
            return int(self.pid_path.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def _is_our_broker(self, pid: int) -> bool:
        if not _alive(pid):
            return False
        args = _cmdline(pid)
        return args is not None and "kafka.Kafka" in args and str(self.config_path) in args

    def _load_state(self) -> dict[str, Any]:
        try:
            state = json.loads(self._state_path.read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return state if isinstance(state, dict) else {}

    def _save_state(self, state: dict[str, Any]) -> None:
        tmp = self._state_path.with_name(self._state_path.name + ".tmp")
        tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self._state_path)


# -- processes and ports ---------------------------------------------------------------

#: Brokers started by this process, so their exit is reaped (no zombie) and seen at once.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _alive(pid: int) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        del _CHILDREN[pid]
        return False
    return pid_alive(pid)


def _cmdline(pid: int) -> list[str] | None:
    """The argument vector of ``pid``, or None if it cannot be read."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        if sys.platform.startswith("linux"):
            return None
        text = _ps(pid, "command=")
        return text.split() if text else None
    except OSError:
        return None
    return [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg]


def _ps(pid: int, field: str) -> str:
    try:
        out = subprocess.run(["ps", "-o", field, "-p", str(pid)], capture_output=True, text=True,
                             timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip()


def _wait_exit(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the JVM does
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _check_port_free(host: str, port: int) -> None:
    if not _port_is_free(host, port):
        raise DevBrokerError(f"port {port} on {host} is already in use; stop what listens there "
                             "or choose another port")


_LOG_LEVEL = re.compile(r"^\[[^\]]*\] (ERROR|FATAL) (.*?)(?: \([\w.$]+\))?$")
_EXCEPTION = re.compile(r"^(?:Caused by: )?([\w$]+\.)+[\w$]*(?:Exception|Error)\b(?::\s*(.*))?$")


def failure_reason(lines: list[str]) -> str | None:
    """The most telling line about why a Kafka JVM failed, from the tail of its output.

    Prefers the innermost cause of the first exception after the first ERROR,
    then the first ERROR message, then the last non-blank line.
    """
    start = next((i for i, line in enumerate(lines) if _LOG_LEVEL.match(line)), None)
    scan = lines[start:] if start is not None else lines
    exception: str | None = None
    for line in scan:
        stripped = line.strip()
        if _EXCEPTION.match(stripped):
            if exception is None or stripped.startswith("Caused by:"):
                exception = stripped.removeprefix("Caused by: ")
        elif exception is not None and stripped and not stripped.startswith(("at ", "...")):
            break  # end of the first stack trace
    if exception is not None:
        return exception[:500]
    if start is not None:
        match = _LOG_LEVEL.match(lines[start])
        assert match is not None
        return match.group(2)[:500]
    tail = [line.strip() for line in lines if line.strip()]
    return tail[-1][:500] if tail else None
