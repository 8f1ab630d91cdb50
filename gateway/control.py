"""The daemon's control socket: technician commands through the running gateway.

Design note
-----------
Operations: `ControlServer(path, handlers)` serves a Unix stream socket (mode 0660) with a
thread per connection; `ControlClient(path)` is the other end, used by the `hallgate`
command. The gateway fills the dispatch table {name: handler}; a new command is one more
entry.
Goals: never in the way of the daemon's real work (handlers run in the connection's thread,
the number of connections is bounded, every socket operation has a timeout); a bad request
gets an answer that names the problem and the connection stays usable; a socket file left
by a killed daemon is replaced, a live one is not stolen, and the file goes on stop.

Protocol: JSON lines both ways, UTF-8. A request is one object with "cmd" and the command's
arguments:
    {"cmd": "devices"}
The answer is zero or more objects without an "ok" key (progress, streamed records), then
exactly one final object with "ok":
    {"ok": true, ...the handler's result...}
    {"ok": false, "error": "unknown command 'x'; known: devices, hello, identify, ..."}
After the final object the connection takes the next request; the client may close at any
time (a streaming command then ends). A request line longer than MAX_LINE is answered with
an error and the connection is closed.

Handlers: handler(request: dict, session: Session) -> dict (merged into the final
{"ok": true}); raise ControlError("...") for an answer {"ok": false, "error": "..."}. A
streaming handler calls session.send(obj) for each record and checks session.alive() (the
client is still there and the server is not stopping); session.wait(seconds) sleeps, ending
early when either goes. `arg(request, name, type, default)` checks an argument.
"""

import json
import logging
import os
import select
import socket
import stat
import threading
import time
from pathlib import Path

log = logging.getLogger("hallgate.control")

MAX_LINE = 64 * 1024  # bytes of one request line
MAX_CLIENTS = 8  # connections served at once; more are told so and closed
IDLE_S = 300.0  # a connection silent this long between requests is closed
SEND_S = 10.0  # a client that takes nothing for this long is dropped
SUN_PATH_MAX = 100  # AF_UNIX paths are at most 107 bytes; longer ones go through /proc


class ControlError(Exception):
    """A request that cannot be served; the message goes to the client as "error"."""


class NoDaemon(ControlError):
    """Nobody listens on the control socket."""


def arg(request, name, kind, default=None, required=False):
    """request[name] checked to be a `kind` (int, float, str, bool); `default` if absent."""
    if name not in request or request[name] is None:
        if required:
            raise ControlError(f"'{name}' is required")
        return default
    value = request[name]
    ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        ok, value = True, float(value)
    if not ok:
        raise ControlError(f"'{name}' must be {kind.__name__}, not {json.dumps(value)}")
    return value


class _ShortPath:
    """A path usable with bind/connect whatever its length: long ones are reached through
    /proc/self/fd of their folder (Linux), which stays open for the object's life."""

    def __init__(self, path):
        self.path = Path(path)
        self._fd = None
        text = str(self.path)
        if len(text.encode()) > SUN_PATH_MAX:
            self._fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
            text = f"/proc/self/fd/{self._fd}/{self.path.name}"
        self.text = text

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _connect(path, timeout):
    """A connected socket, or NoDaemon."""
    short = _ShortPath(path)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(short.text)
    except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError) as e:
        s.close()
        raise NoDaemon(f"no gateway daemon answers on {path} ({e.strerror})") from None
    except OSError:
        s.close()
        raise
    finally:
        short.close()
    return s


class Session:
    """One connection as a handler sees it."""

    def __init__(self, sock, server):
        self._sock = sock
        self._server = server
        self._send_lock = threading.Lock()
        self.closed = False  # the client went away (or a send failed)

    def send(self, obj):
        """One line to the client; False once it is gone."""
        if self.closed:
            return False
        data = (json.dumps(obj, default=str, separators=(",", ":")) + "\n").encode()
        try:
            with self._send_lock:
                self._sock.settimeout(SEND_S)
                self._sock.sendall(data)
        except OSError:
            self.closed = True
        return not self.closed

    def alive(self):
        """The client is still connected and the server is not stopping. A streaming
        client sends nothing while it reads, so readable here means it closed (EOF) or
        sent something unexpected; either ends the stream."""
        if self.closed or self._server.stopping:
            return False
        try:
            readable, _, _ = select.select([self._sock], [], [], 0)
        except (OSError, ValueError):
            self.closed = True
            return False
        if readable:
            try:
                peek = self._sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                return True
            except OSError:
                peek = b""
            if not peek:
                self.closed = True
            return False
        return True

    def wait(self, seconds):
        """Sleep up to `seconds`, in short steps; False as soon as alive() is."""
        end = time.monotonic() + seconds
        while self.alive():
            left = end - time.monotonic()
            if left <= 0:
                return True
            self._server.stop_event.wait(min(left, 0.1))
        return False


class ControlServer:
    """Serves `handlers` {name: handler(request, session) -> dict} on a Unix socket."""

    def __init__(self, path, handlers=None, *, mode=0o660, max_clients=MAX_CLIENTS):
        self.path = Path(path)
        self.handlers = dict(handlers or {})
        self.mode = mode
        self.max_clients = max_clients
        self.stop_event = threading.Event()
        self._sock = None
        self._thread = None
        self._slots = threading.BoundedSemaphore(max_clients)
        self._conns = set()
        self._lock = threading.Lock()
        self.requests = 0
        self.errors = 0

    @property
    def stopping(self):
        return self.stop_event.is_set()

    def add(self, name, handler):
        self.handlers[name] = handler

    def start(self):
        """Bind and listen. Raises ControlError if a live daemon already answers there,
        or OSError if the socket cannot be made."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._replace_stale()
        # Bound under a temporary name, given its mode, then renamed into place: the socket
        # is never reachable with a wider mode, and the umask (process-wide) is not touched.
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        tmp_short = _ShortPath(tmp)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if os.path.lexists(tmp):
                os.unlink(tmp)
            sock.bind(tmp_short.text)
            os.chmod(tmp, self.mode)
            os.replace(tmp, self.path)
            sock.listen(self.max_clients)
        except OSError:
            sock.close()
            if os.path.lexists(tmp):
                os.unlink(tmp)
            raise
        finally:
            tmp_short.close()
        sock.settimeout(0.2)
        self._sock = sock
        self.stop_event.clear()
        self._thread = threading.Thread(target=self._accept_loop, name="control", daemon=True)
        self._thread.start()
        log.info("control socket %s", self.path)
        return self

    def _replace_stale(self):
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise ControlError(f"{self.path} exists and is not a socket; not replacing it")
        try:
            _connect(self.path, 1.0).close()
        except NoDaemon:
            log.info("control socket %s: left by a daemon that is gone; replacing it",
                     self.path)
            os.unlink(self.path)
            return
        except OSError as e:
            log.warning("control socket %s: %s; replacing it", self.path, e)
            os.unlink(self.path)
            return
        raise ControlError(f"another gateway daemon answers on {self.path}")

    def stop(self, timeout=2.0):
        """Stop accepting, end the streams, remove the socket file."""
        if self._sock is None:
            return
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._sock.close()
        self._sock = None
        try:
            # Only our own socket: a newer daemon may have replaced a file we lost.
            if os.path.exists(self.path) and self._owns_file():
                os.unlink(self.path)
        except OSError as e:
            log.warning("control socket %s: %s", self.path, e)
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _owns_file(self):
        # The file is ours if nobody else answers on it (ours is closed by now).
        try:
            _connect(self.path, 0.5).close()
        except NoDaemon:
            return True
        except OSError:
            return True
        return False

    # ---- connections --------------------------------------------------------------------

    def _accept_loop(self):
        while not self.stop_event.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self.stop_event.is_set():
                    return
                log.exception("control socket accept")
                self.stop_event.wait(0.2)
                continue
            if not self._slots.acquire(blocking=False):
                self._refuse(conn)
                continue
            with self._lock:
                self._conns.add(conn)
            threading.Thread(target=self._serve, args=(conn,), name="control-conn",
                             daemon=True).start()

    def _refuse(self, conn):
        try:
            conn.settimeout(1.0)
            conn.sendall((json.dumps({"ok": False, "error": (
                f"too many control connections ({self.max_clients}); try again"
            )}) + "\n").encode())
        except OSError:
            pass
        conn.close()

    def _serve(self, conn):
        session = Session(conn, self)
        buf = b""
        try:
            while not self.stop_event.is_set() and not session.closed:
                nl = buf.find(b"\n")
                if nl < 0:
                    if len(buf) > MAX_LINE:
                        session.send({"ok": False, "error": (
                            f"request line longer than {MAX_LINE} bytes; closing")})
                        return
                    data = self._recv(conn)
                    if data is None:
                        continue
                    if not data:
                        return  # the client closed
                    buf += data
                    continue
                line, buf = buf[:nl], buf[nl + 1 :]
                if line.strip():
                    session.send(self._answer(line, session))
        except OSError:
            pass
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()
            self._slots.release()

    def _recv(self, conn):
        """Bytes, b"" at the end, None when nothing came for a while (look at stop)."""
        conn.settimeout(0.2)
        idle_until = time.monotonic() + IDLE_S
        while not self.stop_event.is_set():
            try:
                return conn.recv(4096)
            except TimeoutError:
                if time.monotonic() > idle_until:
                    return b""
        return None

    def _answer(self, line, session):
        self.requests += 1
        try:
            try:
                request = json.loads(line)
            except (ValueError, UnicodeDecodeError) as e:
                raise ControlError(f"malformed request: not a JSON object ({e})") from None
            if not isinstance(request, dict):
                raise ControlError('malformed request: a JSON object like {"cmd": "devices"} '
                                   f"is expected, not {type(request).__name__}")
            cmd = request.get("cmd")
            if not isinstance(cmd, str):
                raise ControlError("malformed request: no \"cmd\" (known: "
                                   f"{', '.join(sorted(self.handlers))})")
            handler = self.handlers.get(cmd)
            if handler is None:
                raise ControlError(f"unknown command {cmd!r}; known: "
                                   f"{', '.join(sorted(self.handlers))}")
            result = handler(request, session) or {}
            return {"ok": True, **result}
        except ControlError as e:
            self.errors += 1
            return {"ok": False, "error": str(e)}
        except Exception as e:
            self.errors += 1
            log.exception("control command failed: %r", line[:200])
            return {"ok": False, "error": f"internal error: {type(e).__name__}: {e}"}


class ControlClient:
    """The `hallgate` command's end of the control socket.

        with ControlClient(path) as c:
            result = c.call("devices")                 # the final object (ok true)
            for record in c.stream("sniff", seconds=5):
                ...                                    # then c.result holds the final one
    """

    def __init__(self, path, timeout=10.0):
        self.path = Path(path)
        self.timeout = timeout
        self._sock = _connect(self.path, timeout)
        self._buf = b""
        self.result = None

    def close(self):
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, request):
        self._sock.sendall((json.dumps(request) + "\n").encode())

    def _line(self, timeout):
        self._sock.settimeout(timeout)
        while b"\n" not in self._buf:
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                raise ControlError(f"the gateway daemon did not answer within {timeout:g} s"
                                   ) from None
            if not data:
                raise ControlError("the gateway daemon closed the connection")
            self._buf += data
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def stream(self, cmd, timeout=None, **args):
        """Yields the records of a request; the final object goes to self.result, and an
        error answer raises ControlError. timeout: longest wait for one line."""
        self.result = None
        self.send({"cmd": cmd, **args})
        while True:
            obj = self._line(self.timeout if timeout is None else timeout)
            if "ok" in obj:
                self.result = obj
                if not obj["ok"]:
                    raise ControlError(obj.get("error", "the daemon refused"))
                return
            yield obj

    def call(self, cmd, timeout=None, **args):
        """The final object of a request (records before it are dropped)."""
        for _ in self.stream(cmd, timeout, **args):
            pass
        return self.result
