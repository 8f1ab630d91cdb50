"""The city's central workers: many sites' central services over a few processes, one
PostgreSQL store, a clustered broker.

Design note
-----------
Operations: `hallgate central worker --city city.toml --name w1` runs one `CityWorker`
(`load_city(path)` reads the city file, `CityWorker(city, name).run(stop_event)` serves until
the event is set). Several workers (on one or several machines) share the city's sites: each
site is served by exactly one worker at a time, a `Central` + `CentralService` as
`hallgate central run` has for one hall (client id ``hallgate-central-{site}``, a persistent
session, the city's brokers as failover URLs, the city's database as store). Every change
of ownership is one JSON line on stdout (`events`), ``{"ts": epoch, "at": ISO, "worker",
"site", "owned": true|false, "reason"}``, and a log line; reasons: "free" (taken: the lock
was free; with "load_s", the time to load the site and start its service), "lost-lock"
(its connection is gone), "share" (handed over to a worker with fewer), "stop". Lines
without a site: "start" (with "pid"), "stopped", "overview-lead", "overview-lost".
One city per database: a store's rows are keyed by site name.

Goals:
- Exactly one owner per site, fenced: a worker owns a site while ONE PostgreSQL connection
  of its own holds the site's advisory lock (``pg_try_advisory_lock``), and that very
  connection is the site's store: every commit goes through it. A worker that lost the
  connection (the database restarted, the network cut it, the server killed it) cannot
  commit another event for the site, whatever it believes; the lock was freed with the
  connection, and another worker may now own the site. Each poll the worker checks every
  site's connection and stops at once the service of a site whose connection is gone (a
  silent stop: its "offline" must not overwrite the new owner's "online").
- A dead worker's sites are served again within seconds: SIGKILL closes its sockets, so
  PostgreSQL ends its backends and frees their locks at once; the others see the locks free
  on their next poll (every `poll_s`, 0.5 s) and take them. Events published meanwhile wait
  in the site's MQTT session (persistent, per client id), unacknowledged ones included (the
  central acks after its commit), and gateways re-send whatever has no receipt.
- A fair share: a worker owns at most ceil(sites / live workers) sites, so 3 workers split
  96 sites 32 each, and 2 take 48 each after one dies. Live workers are counted in
  PostgreSQL too: each holds a lock of its own name (``pg_locks``), so a dead worker stops
  counting the moment its connection closes, not after a heartbeat times out. A worker with
  more than its share hands one site per poll over (a silent stop: the site's session stays
  with the broker, the next owner resumes it). A worker waits `settle_s` after it starts
  before taking sites, so workers started together count each other first.
Plan:
- One control connection per worker: its own lock (a second worker with the same name is
  refused), the counts from ``pg_locks``, the city overview's lock (`lead_city`, a hook).
  One connection per owned site, plus one spare to try locks with (it becomes the site's
  connection when it gets one). 32 sites: 34 connections.
- Lock keys: two int4 (``pg_try_advisory_lock(ns, key)``): `ns` says the kind (site,
  worker, overview) and the city (a CRC of both), `key` the site or worker name (a CRC);
  two sites whose names give one key are refused when the city file is read.
- Threads: one poll thread (ownership), one tick thread for every service (`tick_due`:
  voting timeouts, the wait watch, stats), and per site paho's network thread and the
  service's worker thread (group commits). With the service's own ticker a site costs 3
  threads; the shared one saves a third of them (96 fewer at 96 sites per process).
Measured here (2 cores, mosquitto, bench/central_pg.py and a 96-site, 3-worker run): a
worker with 32 sites idles at ~45 MB RSS and 66 threads (96 sites: ~59 MB, 194 threads);
it drains ~5,200-5,700 events/s into PostgreSQL (the same sites on SQLite files:
~3,600-3,800); a SIGKILLed worker's 32 sites are all owned again within ~1.0-1.2 s (the
first within 0.2-0.4 s).

The city file (TOML), every relative path taken from the file's folder::

    [city]
    name = "msk"                                   # 1-64 letters, digits, '.', '_', '-'
    brokers = ["mqtt://127.0.0.1:4101", "mqtt://127.0.0.1:4102"]   # failover order
    protocol = "3.1.1"                             # optional, default "3.1.1" (or "5")
    desired = "site"                               # optional, default "windows"; with
    desired_batch_s = 0.25                         # ... its interval (central/desired.py)
    database = "postgresql://postgres@127.0.0.1:5999/hallgate"
    username = "central"                           # optional: broker user ...
    password = "..."                               # ... and password
    ca_file = "ca.crt"                             # optional, mqtts:// brokers only
    cert_file = "central.crt"                      # optional, with key_file
    key_file = "central.key"
    [[sites]]                                      # one per site, names unique
    name = "c001"
    queue = "c001.toml"     # the site's central config (central/config.py)

A site's queue file is the central config of `hallgate central run`; in the city its
``site`` must be the `[[sites]]` name when present, and its ``broker``, ``database``,
``client_id``, ``protocol``, ``desired`` and TLS keys are not used (the city's are: every
gateway of the city subscribes the same way). A key the city
file does not know, a missing or bad value in either file, a file that cannot be read, a
duplicate site: `CityConfigError` naming the file, the key and its line (or the site and
its queue file's key); the command exits 2.
"""

from __future__ import annotations

import json
import logging
import math
import re
import select
import sys
import threading
import time
import tomllib
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from .clock import Clock, SystemClock, utc_ts
from .config import CentralConfig, ConfigError, desired_shape, load_config_dict

__all__ = ["City", "CityConfigError", "CitySite", "CityWorker", "OverviewLead", "load_city"]

log = logging.getLogger(__name__)

_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
CITY_KEYS = {"name", "brokers", "protocol", "database", "username", "password", "ca_file",
             "cert_file", "key_file", "desired", "desired_batch_s"}
SITE_KEYS = {"name", "queue"}


class CityConfigError(ValueError):
    """A city file a worker cannot run with; the message names the file, key and line."""


@dataclass(frozen=True)
class CitySite:
    name: str
    queue_file: Path
    config: CentralConfig  # its queue, tick_s, stats_s, dedupe_days

    @property
    def client_id(self) -> str:
        return f"hallgate-central-{self.name}"


@dataclass(frozen=True)
class City:
    path: Path
    name: str
    brokers: list[str]
    database: str
    sites: list[CitySite]
    protocol: str = "3.1.1"
    desired: str = "windows"
    desired_batch_s: float = 0.25
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    site_keys: dict[str, int] = field(default_factory=dict)  # site -> its lock key

    def tls_options(self) -> dict[str, str]:
        return {k: str(v) for k in ("ca_file", "cert_file", "key_file")
                if (v := getattr(self, k)) is not None}


def _key(text: str) -> int:
    """A non-negative int4 lock key (pg_locks shows it as an oid: keep it below 2**31)."""
    return zlib.crc32(text.encode()) & 0x7FFFFFFF


def _line_of(text: str, key: str, start: int = 0, table: str | None = None) -> int | None:
    """The line (1-based) of ``key = ...`` at or after line `start`, inside the table
    header `table` when given (the first one after `start`); None if not found."""
    lines = text.splitlines()
    i = start
    if table is not None:
        while i < len(lines) and lines[i].strip() != table:
            i += 1
    k = re.escape(key)
    pat = re.compile(rf"\s*(?:[\"']?{k}[\"']?\s*=|\[+\s*{k}\s*\]+)")  # key = or [key]
    for n in range(i, len(lines)):
        if pat.match(lines[n]):
            return n + 1
    return None


def _site_starts(text: str) -> list[int]:
    """The 0-based line of every ``[[sites]]`` header."""
    return [i for i, ln in enumerate(text.splitlines()) if ln.strip() == "[[sites]]"]


def load_city(path: str | Path) -> City:
    """Reads and checks a city file and every site's queue file (`CityConfigError`)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        d = tomllib.loads(text)
    except OSError as e:
        raise CityConfigError(f"{path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise CityConfigError(f"{path}: not UTF-8 text: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise CityConfigError(f"{path}: not valid TOML: {e}") from None

    def fail(msg: str, key: str | None = None, start: int = 0, table: str | None = None):
        line = _line_of(text, key, start, table) if key else None
        where = f"{path}:{line}" if line else str(path)
        raise CityConfigError(f"{where}: {msg}")

    for top in d:
        if top not in ("city", "sites"):
            fail(f"{top}: unknown key (a city file has [city] and [[sites]])", top)
    c = d.get("city")
    if not isinstance(c, dict):
        fail("[city]: missing (name, brokers, database)")
    assert isinstance(c, dict)
    for k in c:
        if k not in CITY_KEYS:
            fail(f"city.{k}: unknown key (known: {', '.join(sorted(CITY_KEYS))})", k,
                 table="[city]")

    def get(key: str, kind: type, required: bool = True):
        if key not in c:
            if required:
                fail(f"city.{key}: missing")
            return None
        v = c[key]
        if not isinstance(v, kind) or isinstance(v, bool):
            fail(f"city.{key}: {v!r} is not a {kind.__name__}", key, table="[city]")
        return v

    name = get("name", str)
    if not _NAME.fullmatch(name):
        fail(f"city.name: {name!r}: use 1-64 letters, digits, '.', '_' or '-'", "name",
             table="[city]")
    brokers = get("brokers", list)
    if not brokers:
        fail("city.brokers: at least one mqtt://host[:port]", "brokers", table="[city]")
    for b in brokers:
        ok = isinstance(b, str)
        if ok:
            parts = urlsplit(b)
            try:
                parts.port  # noqa: B018 (raises on a bad port)
            except ValueError:
                ok = False
            ok = ok and parts.scheme in ("mqtt", "mqtts") and bool(parts.hostname) \
                and parts.path in ("", "/")
        if not ok:
            fail(f"city.brokers: {b!r}: mqtt://host[:port] or mqtts://host[:port]",
                 "brokers", table="[city]")
    if len({b.split(":", 1)[0] for b in brokers}) > 1:
        fail("city.brokers: all mqtt:// or all mqtts:// (one TLS set-up per client)",
             "brokers", table="[city]")
    protocol = get("protocol", str, required=False) or "3.1.1"
    if protocol not in ("3.1.1", "5"):
        fail(f'city.protocol: {protocol!r} must be "3.1.1" or "5"', "protocol",
             table="[city]")
    database = get("database", str)
    if not database.startswith(("postgresql://", "postgres://")):
        fail(f"city.database: {database!r}: a postgresql://user@host:port/db URL",
             "database", table="[city]")
    try:
        desired, batch_s = desired_shape(c, "city.")
    except ConfigError as e:
        fail(str(e), "desired_batch_s" if "batch" in str(e) else "desired", table="[city]")
    username = get("username", str, required=False)
    password = get("password", str, required=False)
    files: dict[str, Path] = {}
    for k in ("ca_file", "cert_file", "key_file"):
        v = get(k, str, required=False)
        if v is not None:
            p = Path(v) if Path(v).is_absolute() else path.parent / v
            if not p.is_file():
                fail(f"city.{k}: {p}: no such file", k, table="[city]")
            files[k] = p
    if ("cert_file" in files) != ("key_file" in files):
        fail("city.cert_file and city.key_file: give both", "cert_file", table="[city]")
    if files and not brokers[0].startswith("mqtts://"):
        fail(f"city.{', city.'.join(files)}: only for mqtts:// brokers")

    raw_sites = d.get("sites")
    if not isinstance(raw_sites, list) or not raw_sites:
        fail("[[sites]]: at least one (name, queue)")
    assert isinstance(raw_sites, list)
    starts = _site_starts(text)
    sites: list[CitySite] = []
    keys: dict[int, str] = {}
    seen: dict[str, int] = {}
    for i, s in enumerate(raw_sites):
        at = starts[i] if i < len(starts) else 0
        where = f"sites[{i}]"
        if not isinstance(s, dict):
            fail(f"{where}: a [[sites]] table expected")
        for k in s:
            if k not in SITE_KEYS:
                fail(f"{where}.{k}: unknown key (a site has name and queue)", k, at)
        sname = s.get("name")
        if not isinstance(sname, str) or not _NAME.fullmatch(sname):
            fail(f"{where}.name: {sname!r}: 1-64 letters, digits, '.', '_' or '-'",
                 "name", at)
        where = f"site {sname!r}"
        if sname in seen:
            fail(f"{where}: a second [[sites]] of this name (the first is sites[{seen[sname]}])",
                 "name", at)
        seen[sname] = i
        queue = s.get("queue")
        if not isinstance(queue, str) or not queue:
            fail(f"{where}: queue: missing (the site's central config file)",
                 "queue" if "queue" in s else "name", at)
        qpath = Path(queue) if Path(queue).is_absolute() else path.parent / queue
        config = _site_config(qpath, sname, brokers[0], lambda m, k="queue", a=at: fail(m, k, a))
        key = _key(f"{name}/{sname}")
        if key in keys:
            fail(f"{where}: its lock key equals site {keys[key]!r}'s: rename one", "name", at)
        keys[key] = sname
        sites.append(CitySite(sname, qpath, config))
    return City(path=path, name=name, brokers=list(brokers), database=database, sites=sites,
                protocol=protocol, desired=desired, desired_batch_s=batch_s,
                username=username, password=password,
                site_keys={v: k for k, v in keys.items()}, **files)


def _site_config(qpath: Path, site: str, broker: str,
                 fail: Callable[[str], Any]) -> CentralConfig:
    try:
        with open(qpath, "rb") as f:
            q = tomllib.load(f)
    except OSError as e:
        fail(f"site {site!r}: queue: {qpath}: {e.strerror}")
        raise AssertionError from None
    except tomllib.TOMLDecodeError as e:
        fail(f"site {site!r}: queue: {qpath}: not valid TOML: {e}")
        raise AssertionError from None
    if "site" in q and q["site"] != site:
        fail(f"site {site!r}: queue: {qpath}: site = {q['site']!r}, not {site!r}")
    # The city's broker and database stand in for the file's own (not used here).
    q = {k: v for k, v in q.items() if k not in ("ca_file", "cert_file", "key_file")}
    q.update(site=site, broker=broker, database="-")
    try:
        return load_config_dict(q, qpath.parent)
    except ConfigError as e:
        fail(f"site {site!r}: queue: {qpath}: {e}")
        raise AssertionError from None


# -- the worker -------------------------------------------------------------------------------

def _connect(dsn: str):
    """A connection for a lock or a site: TCP keepalives, so a cut network is noticed by both
    ends within ~10 s instead of hours (the server then frees the locks)."""
    from .pgstore import connect

    return connect(dsn, connect_timeout=5, keepalives=1, keepalives_idle=5,
                   keepalives_interval=2, keepalives_count=3,
                   application_name="hallgate-city-worker")


@dataclass
class _Owned:
    conn: Any
    central: Any
    service: Any
    since: float


class CityWorker:
    """One worker process's share of the city. `clock`: the hall clock of every site
    (default the system's); `events`: where ownership lines go (stdout); `lead_hook`:
    called with True when this worker becomes the city's overview leader, False when it
    stops being it (`lead_city`)."""

    def __init__(self, city: City, name: str, *, clock: Clock | None = None,
                 poll_s: float = 0.5, settle_s: float | None = None,
                 events: IO[str] | None = None, version: str = "0.1.0",
                 lead_hook: Callable[[bool], None] | None = None) -> None:
        if not _NAME.fullmatch(name):
            raise ValueError(f"worker name {name!r}: 1-64 letters, digits, '.', '_' or '-'")
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise RuntimeError("psycopg is missing (the city's store): "
                               "pip install 'hallgate[city]'") from None
        self.city = city
        self.name = name
        self.clock = clock or SystemClock()
        self.poll_s = poll_s
        self.settle_s = 2 * poll_s if settle_s is None else settle_s
        self.events = events if events is not None else sys.stdout
        self.version = version
        self.lead_hook = lead_hook
        self.sites = {s.name: s for s in city.sites}
        self.site_ns = _key(f"hallgate-site:{city.name}")
        self.worker_ns = _key(f"hallgate-worker:{city.name}")
        self.lead_ns = _key(f"hallgate-overview:{city.name}")
        self.owned: dict[str, _Owned] = {}
        self.leader = False
        self.live_workers = 0
        self._control = None
        self._spare = None
        self._schema = False
        self._registered = False  # our worker lock was ours once (a duplicate name is not)
        self._started = time.monotonic()
        self._lock = threading.Lock()  # around self.owned (poll thread vs tick thread)
        self._stop = threading.Event()
        # Start with a different site in each worker: fewer lost races for the same lock.
        self._order = sorted(self.sites, key=lambda s: _key(f"{name}/{s}"))

    # -- events ---------------------------------------------------------------------------

    def _event(self, site: str | None, owned: bool | None, reason: str, **extra) -> None:
        now = time.time()
        line: dict[str, Any] = {"ts": round(now, 3), "at": utc_ts(now), "worker": self.name}
        if site is not None:
            line.update(site=site, owned=owned)
        line.update(reason=reason, **extra)
        try:
            self.events.write(json.dumps(line) + "\n")
            self.events.flush()
        except (OSError, ValueError):
            pass
        if site is not None:
            log.info("worker %s: %s site %s at %s (%s)", self.name,
                     "took" if owned else "left", site, line["at"], reason)

    # -- control connection ---------------------------------------------------------------

    def _control_conn(self):
        """The control connection holding our worker lock; None while the database is
        unreachable or another worker runs under our name."""
        c = self._control
        if c is not None and not c.closed and not c.broken:
            return c
        self._control = None
        if self.leader:
            self._set_leader(False)
        try:
            c = _connect(self.city.database)
        except Exception as e:
            log.warning("worker %s: no database: %s", self.name, e)
            return None
        try:
            if not self._schema:
                from .pgstore import ensure_schema

                ensure_schema(c)
                self._schema = True
            got = c.execute("SELECT pg_try_advisory_lock(%s, %s)",
                            (self.worker_ns, _key(self.name))).fetchone()[0]
        except Exception as e:
            log.warning("worker %s: database: %s", self.name, e)
            c.close()
            return None
        if not got:
            c.close()
            if not self._registered:
                raise RuntimeError(f"another worker named {self.name!r} serves city "
                                   f"{self.city.name!r}")
            # Ours until a moment ago: our old backend may live on (a cut network) until
            # its keepalives time out; asked again next poll.
            log.warning("worker %s: our worker lock is still held; waiting", self.name)
            return None
        self._registered = True
        self._control = c
        return c

    def _locks(self, c) -> tuple[int, set[int]]:
        """(live workers, site lock keys held by anyone), from pg_locks."""
        rows = c.execute(
            "SELECT classid::bigint, objid::bigint FROM pg_locks WHERE locktype = 'advisory'"
            " AND granted AND objsubid = 2 AND classid::bigint IN (%s, %s) AND database ="
            " (SELECT oid FROM pg_database WHERE datname = current_database())",
            (self.worker_ns, self.site_ns)).fetchall()
        workers = sum(1 for ns, _ in rows if ns == self.worker_ns)
        return workers, {key for ns, key in rows if ns == self.site_ns}

    def lead_city(self, c) -> None:
        """HOOK for the city overview (central/overview.py's OverviewService): the worker
        holding the city's overview lock (on its control connection, so it dies with the
        worker) runs it; `lead_hook(True)` when it gets the lock, `lead_hook(False)` when
        its control connection is lost. Tried every poll, only when `lead_hook` is set."""
        if self.lead_hook is None or self.leader:
            return
        got = c.execute("SELECT pg_try_advisory_lock(%s, 0)", (self.lead_ns,)).fetchone()[0]
        if got:
            self._set_leader(True)

    def _set_leader(self, on: bool) -> None:
        self.leader = on
        self._event(None, None, "overview-lead" if on else "overview-lost")
        if self.lead_hook is not None:
            try:
                self.lead_hook(on)
            except Exception:
                log.exception("worker %s: lead hook", self.name)

    # -- sites ----------------------------------------------------------------------------

    def _take(self, site: str) -> bool:
        """Tries the site's lock on the spare connection; on success the connection becomes
        the site's store and its service starts. True if taken."""
        from .mqtt import CentralService
        from .pgstore import PgStore
        from .service import Central

        if self._spare is None or self._spare.closed or self._spare.broken:
            self._spare = _connect(self.city.database)
        conn = self._spare
        key = self.city.site_keys[site]
        if not conn.execute("SELECT pg_try_advisory_lock(%s, %s)",
                            (self.site_ns, key)).fetchone()[0]:
            return False
        self._spare = None
        cfg = self.sites[site].config
        t0 = time.monotonic()
        try:
            central = Central(cfg.queue, None, self.clock, dedupe_days=cfg.dedupe_days,
                              store=PgStore(conn, site, schema=False))
            svc = CentralService(central, site, self.city.brokers,
                                 client_id=self.sites[site].client_id,
                                 protocol=self.city.protocol, tick_s=cfg.tick_s,
                                 stats_s=cfg.stats_s, version=self.version,
                                 username=self.city.username, password=self.city.password,
                                 ticker=False, desired=self.city.desired,
                                 desired_batch_s=self.city.desired_batch_s,
                                 **self.city.tls_options())
        except Exception:
            log.exception("worker %s: site %s would not start", self.name, site)
            conn.close()  # frees the lock for another worker
            return False
        svc.start()
        with self._lock:
            self.owned[site] = _Owned(conn, central, svc, time.time())
        self._event(site, True, "free", load_s=round(time.monotonic() - t0, 3))
        return True

    def _leave(self, site: str, reason: str, *, offline: bool = False) -> None:
        """Stops the site's service (silently unless `offline`), then closes its
        connection: the lock goes last, so no second owner overlaps our commits."""
        with self._lock:
            o = self.owned.pop(site, None)
        if o is None:
            return
        try:
            o.service.stop(timeout=2.0, offline=offline)
        except Exception:
            log.exception("worker %s: stopping %s", self.name, site)
        # A tick begun before the stop may still be committing: let it end (none starts now).
        got = o.service.lock.acquire(timeout=2.0)
        try:
            o.central.close()
            o.conn.close()
        except Exception:
            pass
        finally:
            if got:
                o.service.lock.release()
        self._event(site, False, reason)

    def _healthy(self, site: str, o: _Owned) -> bool:
        """The site's connection still holds the lock. An idle connection has nothing to
        read: only when its socket is readable (the server said something: a FATAL before
        it cut the connection, or the close itself) is it asked with a query, under the
        service's lock (every use of the connection is), skipped while a commit holds it (a
        commit on a lost connection fails by itself, and the next poll sees it). Why not a
        query every poll: under a busy worker's GIL each round trip waits its turn among
        the services' threads, and 32 of them made one poll take seconds."""
        if o.conn.closed or o.conn.broken:
            return False
        try:
            if not select.select([o.conn.fileno()], [], [], 0)[0]:
                return True
        except (OSError, ValueError):
            return False
        if not o.service.lock.acquire(timeout=0.05):
            return True
        try:
            o.conn.execute("SELECT 1")
            return True
        except Exception as e:
            log.warning("worker %s: site %s lost its database connection: %s", self.name,
                        site, e)
            return False
        finally:
            o.service.lock.release()

    def poll(self) -> None:
        """One round: drop sites whose connection is gone, count the live workers, hand
        one site over if above the share, take free sites up to it."""
        for site, o in list(self.owned.items()):
            if not self._healthy(site, o):
                self._leave(site, "lost-lock")
        c = self._control_conn()
        if c is None:
            return
        try:
            live, held = self._locks(c)
            self.lead_city(c)
        except Exception as e:
            log.warning("worker %s: control connection: %s", self.name, e)
            return
        self.live_workers = live
        share = math.ceil(len(self.sites) / max(1, live))
        if len(self.owned) > share:
            self._leave(next(reversed(self.owned)), "share", offline=False)
            return
        if time.monotonic() - self._started < self.settle_s:
            return
        for site in self._order:
            if len(self.owned) >= share or self._stop.is_set():
                break
            if site in self.owned or self.city.site_keys[site] in held:
                continue
            try:
                self._take(site)
            except Exception as e:
                log.warning("worker %s: taking %s: %s", self.name, site, e)
                self._spare = None
                break

    def _tick_all(self) -> None:
        """One thread for every site's tick and stats (`CentralService.tick_due`)."""
        period = min([0.25] + [s.config.tick_s for s in self.sites.values()])
        while not self._stop.wait(period):
            with self._lock:
                services = [o.service for o in self.owned.values()]
            for svc in services:
                svc.tick_due()

    # -- life -----------------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None) -> None:
        """Serves until `stop` is set (or `self.stop()`); then leaves every site."""
        stop = stop or self._stop
        ticker = threading.Thread(target=self._tick_all, name="hallgate-city-tick",
                                  daemon=True)
        ticker.start()
        self._event(None, None, "start", sites=len(self.sites), pid=_pid())
        try:
            while not stop.is_set() and not self._stop.is_set():
                t0 = time.monotonic()
                self.poll()
                stop.wait(max(0.0, self.poll_s - (time.monotonic() - t0)))
        finally:
            self.close()
            ticker.join(2.0)

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        """Leaves every site: with an "offline" status only when no other worker is left
        to take them over (otherwise gateways would pause for nothing)."""
        self._stop.set()
        alone = self.live_workers <= 1
        for site in list(self.owned):
            self._leave(site, "stop", offline=alone)
        for c in (self._spare, self._control):
            if c is not None:
                try:
                    c.close()
                except Exception:
                    pass
        self._spare = self._control = None
        if self.leader:
            self._set_leader(False)
        self._event(None, None, "stopped")


class OverviewLead:
    """A worker's `lead_hook`: the city overview (central/overview.py) runs in the worker
    that holds the city's overview lock, so there is exactly one per city and it moves
    with the lock when that worker dies."""

    def __init__(self, city: City) -> None:
        self.city = city
        self.service: Any = None

    def __call__(self, on: bool) -> None:
        from .overview import OverviewService

        if on and self.service is None:
            c = self.city
            self.service = OverviewService(
                c.name, c.brokers, protocol=c.protocol, sites=[s.name for s in c.sites],
                username=c.username, password=c.password, **c.tls_options()).start()
        elif not on and self.service is not None:
            self.service.stop()
            self.service = None


def _pid() -> int:
    import os

    return os.getpid()
