"""Rate limits for error reports: a burst of bad input cannot flood the errors topic, and
nothing is dropped without a count.

Design note
-----------
Operations: whoever publishes errors asks `offer(kind, reason, now)` for each report: True
means publish it, False means it was suppressed and counted. Every so often (each loop
turn, say) `take_summaries(now)` hands back a summary record per kind whose suppressed
reports are due to be told: how many, the first and the last reason. `take_summaries(now,
force=True)` hands back every pending one (before a clean stop). `offered_total`,
`published_total` and `suppressed_total` count since creation.
Goals: a flood of 3,000 bad commands costs the errors topic a burst and a trickle, not
3,000 messages or a queue that silently loses the oldest; every offered report is either
published or counted in exactly one summary; memory stays bounded whatever the kinds.
Plan: a token bucket per kind (capacity `burst`, refilled at `per_second`); a report that
finds no token is suppressed and added to its kind's pending count. A kind's pending
reports are summarised once `summary_every_s` has passed since the first of them, so a
steady flood gives one summary per kind per interval. At most `max_kinds` kinds are
tracked: a new kind takes the place of an idle one (nothing pending, bucket full: the same
as a fresh start), or else shares the entry of OTHER_KINDS, whose reasons say their kind.
Reasons kept for summaries are cut to MAX_REASON characters. No threads, no I/O, no clock:
`now` is given (seconds, e.g. time.monotonic()); a clock that goes back refills nothing.
Worst case cost: O(1) per offer, O(max_kinds) for a new kind when the table is full and
per take_summaries.

    >>> limiter = ErrorLimiter(burst=2, per_second=1, summary_every_s=5)
    >>> [limiter.offer("bad-command", f"bad {i}", now=0.0) for i in range(4)]
    [True, True, False, False]
    >>> limiter.take_summaries(now=1.0)  # not due yet
    []
    >>> limiter.take_summaries(now=5.0)
    ... # doctest: +NORMALIZE_WHITESPACE
    [{'kind': 'bad-command',
      'reason': '2 more like this in the last 5 s (suppressed: rate limit)',
      'suppressed': 2, 'first_reason': 'bad 2', 'last_reason': 'bad 3'}]
"""

from dataclasses import dataclass

OTHER_KINDS = "other-kinds"  # the shared entry once max_kinds kinds are busy
MAX_REASON = 256  # characters of a reason kept for a summary


def _seconds(t):
    return f"{t:.1f}".removesuffix(".0")


@dataclass
class _Kind:
    tokens: float
    last: float  # when tokens were last refilled
    pending: int = 0  # suppressed, not yet in a summary
    since: float = 0.0  # when the first pending one was suppressed
    first_reason: str = ""
    last_reason: str = ""


class ErrorLimiter:
    """Per kind: `burst` reports at once, then at most `per_second`; the rest counted and
    summarised every `summary_every_s` seconds. At most `max_kinds` (+ OTHER_KINDS) kinds."""

    def __init__(self, burst=20, per_second=5.0, summary_every_s=5.0, max_kinds=32):
        if burst < 1 or per_second <= 0 or summary_every_s <= 0 or max_kinds < 1:
            raise ValueError("burst and max_kinds must be >= 1, the rates > 0")
        self.burst = burst
        self.per_second = per_second
        self.summary_every_s = summary_every_s
        self.max_kinds = max_kinds
        self.offered_total = 0
        self.published_total = 0
        self.suppressed_total = 0
        self._kinds = {}

    @property
    def pending(self):
        """Suppressed reports not yet handed back in a summary."""
        return sum(k.pending for k in self._kinds.values())

    def offer(self, kind, reason, now):
        """Whether to publish this report (True) or count it as suppressed (False)."""
        self.offered_total += 1
        key, entry = self._entry(kind, now)
        self._refill(entry, now)
        if entry.tokens >= 1:
            entry.tokens -= 1
            self.published_total += 1
            return True
        self.suppressed_total += 1
        reason = str(reason) if key == kind else f"{kind}: {reason}"
        reason = reason[:MAX_REASON]
        if not entry.pending:
            entry.since, entry.first_reason = now, reason
        entry.pending += 1
        entry.last_reason = reason
        return False

    def take_summaries(self, now, force=False):
        """A summary record per kind whose pending reports are due (all of them if `force`):
        {"kind", "reason", "suppressed", "first_reason", "last_reason"}; each suppressed
        report is in exactly one summary."""
        out = []
        for kind, entry in self._kinds.items():
            age = max(0.0, now - entry.since)
            if entry.pending and (force or age >= self.summary_every_s):
                n, t = entry.pending, _seconds(age)
                out.append(
                    {
                        "kind": kind,
                        "reason": f"{n} more like this in the last {t} s (suppressed: rate limit)",
                        "suppressed": n,
                        "first_reason": entry.first_reason,
                        "last_reason": entry.last_reason,
                    }
                )
                entry.pending = 0
                entry.first_reason = entry.last_reason = ""
        return out

    def _refill(self, entry, now):
        if now > entry.last:
            entry.tokens = min(self.burst, entry.tokens + (now - entry.last) * self.per_second)
            entry.last = now

    def _entry(self, kind, now):
        """(key, entry) for `kind`: its own, a fresh one, or the shared OTHER_KINDS one."""
        entry = self._kinds.get(kind)
        if entry is not None:
            return kind, entry
        if len(self._kinds) >= self.max_kinds:
            for old, e in list(self._kinds.items()):
                self._refill(e, now)
                if old != OTHER_KINDS and not e.pending and e.tokens >= self.burst:
                    del self._kinds[old]  # idle: the same as a fresh start
                    break
            else:
                kind = OTHER_KINDS
        entry = self._kinds.get(kind)
        if entry is None:
            entry = self._kinds[kind] = _Kind(tokens=self.burst, last=now)
        return kind, entry
