"""Which desired-state topics a gateway subscribes, and what a message on them means.

Design note
-----------
Operations: the MQTT link (gateway/mqtt.py) makes one `DesiredSubscription(site, mode,
windows)` and, in its own thread: on every connection calls `new_connection()`, unsubscribes
`leftovers()` (non-empty once per link at most) and subscribes `topics()`; hands every message
on a desired-state topic to `take(topic, payload)`; on a change of the served windows calls
`set_windows(windows)` and subscribes `topics()` anew. `take` and `set_windows` return a list
of results for the link to act on, in order: `Apply(window, kind, command)` for on_command
(command None: "no desired state"), `Reject(topic, payload, reason)` for the errors topic
(kind bad-command), `Unsubscribe(topics)` and `Count(stat, n)` for the link's LinkStats. No
sockets, no threads, no paho (h11 style): the tests drive it with plain calls.

Modes (`subscribe`, the config's `[mqtt] subscribe`; contract: protocols/MQTT.md section 5):
- "windows" (the default): three topics per served window, `window/{n}/{kind}`, which is what
  the mosquitto ACL allows (hardware/make_acl.py: a gateway reads its own windows only). A
  message for another window can only come from a subscription an earlier configuration left
  in the persistent session, so it is unsubscribed and reported.
- "kinds": three wildcard topics, `window/+/{kind}`, whatever the windows; messages for the
  site's other windows are dropped silently (counted in stats.foreign), and set_windows()
  changes no subscription. Why: on NATS (the city's broker, hardware/nats/) every QoS 1
  subscription is a JetStream consumer; measured there, 96 gateways x 30 per-window
  subscriptions cost ~480 MB per node and carried ~100 retained publishes/s, 3 per gateway
  ~365/s. NATS also cannot restrict reads per window under a wildcard (its consumers ignore
  per-message deny), so its permissions give a gateway its site's three filters
  (hardware/make_nats.py).
- "site": one topic, `hall/v1/{site}/desired`, whose retained payload is the whole site's
  desired state, `{"ts": ..., "windows": {"5": {"display": {...}, "panel": {...}, "vote":
  {...}}, ...}}`. Why: on that same NATS cluster a retained QoS 1 publish is a replicated
  JetStream write, and the central makes ~18 of them per visitor; one snapshot per site at
  most every batch interval (~0.25 s, changes in between go together) caps the writes at
  sites / interval, however busy the halls are.
- A leftover of an earlier configuration is unsubscribed: the first "kinds" or "site"
  connection of a link unsubscribes its windows' per-window topics ("site" also the "kinds"
  wildcards), each a consumer on NATS and a second copy of every command; a message on a
  topic of another mode that still comes (another window's, or `desired` in "windows" and
  "kinds" modes, or `window/{n}/{kind}` in "site" mode: the central publishes one shape
  only) is not applied, but unsubscribed and reported.

Goals (snapshots, "site"):
- Each inner payload is taken exactly as if it had come on `window/{n}/{kind}`: the same
  parse_command validation (4096 bytes at most, measured on its compact JSON re-encoding),
  the same Apply. Versions and staleness are the reconciler's, as for the other modes.
- Cheap when nothing changed: an inner payload byte-identical to the one this link passed on
  last time for that (window, kind), applied or rejected, is skipped (counted in
  stats.unchanged), so a bad one is reported once, not every 0.25 s. That memory is
  forgotten on every new connection: the retained snapshot that follows it is taken in full.
- "No desired state" as the per-window topics say it with an empty payload: a (window, kind)
  that was in the last accepted snapshot and is not in this one is applied as None, once
  (not every idle window at every snapshot). An empty snapshot payload (its retained message
  cleared) is a snapshot with no windows.
- All or nothing for a malformed snapshot (not JSON, not an object, `windows` missing or not
  an object, a key that is not a window number in plain decimal, a window's value that is not
  an object): nothing of it applied, one Reject naming the bad part. A bad inner payload is
  rejected alone ("window 5 panel: ..."), the rest applied. A snapshot over MAX_SNAPSHOT
  bytes is rejected whole. Unknown kinds and top-level keys are ignored (a later central may
  add some).
- A window newly served (set_windows) gets its entries from the last accepted snapshot at
  once, without waiting for the next one.

Plan: the last accepted snapshot is kept parsed ({window: {kind: object}}); the memory of what
was passed on is {(window, kind): compact JSON bytes}. Worst case cost of a snapshot: one
json.loads of at most MAX_SNAPSHOT bytes, a re-encoding of the served windows' entries, and a
parse_command of each changed one.

    >>> d = DesiredSubscription("s1", "site", [5])
    >>> d.topics()
    {'hall/v1/s1/desired'}
    >>> snapshot = {"windows": {"5": {"display": {"version": 2, "text": "A1"}},
    ...                         "6": {"vote": {"version": 1, "open": False}}}}
    >>> results = d.take("hall/v1/s1/desired", json.dumps(snapshot).encode())
    >>> results[:2]  # LinkStats: a snapshot taken, window 6's vote not served here
    [Count(stat='snapshots', n=1), Count(stat='foreign', n=1)]
    >>> results[2].window, results[2].kind, results[2].command
    (5, 'display', DisplayCommand(version=2, text='A1', blink_s=0, brightness=8))
    >>> d.take("hall/v1/s1/desired", json.dumps(snapshot).encode())  # the same again
    [Count(stat='snapshots', n=1), Count(stat='foreign', n=1), Count(stat='unchanged', n=1)]
"""

import json
import logging
import re
from dataclasses import dataclass

from hallgate.gateway import commands
from hallgate.protocols import jsonobject

log = logging.getLogger(__name__)

MODES = ("windows", "kinds", "site")
MAX_SNAPSHOT = 256 * 1024  # bytes; the link's MAX_PACKET too: MQTT 5 brokers send no more
MAX_SNAPSHOT_DEPTH = commands.MAX_DEPTH + 3  # object > windows > window > an inner payload

_WINDOW = re.compile(r"[1-9][0-9]{0,5}\Z")  # plain decimal, 1-999999: "5", never "05"
_JSON_TYPES = {dict: "object", list: "array", str: "string", int: "number", float: "number",
               bool: "boolean", type(None): "null"}


@dataclass(frozen=True)
class Apply:
    """Pass to on_command(window, kind, command); command None: no desired state."""

    window: int
    kind: str
    command: object


@dataclass(frozen=True)
class Reject:
    """Report on the errors topic (bad-command): nothing of it was applied."""

    topic: str
    payload: bytes
    reason: str


@dataclass(frozen=True)
class Unsubscribe:
    """Unsubscribe these topic filters (a leftover of an earlier configuration)."""

    topics: frozenset


@dataclass(frozen=True)
class Count:
    """Add n to the link's LinkStats counter `stat`."""

    stat: str
    n: int


def _json(obj):
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _type(value):
    return _JSON_TYPES.get(type(value), type(value).__name__)


class SnapshotError(ValueError):
    """A snapshot rejected whole; str() is the reason."""


def parse_snapshot(payload):
    """{window: {kind: inner object}} from a `desired` payload (bytes), kinds not in
    commands.KINDS left out; SnapshotError naming the bad part otherwise. Empty: {}."""
    if not payload:
        return {}
    try:
        obj = jsonobject.load_object(bytes(payload), MAX_SNAPSHOT, MAX_SNAPSHOT_DEPTH)
    except ValueError as e:
        raise SnapshotError(str(e)) from None
    if "windows" not in obj:
        raise SnapshotError("windows: missing (an object: window number -> {kind: command})")
    windows = obj["windows"]
    if not isinstance(windows, dict):
        raise SnapshotError(f"windows: a JSON {_type(windows)}, not an object "
                            "(window number -> {kind: command})")
    out = {}
    for key, kinds in windows.items():
        if not _WINDOW.match(key):
            raise SnapshotError(f"windows key {key[:20]!r} is not a window number "
                                "(1-999999 in plain decimal)")
        if not isinstance(kinds, dict):
            raise SnapshotError(f"windows[{key!r}]: a JSON {_type(kinds)}, not an object "
                                "(kind -> command)")
        out[int(key)] = {k: v for k, v in kinds.items() if k in commands.KINDS}
    return out


class DesiredSubscription:
    """The desired-state side of one link (see the module's design note). Not thread-safe:
    one thread (the link's) calls it."""

    def __init__(self, site, mode="windows", windows=(), gateway="this gateway"):
        if mode not in MODES:
            raise ValueError(f"subscribe {mode!r}: one of {', '.join(MODES)}")
        self.site = site
        self.gateway = gateway  # named in the reason for a window not served
        self.mode = mode
        self.site_topic = f"hall/v1/{site}/desired"
        self._windows = frozenset(windows)
        self._leftovers_due = mode != "windows"
        self._last = {}  # "site": the last accepted snapshot, {window: {kind: object}}
        self._sent = {}  # "site": (window, kind) -> JSON bytes passed on, this connection

    @property
    def windows(self):
        return self._windows

    # -- subscriptions -------------------------------------------------------------------------

    def window_topics(self, windows):
        return {commands.command_topic(self.site, w, k) for w in windows for k in commands.KINDS}

    def kind_topics(self):
        return {commands.command_topic(self.site, "+", k) for k in commands.KINDS}

    def topics(self):
        """The desired-state topic filters to subscribe (QoS 1) for the served windows."""
        if self.mode == "windows":
            return self.window_topics(self._windows)
        if not self._windows:
            return set()
        return self.kind_topics() if self.mode == "kinds" else {self.site_topic}

    def leftovers(self):
        """Topic filters that an earlier configuration may have left in the persistent
        session, to unsubscribe: once per link (the first call that has any), else empty."""
        if not self._leftovers_due:
            return set()
        topics = self.window_topics(self._windows)
        if self.mode == "site":
            topics |= self.kind_topics()
        if topics:
            self._leftovers_due = False
        return topics

    def new_connection(self):
        """A new connection: the retained snapshot that follows is taken in full."""
        self._sent.clear()

    def set_windows(self, windows):
        """Serve these windows from now on; in "site" mode, the results of applying the
        newly served windows' entries of the last accepted snapshot."""
        new = frozenset(windows)
        added = new - self._windows
        self._windows = new
        for key in [k for k in self._sent if k[0] not in new]:
            del self._sent[key]  # served again later: applied again
        if self.mode != "site":
            return []
        results = []
        for window in sorted(added & self._last.keys()):
            results += self._apply_window(window, self._last[window], {})
        return results

    # -- messages ------------------------------------------------------------------------------

    def take(self, topic, payload):
        """The results of a message on a desired-state topic (see the design note)."""
        if topic == self.site_topic:
            if self.mode == "site":
                return self._take_snapshot(topic, payload)
            return [Unsubscribe(frozenset({self.site_topic})),
                    Reject(topic, payload, f"the site's desired-state snapshot is not "
                                           f'subscribed here (subscribe = "{self.mode}"): a '
                                           f"subscription left by an earlier configuration; "
                                           f"unsubscribed")]
        where = commands.parse_topic(self.site, topic)
        if where is None:
            log.warning("mqtt: message on unexpected topic %r ignored", topic)
            return []
        window, kind = where
        if self.mode == "site":
            return [Unsubscribe(frozenset(self.window_topics([window]) | self.kind_topics())),
                    Reject(topic, payload, f"desired state comes on {self.site_topic} here "
                                           f'(subscribe = "site"): a subscription left by an '
                                           f"earlier configuration; unsubscribed")]
        if window not in self._windows:
            if self.mode == "kinds":
                return [Count("foreign", 1)]  # another gateway's window of this site: normal
            # Only a subscription left in the persistent session by an earlier configuration
            # brings these (per window, or "kinds" wildcards): drop it, and say so.
            served = ", ".join(map(str, sorted(self._windows))) or "none"
            return [Unsubscribe(frozenset(self.window_topics([window]) | self.kind_topics())),
                    Reject(topic, payload, f"window {window} is not served by gateway "
                                           f"{self.gateway} (serves {served}); unsubscribed")]
        try:
            return [Apply(window, kind, commands.parse_command(kind, payload))]
        except commands.CommandError as e:
            return [Reject(topic, payload, str(e))]

    def _take_snapshot(self, topic, payload):
        try:
            snapshot = parse_snapshot(payload)
        except SnapshotError as e:
            return [Reject(topic, payload, f"{e}; the snapshot is not applied")]
        before, self._last = self._last, snapshot
        results = [Count("snapshots", 1)]
        foreign = sum(len(kinds) for w, kinds in snapshot.items() if w not in self._windows)
        if foreign:
            results.append(Count("foreign", foreign))
        for window in sorted(self._windows):
            results += self._apply_window(window, snapshot.get(window, {}),
                                          before.get(window, {}))
        return results

    def _apply_window(self, window, kinds, before):
        """Apply, Reject and Count results for one served window's entries `kinds`; a kind
        in `before` (the last snapshot's) and not in `kinds` is cleared."""
        results = []
        unchanged = 0
        for kind in commands.KINDS:
            key = (window, kind)
            if kind not in kinds:
                if kind in before:
                    self._sent.pop(key, None)
                    results.append(Apply(window, kind, None))
                continue
            raw = _json(kinds[kind])
            if self._sent.get(key) == raw:
                unchanged += 1
                continue
            self._sent[key] = raw
            try:
                command = commands.parse_command(kind, raw)
            except commands.CommandError as e:
                results.append(Reject(self.site_topic, raw, f"window {window} {kind}: {e}"))
                continue
            results.append(Apply(window, kind, command))
        if unchanged:
            results.append(Count("unchanged", unchanged))
        return results
