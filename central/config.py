"""The central service's config: one small TOML file (example: central/example.toml).

    site = "msk-01"
    broker = "mqtt://127.0.0.1:1883"
    database = "central.db"          # relative to the config file's folder
    tz = "Europe/Moscow"             # optional: the machine's zone when absent
    norm_s = 900                     # optional
    vote_timeout_s = 60              # optional
    [services]
    A = "Passports"                  # a code = its name, or a table:
    P1 = { name = "Passport abroad", group = "Passports", expected_s = 900 }
    [[windows]]
    n = 1
    services = { A = 3, P1 = 1 }     # or a list: ["A", "P1"] (all weight 1)
    redirect_to = "P1"               # optional
    operator = "ivanova"             # optional: logged in on the first start
    [operators]                      # optional: with it, windows need a login
    ivanova = { name = "Ivanova A.", pin = "1357" }

The queue's keys (services, windows, operators, the day, appointments, the selection
rule's credits) are described in central/queueconfig.py and central/selection.py.
Optional too: ``client_id`` (default ``hallgate-central-{site}``), ``tick_s`` (1.0),
``stats_s`` (5.0), ``blink_s``, ``brightness``, ``desired`` ("windows", or "site": one
snapshot per site on a clustered broker, central/desired.py) with ``desired_batch_s``
(0.25), and for an ``mqtts://`` broker ``ca_file``,
``cert_file`` and ``key_file`` (the client certificate the secured broker of
hardware/mosquitto/ requires; its CN is the client id). Every error names the key:

>>> try:
...     load_config_dict({"site": "x", "broker": "mqtt://h", "database": "d.db",
...                       "services": {"A": "Passports"}, "windows": [{"n": 1}]}, ".")
... except ConfigError as e:
...     print(e)
windows[0].services: missing
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .desired import SHAPES
from .queue import QueueConfig, QueueError

__all__ = ["CentralConfig", "ConfigError", "load_config", "load_config_dict"]

_NAME = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


class ConfigError(ValueError):
    """A config the central service cannot run with; the message names the key."""


@dataclass(frozen=True)
class CentralConfig:
    site: str
    broker: str
    database: Path
    queue: QueueConfig
    client_id: str
    tick_s: float = 1.0
    stats_s: float = 5.0
    ca_file: Path | None = None  # mqtts://: the CA that signed the broker (None: the system's)
    cert_file: Path | None = None  # our client certificate (hardware/mosquitto: required)
    key_file: Path | None = None
    dedupe_days: int = 14  # event ids remembered this long (a resend is still a duplicate)
    # MQTT 3.1.1 by default: every broker speaks it (NATS too), and paho handles an incoming
    # PUBLISH in ~25% less CPU than under MQTT 5 (no property objects per packet; measured
    # 104-109 against 135-147 us per event through the whole central). The session persists
    # (clean session off) until the broker's persistent_client_expiration.
    protocol: str = "3.1.1"
    desired: str = "windows"  # or "site" (central/desired.py); the gateways must agree
    desired_batch_s: float = 0.25


def _get(d: dict, key: str, kind, where: str = "", *, required=True, default=None):
    name = f"{where}{key}"
    if key not in d:
        if required:
            raise ConfigError(f"{name}: missing")
        return default
    value = d[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        want = " or ".join(k.__name__ for k in kinds)
        raise ConfigError(f"{name}: {value!r} is not {want}")
    return value


def load_config_dict(d: dict[str, Any], base: str | Path) -> CentralConfig:
    """A `CentralConfig` from parsed TOML; `base` is the folder relative paths start from."""
    site = _get(d, "site", str)
    if not 1 <= len(site) <= 64 or not set(site) <= _NAME:
        raise ConfigError(f"site: {site!r}: use 1-64 letters, digits, '.', '_' or '-'")
    broker = _get(d, "broker", str)
    if not broker.startswith(("mqtt://", "mqtts://")):
        raise ConfigError(f"broker: {broker!r}: mqtt://host[:port] or mqtts://host[:port]")
    database = Path(_get(d, "database", str))
    if not database.is_absolute():
        database = Path(base) / database
    services = _get(d, "services", dict)
    if not services:
        raise ConfigError("services: at least one, e.g. A = \"Passports\"")
    for code, entry in services.items():
        if not isinstance(entry, (str, dict)):
            raise ConfigError(f"services.{code}: {entry!r} is not a name or a table")
    windows = _get(d, "windows", list)
    if not windows:
        raise ConfigError("windows: at least one [[windows]] table")
    wins = []
    for i, w in enumerate(windows):
        where = f"windows[{i}]."
        if not isinstance(w, dict):
            raise ConfigError(f"windows[{i}]: a table expected")
        n = _get(w, "n", int, where)
        svc = _get(w, "services", (list, dict), where)
        if not all(isinstance(s, str) for s in svc) or (isinstance(svc, dict) and not all(
                isinstance(v, int) and not isinstance(v, bool) for v in svc.values())):
            raise ConfigError(f"{where}services: a list of service codes, or a table of "
                              "code = weight (1-9)")
        wins.append({"n": n, "services": svc,
                     "redirect_to": _get(w, "redirect_to", str, where, required=False),
                     "operator": _get(w, "operator", str, where, required=False)})
    operators = _get(d, "operators", dict, required=False, default={})
    queue: dict[str, Any] = {"services": services, "windows": wins, "operators": operators}
    tz = _get(d, "tz", str, required=False)
    if tz is not None:
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"tz: {tz!r} is not an IANA zone (e.g. Europe/Moscow)") from None
        queue["tz"] = tz
    for key in ("norm_s", "warn_s", "vote_timeout_s", "blink_s", "brightness", "grace_s",
                "panel_digits", "priority_credit_s", "skill_credit_s",
                "appointment_credit_s", "redirect_credit_s"):
        v = _get(d, key, int, required=False)
        if v is not None:
            if v < 0:
                raise ConfigError(f"{key}: {v} must be >= 0")
            queue[key] = v
    for key in ("opens", "last_ticket", "closes", "at_close", "late"):
        v = _get(d, key, str, required=False)
        if v is not None:
            queue[key] = v
    tick_s = float(_get(d, "tick_s", (int, float), required=False, default=1.0))
    stats_s = float(_get(d, "stats_s", (int, float), required=False, default=5.0))
    for key, v in (("tick_s", tick_s), ("stats_s", stats_s)):
        if v <= 0:
            raise ConfigError(f"{key}: {v} must be > 0")
    client_id = _get(d, "client_id", str, required=False, default=f"hallgate-central-{site}")
    desired, batch_s = desired_shape(d, "")
    dedupe_days = _get(d, "dedupe_days", int, required=False, default=14)
    protocol = _get(d, "protocol", str, required=False, default="3.1.1")
    if protocol not in ("3.1.1", "5"):
        raise ConfigError(f'protocol: {protocol!r} must be "3.1.1" or "5"')
    if not 1 <= dedupe_days <= 3650:
        raise ConfigError(f"dedupe_days: {dedupe_days} must be 1-3650")
    files = {}
    for key in ("ca_file", "cert_file", "key_file"):
        value = _get(d, key, str, required=False)
        if value is not None:
            path = Path(value) if Path(value).is_absolute() else Path(base) / value
            if not path.is_file():
                raise ConfigError(f"{key}: {path}: no such file")
            files[key] = path
    if ("cert_file" in files) != ("key_file" in files):
        raise ConfigError("cert_file and key_file: give both (a client certificate and its key)")
    if files and not broker.startswith("mqtts://"):
        raise ConfigError(f"{', '.join(files)}: only for an mqtts:// broker, not {broker!r}")
    try:
        qc = QueueConfig.from_dict(queue)
    except QueueError as e:
        raise ConfigError(str(e)) from None
    return CentralConfig(site=site, broker=broker, database=database, queue=qc,
                         client_id=client_id, tick_s=tick_s, stats_s=stats_s,
                         dedupe_days=dedupe_days, protocol=protocol, desired=desired,
                         desired_batch_s=batch_s, **files)


def desired_shape(d: dict[str, Any], where: str) -> tuple[str, float]:
    """`desired` and `desired_batch_s` of a config table (`where`: its name and a dot)."""
    desired = _get(d, "desired", str, where, required=False, default="windows")
    if desired not in SHAPES:
        raise ConfigError(f'{where}desired: {desired!r} must be "windows" (a topic per '
                          'window and kind) or "site" (one snapshot per site)')
    batch_s = float(_get(d, "desired_batch_s", (int, float), where, required=False,
                         default=0.25))
    if not 0 <= batch_s <= 60:
        raise ConfigError(f"{where}desired_batch_s: {batch_s} must be 0-60 seconds")
    return desired, batch_s


def load_config(path: str | Path) -> CentralConfig:
    """Reads and checks a central config file; ConfigError naming the file and the key."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            d = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    try:
        return load_config_dict(d, path.parent)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
