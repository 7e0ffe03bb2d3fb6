"""What the dev broker runs on: a Java 17+ runtime and the Apache Kafka jars.

The jars come from one of two places:

* ``$KAFKA_HOME/libs`` when ``KAFKA_HOME`` points at an Apache Kafka
  distribution (its own version is used, whatever :data:`KAFKA_VERSION` says);
* otherwise ``org.apache.kafka:kafka_2.13`` with its runtime dependencies and a
  log4j2 binding, resolved from Maven Central with ``mvn`` once into
  ``<cache>/kafka-<version>/libs`` and reused afterwards.

The cache directory is written under a temporary name and renamed into place
when complete, so an interrupted download is never mistaken for a finished one,
and a lock file keeps two processes (two ``ktasks dev up``, two test sessions)
from resolving at the same time.

Environment variables read here:

``KTASKS_JAVA``
    The ``java`` binary to use (default: ``$JAVA_HOME/bin/java``, then ``java`` on ``PATH``).
``KTASKS_MVN``
    The ``mvn`` binary to use (default: ``mvn`` on ``PATH``).
``KAFKA_HOME``
    An Apache Kafka distribution whose ``libs/`` to use instead of Maven Central.
``KTASKS_CACHE_DIR``
    Cache root (default: ``$XDG_CACHE_HOME/ktasks``, else ``~/.cache/ktasks``).
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import DevBrokerError

__all__ = [
    "KAFKA_VERSION",
    "MIN_JAVA_MAJOR",
    "KafkaRuntime",
    "cache_root",
    "file_lock",
    "find_java",
    "java_major_version",
    "kafka_runtime",
    "resolve_jars",
]

logger = logging.getLogger(__name__)

#: The Apache Kafka release the dev broker runs (inside kafka-python 3's tested range).
KAFKA_VERSION = "4.3.1"
#: Kafka 4.x needs Java 17 or newer.
MIN_JAVA_MAJOR = 17

_SCALA_VERSION = "2.13"
_LOG4J_VERSION = "2.25.3"
# Kafka itself pulls slf4j-api 1.7.x, which cannot bind log4j-slf4j2-impl: pin 2.x.
_SLF4J_VERSION = "2.0.17"
_MVN_TIMEOUT_S = 900.0
_JAVA_VERSION_TIMEOUT_S = 30.0

_POM = """\
<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by ktasks: the jars of the local development broker. -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.ktasks</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>{kafka}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_{scala}</artifactId>
      <version>{kafka}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId>
      <version>{log4j}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j2-impl</artifactId>
      <version>{log4j}</version>
    </dependency>
    <dependency>
      <groupId>org.slf4j</groupId>
      <artifactId>slf4j-api</artifactId>
      <version>{slf4j}</version>
    </dependency>
  </dependencies>
</project>
"""


@dataclass(frozen=True)
class KafkaRuntime:
    """A Java binary and the Kafka jars to run with it."""

    java: str
    """Absolute path of a Java 17+ ``java`` binary."""
    libs_dir: Path
    """Directory holding Kafka's jars and their dependencies."""
    kafka_version: str
    """Version of ``kafka_2.13-<version>.jar`` found in :attr:`libs_dir`."""

    @property
    def classpath(self) -> str:
        """The ``-cp`` argument: every jar in :attr:`libs_dir`."""
        return str(self.libs_dir / "*")


def cache_root() -> Path:
    """Root of ktasks' cache: ``$KTASKS_CACHE_DIR``, ``$XDG_CACHE_HOME/ktasks`` or ``~/.cache/ktasks``."""
    explicit = os.environ.get("KTASKS_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "ktasks"


# -- Java --------------------------------------------------------------------------


def find_java() -> str:
    """The ``java`` binary to run the broker with, checked to be Java 17 or newer.

    Looks at ``$KTASKS_JAVA``, then ``$JAVA_HOME/bin/java``, then ``java`` on ``PATH``.

    Raises:
        DevBrokerError: no java found, it does not run, or it is older than 17.
    """
    explicit = os.environ.get("KTASKS_JAVA")
    java_home = os.environ.get("JAVA_HOME")
    if explicit:
        candidate: str | None = shutil.which(explicit) or (explicit if os.path.exists(explicit) else None)
        if candidate is None:
            raise DevBrokerError(f"java not found: KTASKS_JAVA={explicit} does not exist "
                                 f"(Java {MIN_JAVA_MAJOR}+ is needed to run Kafka)")
        source = "KTASKS_JAVA"
    elif java_home and os.path.exists(os.path.join(java_home, "bin", "java")):
        candidate = os.path.join(java_home, "bin", "java")
        source = "JAVA_HOME"
    else:
        candidate = shutil.which("java")
        if candidate is None:
            raise DevBrokerError(f"java not found on PATH: install Java {MIN_JAVA_MAJOR}+ "
                                 "(or set JAVA_HOME or KTASKS_JAVA) to run the dev broker")
        source = "PATH"
    java = os.path.abspath(candidate)
    major = java_major_version(java)
    if major < MIN_JAVA_MAJOR:
        raise DevBrokerError(f"{java} (from {source}) is Java {major}; "
                             f"Kafka needs Java {MIN_JAVA_MAJOR} or newer")
    return java


def java_major_version(java: str) -> int:
    """Major version of ``java``, from ``java -version`` (``1.8.0_292`` is 8, ``17.0.15`` is 17).

    Raises:
        DevBrokerError: the binary cannot be run or its output is not understood.
    """
    try:
        proc = subprocess.run([java, "-version"], stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=_JAVA_VERSION_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DevBrokerError(f"cannot run {java} -version: {exc}") from exc
    output = proc.stderr + proc.stdout
    major = parse_java_major(output)
    if proc.returncode != 0 or major is None:
        first = output.strip().splitlines()[0] if output.strip() else f"exit code {proc.returncode}"
        raise DevBrokerError(f"cannot tell the version of {java}: {first}")
    return major


def parse_java_major(version_output: str) -> int | None:
    """Major version from the text of ``java -version``, or None if there is none."""
    match = re.search(r'version "([^"]+)"', version_output)
    if match is None:
        return None
    numbers = re.findall(r"\d+", match.group(1))
    if not numbers:
        return None
    major = int(numbers[0])
    if major == 1 and len(numbers) > 1:  # "1.8.0_292" is Java 8
        major = int(numbers[1])
    return major


# -- jars --------------------------------------------------------------------------


def kafka_runtime(version: str = KAFKA_VERSION) -> KafkaRuntime:
    """Java and the Kafka jars, resolving the jars first if they are not cached.

    Java is checked first, so a machine without it fails fast instead of
    downloading anything.
    """
    java = find_java()
    libs, found_version = resolve_jars(version)
    return KafkaRuntime(java=java, libs_dir=libs, kafka_version=found_version)


def resolve_jars(version: str = KAFKA_VERSION) -> tuple[Path, str]:
    """Directory of the broker's jars and the Kafka version found there.

    Uses ``$KAFKA_HOME/libs`` when ``KAFKA_HOME`` is set; otherwise the cached
    Maven resolution of ``version``, running ``mvn`` once if it is not cached.

    Raises:
        DevBrokerError: ``KAFKA_HOME`` is not a Kafka distribution, ``mvn`` is
            missing, or the resolution fails.
    """
    kafka_home = os.environ.get("KAFKA_HOME")
    if kafka_home:
        libs = Path(kafka_home).expanduser() / "libs"
        found = _kafka_version_in(libs)
        if found is None:
            raise DevBrokerError(f"KAFKA_HOME={kafka_home} is not an Apache Kafka distribution: "
                                 f"no kafka_{_SCALA_VERSION}-*.jar in {libs}")
        logger.debug("using Kafka %s jars from %s", found, libs)
        return libs, found

    final = cache_root() / f"kafka-{version}"
    libs = final / "libs"
    if _kafka_version_in(libs) == version:
        return libs, version
    final.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(final.parent / f"kafka-{version}.lock",
                   f"waiting for another process resolving the Kafka {version} jars..."):
        if _kafka_version_in(libs) == version:  # someone else finished while we waited
            return libs, version
        _download(version, final)
    return libs, version


def _kafka_version_in(libs: Path) -> str | None:
    """Version of the ``kafka_2.13-<version>.jar`` in ``libs``, or None."""
    if not libs.is_dir():
        return None
    pattern = re.compile(rf"^kafka_{re.escape(_SCALA_VERSION)}-(\d[^-]*)\.jar$")
    for jar in sorted(libs.iterdir()):
        match = pattern.match(jar.name)
        if match:
            return match.group(1)
    return None


def _download(version: str, final: Path) -> None:
    """Resolve the jars with mvn into a temporary sibling of ``final``, then rename it into place."""
    mvn = _find_mvn()
    parent = final.parent
    for stale in parent.glob(f"{final.name}.tmp-*"):  # left by an interrupted run; we hold the lock
        shutil.rmtree(stale, ignore_errors=True)
    if final.exists():  # incomplete (no kafka jar): set it aside
        shutil.rmtree(final)
    mvn_log = parent / f"{final.name}.mvn.log"
    logger.info("resolving Kafka %s jars from Maven Central (once)...", version)
    tmp = Path(tempfile.mkdtemp(prefix=f"{final.name}.tmp-", dir=parent))
    tmp.chmod(0o755)
    try:
        (tmp / "pom.xml").write_text(_POM.format(kafka=version, scala=_SCALA_VERSION,
                                                 log4j=_LOG4J_VERSION, slf4j=_SLF4J_VERSION))
        cmd = [mvn, "-B", "-q", "-Dstyle.color=never", "dependency:copy-dependencies",
               "-DoutputDirectory=libs", "-DincludeScope=runtime"]
        try:
            with open(mvn_log, "wb") as out:
                proc = subprocess.run(cmd, cwd=tmp, stdin=subprocess.DEVNULL, stdout=out,
                                      stderr=subprocess.STDOUT, timeout=_MVN_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired as exc:
            raise DevBrokerError(f"resolving Kafka {version} jars with mvn took more than "
                                 f"{_MVN_TIMEOUT_S:.0f} s; see {mvn_log}") from exc
        except OSError as exc:
            raise DevBrokerError(f"cannot run {mvn}: {exc}") from exc
        if proc.returncode != 0:
            reason = _mvn_error(mvn_log.read_text(errors="replace"))
            raise DevBrokerError(f"could not resolve Kafka {version} jars from Maven Central "
                                 f"(mvn exit code {proc.returncode}): {reason}; see {mvn_log}")
        if _kafka_version_in(tmp / "libs") != version:
            raise DevBrokerError(f"mvn finished but no kafka_{_SCALA_VERSION}-{version}.jar was "
                                 f"resolved; see {mvn_log}")
        shutil.copy(mvn_log, tmp / "mvn.log")
        os.replace(tmp, final)  # atomic: the cache is either complete or absent
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    jars = sum(1 for _ in (final / "libs").glob("*.jar"))
    logger.info("resolved %d jars into %s", jars, final / "libs")


def _find_mvn() -> str:
    explicit = os.environ.get("KTASKS_MVN")
    if explicit:
        found = shutil.which(explicit)
        if found is None:
            raise DevBrokerError(f"mvn not found: KTASKS_MVN={explicit} does not exist (Maven is needed "
                                 f"once to download Kafka {KAFKA_VERSION}; or set KAFKA_HOME)")
        return found
    found = shutil.which("mvn")
    if found is None:
        raise DevBrokerError(f"mvn not found on PATH: install Maven (needed once to download Kafka "
                             f"{KAFKA_VERSION} from Maven Central) or set KAFKA_HOME to a Kafka distribution")
    return found


def _mvn_error(output: str) -> str:
    """The most telling line of mvn's output, without its ``[ERROR]`` prefix nor ``-> [Help 1]``."""
    output = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", output)  # mvn prints colour resets even in batch mode
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [re.sub(r"\s*-> \[Help \d+\]$", "", line.removeprefix("[ERROR]")).strip()
              for line in lines if line.startswith("[ERROR]")]
    errors = [line for line in errors if line and not line.startswith(("->", "To see", "Re-run", "For more"))]
    if errors:
        return errors[0][:400]
    return lines[-1][:400] if lines else "no output"


@contextmanager
def file_lock(path: Path, waiting_message: str | None = None) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the duration.

    The lock goes away with the process, so a killed holder never leaves it
    stuck. ``waiting_message`` is logged if another process holds it.
    """
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting_message:
                logger.info("%s", waiting_message)
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
