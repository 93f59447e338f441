"""A real Postgres server for the durable tests: never a mock.

`running_postgres` runs ``initdb`` into a temporary directory, starts the server
on a free loopback port (its unix socket in that directory too), creates the
database ``hybrid`` and stops the server at the end. `PostgresServer.stop` and
`PostgresServer.start` take it down and bring it back, for the tests of a
dropped connection.

Postgres refuses to run as root: when the tests run as root (containers, CI),
the server's commands run as the ``postgres`` system user (Debian's
``postgresql`` package creates it) through ``runuser``, and the directory is
handed to that user.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Generator
from pathlib import Path
from typing import final

from tests.ports import free_port

BINARIES = ("initdb", "pg_ctl", "postgres")
"""The server programs the helper needs, all in one directory."""

SERVER_USER = "postgres"
"""Who runs the server when the tests run as root."""

DATABASE = "hybrid"
"""The database the tests use (each test in a schema of its own)."""


def find_bindir() -> Path | None:
    """The directory holding `BINARIES`: from PATH, else the newest ``/usr/lib/postgresql/*/bin``."""
    candidates: list[Path] = []
    initdb = shutil.which("initdb")
    if initdb is not None:
        candidates.append(Path(initdb).resolve().parent)

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", path.parent.name))

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    for bindir in candidates:
        if all(os.access(bindir / name, os.X_OK) for name in BINARIES):
            return bindir
    return None


def missing_reason() -> str | None:
    """Why the Postgres tests cannot run here, or None if they can."""
    if importlib.util.find_spec("psycopg") is None:
        return "psycopg is not installed: pip install 'trio-hybrid[durable-postgres]'"
    if find_bindir() is None:
        return (
            "no Postgres server (initdb, pg_ctl, postgres) in PATH or /usr/lib/postgresql/*/bin:"
            " install Debian's postgresql package"
        )
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            return f"running as root, and there is no {SERVER_USER!r} user to run the Postgres server as"
    return None


@final
class PostgresServer:
    """One Postgres cluster in a temporary directory, listening on 127.0.0.1 only.

    Args:
        bindir: the directory of ``initdb``, ``pg_ctl`` and ``postgres``.
        root: an empty directory that the server's user may write.
    """

    def __init__(self, bindir: Path, root: Path) -> None:
        self.bindir = bindir
        """Where the server programs are."""
        self.root = root
        """The temporary directory: data, socket and log."""
        self.port = 0
        """The TCP port, chosen at the first `start` and kept across restarts."""
        self._schemas = itertools.count(1)
        self._as_server_user: list[str] = (
            ["runuser", "-u", SERVER_USER, "--"] if os.geteuid() == 0 else []
        )  # fmt: skip

    @property
    def data(self) -> Path:
        """The cluster's data directory."""
        return self.root / "data"

    def url(self, database: str = DATABASE) -> str:
        """A libpq URL of `database` on this server, as the superuser (trust auth on loopback)."""
        return f"postgresql://{SERVER_USER}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> None:
        result = subprocess.run(
            [*self._as_server_user, *args], capture_output=True, text=True, check=False, cwd=self.root
        )
        if result.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}{result.stderr}{tail}")

    def initdb(self) -> None:
        """Create the cluster: trust authentication, UTF-8, C locale."""
        self._run(
            str(self.bindir / "initdb"), "-D", str(self.data), "-U", SERVER_USER, "--auth=trust",
            "--encoding=UTF8", "--no-locale", "--no-sync",
        )  # fmt: skip

    def start(self) -> None:
        """Start the server (on a new free port the first time; on the same port after `stop`)."""
        attempts = 1 if self.port else 3
        for attempt in range(attempts):
            if not self.port or attempt:
                self.port = free_port()
                self._configure()
            try:
                self._pg_ctl("start", "-l", str(self.root / "server.log"), "-t", "60")
                return
            except RuntimeError:  # another process took the port between probe and bind
                if attempt == attempts - 1:
                    raise

    def _configure(self) -> None:
        settings = (
            f"port = {self.port}\n"
            "listen_addresses = '127.0.0.1'\n"
            f"unix_socket_directories = '{self.root}'\n"
            "max_connections = 40\n"
        )
        with (self.data / "postgresql.auto.conf").open("w") as conf:
            conf.write(settings)

    def stop(self) -> None:
        """Stop the server now (fast shutdown: clients are disconnected)."""
        self._pg_ctl("stop", "-m", "fast")

    def _pg_ctl(self, *args: str) -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-w", *args)

    def create_database(self, name: str = DATABASE) -> None:
        """Create a database on the running server."""
        import psycopg  # noqa: PLC0415 - an extra: imported only when Postgres runs
        from psycopg import sql  # noqa: PLC0415

        with psycopg.connect(self.url("postgres"), autocommit=True) as connection:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def new_schema_url(self) -> str:
        """The URL of a fresh, empty schema in `DATABASE`: the journal's tables go there."""
        import psycopg  # noqa: PLC0415
        from psycopg import sql  # noqa: PLC0415

        schema = f"test_{next(self._schemas)}"
        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        return f"{self.url()}?options=-csearch_path%3D{schema}"


@contextlib.contextmanager
def running_postgres(bindir: Path) -> Generator[PostgresServer]:
    """A started `PostgresServer` with the database `DATABASE`; stopped and deleted at the end."""
    root = Path(tempfile.mkdtemp(prefix="hybrid-postgres-"))
    try:
        if os.geteuid() == 0:
            user = pwd.getpwnam(SERVER_USER)
            os.chown(root, user.pw_uid, user.pw_gid)
        server = PostgresServer(bindir, root)
        server.initdb()
        server.start()
        try:
            server.create_database()
            yield server
        finally:
            with contextlib.suppress(RuntimeError):  # stopped already (a test left it down)
                server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
