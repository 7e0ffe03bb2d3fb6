"""Building the reference enqueuers in clients/ and running their command lines.

Each client is built (and its own unit tests run against protocol/vectors/)
through its project files only: ``npm ci`` from package-lock.json, ``go``
from go.mod/go.sum, ``mvn package`` from pom.xml. Dependencies land in the
usual caches (~/.npm, ~/go/pkg/mod, ~/.m2). A missing toolchain is an error
naming what to install, never a skip.

Builds are remembered: a stamp file holds a digest of everything the build
reads (the client's sources and project files, the vectors). While the digest
is unchanged, the build and unit tests are not run again; any change to the
client or the vectors runs them afresh.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.protocol.vectors import ROOT, VECTORS

CLIENTS = ROOT / "clients"
BUILD_TIMEOUT_S = 900.0
RUN_TIMEOUT_S = 120.0
#: Build outputs and dependency folders (paths under clients/), left out of a client's digest.
_NOT_INPUTS = ("node/node_modules", "java/target", "go/bin", "node/.ktasks-build", "go/.ktasks-build",
               "java/.ktasks-build")


@dataclass(frozen=True)
class Client:
    name: str
    tools: tuple[str, ...]
    build_steps: tuple[tuple[str, ...], ...]
    cli: tuple[str, ...]

    @property
    def dir(self) -> Path:
        return CLIENTS / self.name

    @property
    def stamp(self) -> Path:
        return self.dir / ".ktasks-build"

    def command(self, *args: str) -> list[str]:
        return [str(self.dir / part) if part.startswith("./") else part for part in self.cli] + list(args)


CLIENT_LIST = (
    Client("node", ("node", "npm"),
           (("npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"), ("node", "--test", "test/")),
           ("node", "./bin/ktasks-enqueue.js")),
    Client("go", ("go",),
           (("go", "test", "./..."), ("go", "build", "-o", "bin/ktasks-enqueue", "./cmd/ktasks-enqueue")),
           ("./bin/ktasks-enqueue",)),
    Client("java", ("java", "mvn"),
           (("mvn", "-q", "-B", "package"),),
           # A short-lived command: the quick JIT tier and the serial collector start it fastest.
           ("java", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-cp", "./target/classes:./target/lib/*",
            "dev.ktasks.enqueue.Cli")),
)
CLIENTS_BY_NAME = {c.name: c for c in CLIENT_LIST}


class BuildError(AssertionError):
    """A client could not be built, or its own tests failed."""


def _digest(client: Client) -> str:
    h = hashlib.sha256()
    skip = tuple(CLIENTS / p for p in _NOT_INPUTS)
    for base in (client.dir, VECTORS):
        for path in sorted(base.rglob("*")):
            if path.is_file() and not any(path == s or s in path.parents for s in skip):
                h.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def build(client: Client) -> None:
    """Build ``client`` and run its unit tests, unless its inputs are unchanged since the last success."""
    missing = [tool for tool in client.tools if shutil.which(tool) is None]
    if missing:
        raise BuildError(f"the {client.name} client needs {', '.join(missing)} on PATH "
                         f"(Node.js 18+ with npm, Go 1.26+, Java 17+ with Maven); install it to run these tests")
    digest = _digest(client)
    if client.stamp.exists() and client.stamp.read_text().strip() == digest and _outputs_exist(client):
        return
    client.stamp.unlink(missing_ok=True)
    for step in client.build_steps:
        try:
            done = subprocess.run(step, cwd=client.dir, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S,
                                  env=_env())
        except subprocess.TimeoutExpired as exc:
            raise BuildError(f"{client.name}: `{' '.join(step)}` took over {BUILD_TIMEOUT_S:.0f} s") from exc
        if done.returncode != 0:
            raise BuildError(f"{client.name}: `{' '.join(step)}` failed ({done.returncode}):\n"
                             f"{done.stdout[-6000:]}\n{done.stderr[-6000:]}")
    client.stamp.write_text(digest + "\n")


def _outputs_exist(client: Client) -> bool:
    wanted = {"node": "node_modules/kafkajs/package.json", "go": "bin/ktasks-enqueue",
              "java": "target/classes/dev/ktasks/enqueue/Cli.class"}[client.name]
    return (client.dir / wanted).exists()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["KTASKS_VECTORS"] = str(VECTORS)
    return env


def run_cli(client: Client, *args: str) -> list[dict[str, Any]]:
    """Run the client's command line; returns the JSON lines it prints (where each record went)."""
    if client.name == "go":  # Go's flag package: one dash (two work too, but say what the usage says)
        args = tuple(a[1:] if a.startswith("--") else a for a in args)
    done = subprocess.run(client.command(*args), cwd=client.dir, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S, env=_env())
    assert done.returncode == 0, f"{client.name} CLI failed ({done.returncode}): {done.stderr[-4000:]}"
    sent = [dict(json.loads(line)) for line in done.stdout.splitlines() if line.strip()]
    for where in sent:
        where["offset"] = int(where["offset"])  # kafkajs reports offsets as strings
    return sent
