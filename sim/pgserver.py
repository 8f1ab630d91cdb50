"""A throwaway PostgreSQL on a free loopback port, for the tests and the city simulator.

Design note
-----------
Operations: `start_postgres(workdir=None)` runs ``initdb`` and ``postgres`` and returns a
`PgServer` once a client can connect and the database ``hallgate`` exists: `dsn`
(``postgresql://postgres@127.0.0.1:PORT/hallgate``), `stop()` (fast shutdown: clients are
disconnected, a checkpoint is written), `kill()` (SIGKILL of the postmaster and of every
backend it forked: a crashed database host, every connection cut at once), `restart()` (same
port, same data) and a context manager (stop, then remove a folder it made itself).
`postgres_missing()` says why no PostgreSQL can run here (None when one can).
Goals: the tests run against the database the city runs, not a fake; a missing PostgreSQL
gives one clear error; every wait is bounded and a server that fails to start says why (the
tail of its log).
Plan:
- Binaries: the newest /usr/lib/postgresql/*/bin (Debian's layout; `PG_BIN` overrides).
- PostgreSQL refuses to run as root. Under root the server and initdb run as Debian's
  ``postgres`` user: `subprocess.Popen(user=, group=, extra_groups=[])` (no ``runuser`` in
  between, so `proc.pid` is the postmaster itself and `kill()` hits the right process).
  The folder must then be reachable by that user: pytest's tmp_path lies under a 0700
  /tmp/pytest-of-root, so a `workdir` the user cannot reach is replaced by a fresh
  `tempfile.mkdtemp()` (chowned to it), removed on `__exit__`.
- Settings: trust authentication on 127.0.0.1 only, the unix socket in the data folder (no
  clash with a system server's /var/run/postgresql), ``max_connections`` 300 (96 sites'
  connections plus tests), fsync and synchronous_commit on (a commit is on disk when it
  returns: what the central's receipts promise). initdb runs with ``--no-sync`` (a fresh
  cluster that a crash loses is simply made again).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from .broker import free_port

__all__ = ["PgError", "PgServer", "pg_bin", "postgres_missing", "start_postgres"]

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
DATABASE = "hallgate"
SUPERUSER = "postgres"


class PgError(RuntimeError):
    """PostgreSQL is missing, or did not start (the message says why)."""


def _version(path: str) -> tuple[int, ...]:
    m = re.search(r"/postgresql/([\d.]+)/bin", path)
    return tuple(int(x) for x in m.group(1).split(".") if x) if m else (0,)


def pg_bin() -> Path | None:
    """The folder of the newest PostgreSQL server binaries, or None."""
    env = os.environ.get("PG_BIN")
    if env:
        return Path(env) if (Path(env) / "postgres").exists() else None
    found = [p for p in glob.glob("/usr/lib/postgresql/*/bin") if os.path.exists(p + "/postgres")]
    return Path(max(found, key=_version)) if found else None


def _run_as() -> str | None:
    """The user to run PostgreSQL as: None for ourselves, "postgres" under root."""
    return SUPERUSER if os.geteuid() == 0 else None


def postgres_missing() -> str | None:
    """Why PostgreSQL cannot run here, or None when it can."""
    if pg_bin() is None:
        return ("PostgreSQL is missing: no /usr/lib/postgresql/*/bin/postgres (Debian's "
                "postgresql package; make test installs it), or set PG_BIN")
    if _run_as() is not None:
        try:
            pwd.getpwnam(SUPERUSER)
        except KeyError:
            return (f"running as root, and there is no {SUPERUSER!r} user to run PostgreSQL "
                    "as (it refuses root)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is missing: pip install 'hallgate[city]'"
    return None


def _reachable_by(user: str, path: Path) -> bool:
    """Whether `user` can enter every folder on the way to `path`."""
    pw = pwd.getpwnam(user)
    p = path.resolve()
    for folder in [*reversed(p.parents), p]:
        try:
            st = folder.stat()
        except FileNotFoundError:
            continue  # made by us later, owned by the user
        if st.st_uid == pw.pw_uid:
            ok = st.st_mode & 0o100
        elif st.st_gid == pw.pw_gid:
            ok = st.st_mode & 0o010
        else:
            ok = st.st_mode & 0o001
        if not ok:
            return False
    return True


class PgServer:
    """One PostgreSQL cluster in `root` (data in `root/data`, log in `root/postgres.log`)."""

    def __init__(self, workdir: str | Path | None = None, port: int | None = None, *,
                 max_connections: int = 300) -> None:
        missing = postgres_missing()
        if missing:
            raise PgError(missing)
        self.bin = pg_bin()
        self.user = _run_as()
        self._made = workdir is None or (self.user is not None
                                         and not _reachable_by(self.user, Path(workdir)))
        self.root = Path(tempfile.mkdtemp(prefix="hallgate-pg-")) if self._made \
            else Path(workdir)
        self.root.mkdir(parents=True, exist_ok=True)
        self.data = self.root / "data"
        self.log_path = self.root / "postgres.log"
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.max_connections = max_connections
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def dsn(self) -> str:
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/{DATABASE}"

    def __repr__(self) -> str:
        return f"PgServer({self.dsn}, running={self.running})"

    # -- process ---------------------------------------------------------------------------

    def _as_user(self) -> dict:
        if self.user is None:
            return {}
        return {"user": self.user, "group": self.user, "extra_groups": []}

    def _chown(self, path: Path) -> None:
        if self.user is not None:
            shutil.chown(path, self.user, self.user)

    def _initdb(self) -> None:
        self._chown(self.root)
        self.log_path.touch()
        self._chown(self.log_path)
        out = subprocess.run(
            [str(self.bin / "initdb"), "-D", str(self.data), "-U", SUPERUSER, "-A", "trust",
             "-E", "UTF8", "--no-locale", "--no-sync"],
            capture_output=True, text=True, timeout=120, cwd=self.root, **self._as_user())
        if out.returncode != 0:
            raise PgError(f"initdb failed ({out.returncode}) in {self.data}:\n"
                          f"{out.stdout[-1500:]}{out.stderr[-1500:]}")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = START_TIMEOUT) -> PgServer:
        """Runs the server; returns once database `hallgate` takes connections."""
        if self.running:
            return self
        if not (self.data / "PG_VERSION").exists():
            self._initdb()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
                 "-c", f"listen_addresses={self.host}",
                 "-c", f"unix_socket_directories={self.data}",
                 "-c", f"max_connections={self.max_connections}",
                 "-c", "fsync=on", "-c", "synchronous_commit=on",
                 "-c", "shared_buffers=64MB",  # 300 connections fit the default shm
                 "-c", "log_min_messages=warning", "-c", "log_connections=off"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.root,
                start_new_session=True, **self._as_user())
        self.starts += 1
        import psycopg

        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise PgError(f"postgres exited with code {self.proc.returncode} on port "
                              f"{self.port}:\n{self.log_tail()}")
            try:
                with psycopg.connect(host=self.host, port=self.port, user=SUPERUSER,
                                     dbname="postgres", autocommit=True,
                                     connect_timeout=2) as c:
                    if not c.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                     (DATABASE,)).fetchone():
                        c.execute(f"CREATE DATABASE {DATABASE}")
                return self
            except psycopg.Error as e:  # starting up, or not listening yet
                last = str(e).strip()
                time.sleep(0.05)
        self.kill()
        raise PgError(f"postgres did not take connections on {self.host}:{self.port} within "
                      f"{timeout} s ({last}):\n{self.log_tail()}")

    def _children(self, pid: int) -> list[int]:
        out = []
        for stat in glob.glob("/proc/[0-9]*/stat"):
            try:
                text = Path(stat).read_text()
            except OSError:
                continue
            fields = text.rsplit(")", 1)[-1].split()
            if len(fields) > 1 and int(fields[1]) == pid:
                out.append(int(stat.split("/")[2]))
        return out

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Fast shutdown (SIGINT): clients are cut, a checkpoint written; data kept."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                return
        self.proc = None

    def kill(self) -> None:
        """SIGKILL the postmaster and its backends: every connection is cut at once, as
        when the database host dies (committed data survives: fsync is on)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            children = self._children(self.proc.pid)
            for pid in [self.proc.pid, *children]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.proc.wait(timeout=STOP_TIMEOUT)
            # The backends must be gone before a restart (they hold the shared memory).
            deadline = time.monotonic() + STOP_TIMEOUT
            while time.monotonic() < deadline and any(
                    os.path.exists(f"/proc/{pid}") and _alive(pid) for pid in children):
                time.sleep(0.02)
        self.proc = None

    def restart(self, *, kill: bool = False, timeout: float = START_TIMEOUT) -> PgServer:
        """Stops (or kills) and starts again on the same port and data (crash recovery
        runs after a kill)."""
        self.kill() if kill else self.stop()
        return self.start(timeout=timeout)

    def close(self) -> None:
        """Stops the server and removes the folder when it made it itself."""
        self.stop()
        if self._made:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PgServer:
        return self.start() if not self.running else self

    def __exit__(self, *exc) -> None:
        self.close()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


def _alive(pid: int) -> bool:
    """Not yet reaped and not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def start_postgres(workdir: str | Path | None = None, *, timeout: float = START_TIMEOUT,
                   port: int | None = None, max_connections: int = 300) -> PgServer:
    """A running `PgServer` (PgError saying why when it cannot be)."""
    pg = PgServer(workdir, port, max_connections=max_connections)
    try:
        return pg.start(timeout=timeout)
    except BaseException:
        pg.close()
        raise
