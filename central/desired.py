"""Where the central's desired state goes (protocols/MQTT.md section 5): per window, or in one
snapshot per site.

Design note
-----------
Two shapes, the site's choice (`desired` in the central's config; `[city] desired` for all
of a city's sites, since every gateway of the site must subscribe the same way):

- "windows" (the default): each payload retained on ``window/{n}/{kind}`` the moment it
  changed: what a mosquitto ACL restricts per window (hardware/make_acl.py).
- "site": the display, panel and vote of every window in one retained message on
  ``desired``, sent at most every `batch_s`: the first change after a quiet spell at once,
  the changes within the interval together at its end. The ``session`` of a window stays
  on its own topic (the staff app reads it, and it changes at logins only).

Why "site": on a clustered broker (NATS, hardware/nats/) a retained QoS 1 publish is a
JetStream write replicated to every node, and a visitor changes ~18 window payloads (every
window serving the service shows the queue length); measured in the city day, the cluster
carried 200-290 of them a second with both cores busy. One snapshot per site per interval
caps the site at 1 / batch_s messages a second whatever the pace, and a gateway that
(re)connects converges from one retained message. The price: a change may wait up to
`batch_s` behind the one before it, and a gateway reads its whole site (a mosquitto ACL
cannot keep it to its own windows).

Nothing here talks to the broker: the service gives `publish(topic, payload)` and calls
`add` after each commit, `due_in` / `flush` from its worker thread. Thread-safe.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from .clock import utc_ts
from .state import Desired

__all__ = ["SHAPES", "SITE_KINDS", "DesiredOut"]

SHAPES = ("windows", "site")
SITE_KINDS = ("display", "panel", "vote")  # in the snapshot; others stay per window


class DesiredOut:
    """The desired state of one site on its way out. `topic(rest)` makes a full topic;
    `publish(topic, payload)` sends one retained QoS 1 message. Counts in `changes` (window
    payloads given) and `messages` (messages published for them)."""

    def __init__(self, topic: Callable[[str], str], publish: Callable[[str, Any], None], *,
                 shape: str = "windows", batch_s: float = 0.25,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if shape not in SHAPES:
            raise ValueError(f"desired {shape!r}: 'windows' (a topic per window and kind) or "
                             "'site' (one snapshot per site)")
        if not 0 <= batch_s <= 60:
            raise ValueError(f"desired_batch_s {batch_s}: 0-60 seconds")
        self.topic, self.publish = topic, publish
        self.shape, self.batch_s, self.clock = shape, batch_s, clock
        self.changes = self.messages = 0
        self._windows: dict[int, dict[str, dict]] = {}  # the snapshot: window -> kind -> payload
        self._pending = False
        self._sent_at = float("-inf")
        self._lock = threading.Lock()

    def add(self, desired: Iterable[Desired], *, now: bool = False) -> bool:
        """Takes changed payloads (committed). Per window they go out at once; in a site
        snapshot, at once after a quiet spell (or with `now`: a new connection), else at the
        end of the interval. True if something waits for `flush`."""
        with self._lock:
            for d in desired:
                self.changes += 1
                if self.shape == "site" and d.kind in SITE_KINDS:
                    self._windows.setdefault(d.window, {})[d.kind] = d.payload
                    self._pending = True
                else:
                    self._send(f"window/{d.window}/{d.kind}", d.payload)
            if self._pending and (now or self._due_in() == 0):
                self._send_snapshot()
            return self._pending

    def due_in(self) -> float | None:
        """Seconds until the waiting snapshot is due (0: now), None if none waits."""
        with self._lock:
            return self._due_in() if self._pending else None

    def flush(self, *, force: bool = False) -> None:
        """Sends the waiting snapshot if it is due (or `force`: the service stopping)."""
        with self._lock:
            if self._pending and (force or self._due_in() == 0):
                self._send_snapshot()

    def _due_in(self) -> float:
        return max(0.0, self._sent_at + self.batch_s - self.clock())

    def _snapshot(self) -> dict:
        return {"ts": utc_ts(), "windows": {str(n): dict(kinds) for n, kinds
                                            in sorted(self._windows.items())}}

    def _send_snapshot(self) -> None:
        self._pending = False
        self._sent_at = self.clock()
        self._send("desired", self._snapshot())

    def _send(self, rest: str, payload: Any) -> None:
        self.messages += 1
        self.publish(self.topic(rest), payload)
