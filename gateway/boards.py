"""What the gateway keeps and reads of the boards themselves: the board id known at each
address across restarts (`KnownBoards`, so a board swapped while the gateway was down is
told at the next start), and a device's log read in pieces (`fetch_log`, GET_LOG until the
whole crash text is in: protocols/BUS.md)."""

import json
import logging
import os
import threading
from pathlib import Path

log = logging.getLogger("hallgate.gateway.master")

MAX_LOG_READS = 64  # GET_LOGs for one log: 64 x 120 bytes, more than a device keeps


def fetch_log(read, limit=MAX_LOG_READS):
    """A device's whole log: `read(offset)` does one GET_LOG exchange and returns the
    bus.Log chunk (or raises). Reads offset 0, then on until `total`. If the kept text
    changes meanwhile (a new crash, a cleared log), it starts over once. Returns a dict:
    reset_cause (name), reset_cause_code, crash_boot (0: none kept), total, text (str,
    undecodable bytes replaced), complete (False if the reads stopped short)."""
    for _attempt in range(2):
        first = read(0)
        parts, got, changed = [bytes(first.text)], len(first.text), False
        reads = 1
        while got < first.total and reads < limit:
            chunk = read(got)
            reads += 1
            if (chunk.total, chunk.crash_boot) != (first.total, first.crash_boot):
                changed = True
                break
            if not chunk.text:
                break  # nothing more where there should be: do not spin
            parts.append(bytes(chunk.text))
            got += len(chunk.text)
        if not changed:
            break
    text = b"".join(parts)
    return {"reset_cause": first.reset_cause_name, "reset_cause_code": first.reset_cause,
            "crash_boot": first.crash_boot, "total": first.total,
            "text": text.decode("utf-8", errors="replace"),
            "complete": len(text) >= first.total}


class KnownBoards:
    """The board id known at each address of each bus, kept in a small JSON file
    ({"buses": {bus: {address: hex id}}}) so that a board swapped while the gateway was
    down is told at the next start. Written atomically (a temporary file, fsynced, renamed
    into place) when an id changes; a file that cannot be read starts empty, with a
    warning (the ids are learnt again; only a swap meanwhile goes unreported)."""

    def __init__(self, path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._ids = {}
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
            self._ids = {str(b): {int(a): str(i) for a, i in ids.items()}
                         for b, ids in doc["buses"].items()}
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            log.warning("known boards %s: cannot read it (%s); starting empty", self.path, e)

    def of(self, bus_name):
        """{address: hex id} known on one bus."""
        with self._lock:
            return dict(self._ids.get(bus_name, {}))

    def set(self, bus_name, addr, board_id):
        """Remember `board_id` at `addr`; False if the file could not be written (the id
        is still known in memory; a full disk must not stop the bus)."""
        with self._lock:
            ids = self._ids.setdefault(bus_name, {})
            if ids.get(addr) == board_id:
                return True
            ids[addr] = board_id
            doc = {"buses": {b: {str(a): i for a, i in sorted(v.items())}
                             for b, v in sorted(self._ids.items())}}
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            try:
                with open(tmp, "w", encoding="utf-8") as f:
                    json.dump(doc, f, indent=1)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
            except OSError as e:
                log.error("known boards %s: %s; kept in memory only", self.path, e)
                return False
        return True
