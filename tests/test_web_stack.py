"""The pages' web stack without a browser: every bad path, method and parameter gets a
4xx with a line saying why (never a traceback), requests that change anything are
refused from another origin or without the token, a stream starts with its snapshot and
a client that falls behind is dropped. The real server (uvicorn) on a loopback port; the
hall's pages read a broker that is not there (their link says so)."""

import asyncio
import http.client
import json
import socket

import pytest
from browsing import request
from hallgate.sim.broker import free_port

from hallgate.web import http_address
from hallgate.web.asgi import Broadcaster, Response, Route, WebApp, WebServer, sse
from hallgate.web.hallpages import HallPages


@pytest.fixture(scope="module")
def pages():
    p = HallPages("t-web", f"mqtt://127.0.0.1:{free_port()}", "127.0.0.1", 0).start()
    yield p
    p.stop()


@pytest.mark.parametrize("method,path,status", [
    ("GET", "/nope", 404),
    ("GET", "/board/", 404),
    ("GET", "/static/../static/live.js", 404),
    ("GET", "/static/%2e%2e/%2e%2e/etc/passwd", 404),
    ("GET", "/static/board.html", 404),  # a page is served at its path, with its checks
    ("GET", "/static/", 404),
    ("GET", "/board?n=0", 400),
    ("GET", "/board?n=13", 400),
    ("GET", "/board?n=abc", 400),
    ("GET", "/board?n=", 400),
    ("GET", "/board?n=-1", 400),
    ("GET", "/board?n=1&n=2", 400),
    ("GET", "/board?lang=de", 400),
    ("GET", "/board?sound=loud", 400),
    ("GET", "/board?debug=1", 400),
    ("GET", "/board?n", 400),
    ("GET", "/board?%ff=1", 400),
    ("GET", "/?n=3", 400),
    ("GET", "/api/board?since=0", 400),
    ("GET", "/api/manager/events?x=1", 400),
    ("GET", "/static/live.js?v=2", 400),
    ("POST", "/", 405),
    ("POST", "/board", 405),
    ("PUT", "/api/board", 405),
    ("DELETE", "/api/manager", 405),
    ("PATCH", "/api/board/events", 405),
    ("OPTIONS", "/board", 405),  # no CORS preflight is ever granted
    ("POST", "/nope", 404),
])
def test_bad_requests_get_a_4xx_with_the_reason(pages, method, path, status):
    got, headers, body = request(pages.server.port, method, path)
    assert got == status, body
    text = body.decode()
    assert text.strip() and "Traceback" not in text and len(text) < 300
    if status == 405:
        assert headers["allow"] == "GET, HEAD"


def test_malformed_http_gets_a_4xx(pages):
    port = pages.server.port
    for raw in (b"GET /\xff HTTP/1.1\r\nHost: x\r\n\r\n",
                b"NONSENSE\r\n\r\n",
                b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n"):
        status, _, body = request(port, None, None, raw=raw)
        assert 400 <= status < 500, (raw[:40], status)
        assert b"Traceback" not in body
    # A head that keeps coming is cut at 16 KiB (h11), not held in memory for ever.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000)
        assert s.recv(100).startswith(b"HTTP/1.1 400 ")


def test_pages_and_data_answer_with_safe_headers(pages):
    port = pages.server.port
    for path, ctype in [("/", "text/html"), ("/board?n=8&lang=ru&sound=chime", "text/html"),
                        ("/static/board.js", "text/javascript"), ("/static/pages.css", "text/css"),
                        ("/static/icon.svg", "image/svg+xml"), ("/api/board", "application/json")]:
        status, headers, body = request(port, "GET", path)
        assert status == 200 and headers["content-type"].startswith(ctype), path
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff"
        assert "server" not in headers
    status, headers, body = request(port, "HEAD", "/board")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 100
    status, headers, body = request(port, "HEAD", "/api/board/events")  # not held open
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    board = json.loads(request(port, "GET", "/api/board")[2])
    assert board == {"site": "t-web", "calls": [], "status": {
        "broker": False, "central": None, "central_since": None, "stats_age_s": None}}
    manager = json.loads(request(port, "GET", "/api/manager")[2])
    assert manager["stats"] is None and manager["windows"] == {}


def test_a_stream_starts_with_its_snapshot(pages):
    c = http.client.HTTPConnection("127.0.0.1", pages.server.port, timeout=5)
    try:
        c.request("GET", "/api/board/events")
        r = c.getresponse()
        assert r.status == 200 and r.getheader("content-type").startswith("text/event-stream")
        first = b""
        while not first.endswith(b"\n\n"):
            first += r.read1(4096)
        lines = first.decode().splitlines()
        assert lines[:2] == ["retry: 2000", "event: calls"]
        assert json.loads(lines[2].removeprefix("data: "))["site"] == "t-web"
    finally:
        c.close()


def test_http_address():
    assert http_address("0.0.0.0:0") == ("0.0.0.0", 0)
    for bad in ("", ":80", "host:", "host:99999", "host:http", "[::1]"):
        with pytest.raises(ValueError):
            http_address(bad)


# -- requests that change something: the gateway's identify will be the first -----------

@pytest.fixture(scope="module")
def writable():
    """A stack with one unsafe route, as the technician's page will have."""
    done = []
    app = WebApp([Route("/do", lambda req: done.append(req.body) or Response.text("done"),
                        methods=("POST",))], hosts=("hall-gw.example",))
    with WebServer(app, "127.0.0.1", 0) as server:
        yield server, app, done


def test_unsafe_requests_need_this_origin_and_the_token(writable):
    server, app, done = writable
    here = f"127.0.0.1:{server.port}"
    good = {"Host": here, "Origin": f"http://{here}", "Sec-Fetch-Site": "same-origin",
            "X-Hallgate-Token": app.token}
    refused = [
        {},  # curl with nothing
        {**good, "X-Hallgate-Token": ""},
        {**good, "X-Hallgate-Token": app.token[:-1] + "x"},
        {**good, "X-Hallgate-Token": "\u00e9"},  # not ASCII: refused, not a crash
        {**good, "Origin": "http://evil.example"},
        {**good, "Sec-Fetch-Site": "cross-site"},
        {**good, "Sec-Fetch-Site": "same-site"},
        {**good, "Host": f"evil.example:{server.port}",  # DNS rebinding
         "Origin": f"http://evil.example:{server.port}"},
    ]
    for headers in refused:
        status, _, body = request(server.port, "POST", "/do", headers, body=b"x=1")
        assert status == 403 and body.startswith(b"refused: "), (headers, body)
    assert done == []
    status, _, body = request(server.port, "POST", "/do", good, body=b"x=1")
    assert (status, body, done) == (200, b"done\n", [b"x=1"])
    by_name = {**good, "Host": f"hall-gw.example:{server.port}",
               "Origin": f"http://hall-gw.example:{server.port}"}
    assert request(server.port, "POST", "/do", by_name)[0] == 200
    assert request(server.port, "POST", "/do", good, body=b"x" * 20000)[0] == 413
    assert request(server.port, "GET", "/do")[0] == 405


def test_a_port_in_use_is_said_at_once():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError):
            WebServer(WebApp([]), "127.0.0.1", taken.getsockname()[1])


def test_a_client_that_falls_behind_is_dropped():
    async def main():
        b = Broadcaster(backlog=4, heartbeat_s=0.05)
        b.attach(asyncio.get_running_loop())
        stream = b.subscribe("board", lambda: b"first")
        assert await anext(stream) == b"first"
        assert b.clients("board") == 1
        assert await anext(stream) == sse("ping", {})  # silence: a heartbeat
        for k in range(10):  # more than its backlog, unread
            b.publish("board", sse("call", k))
        await asyncio.sleep(0.01)
        assert b.clients("board") == 0
        assert [e async for e in stream] == []  # it ends: the browser starts over
    asyncio.run(main())


def test_central_run_says_what_is_wrong_with_http(tmp_path):
    from harness import hallgate

    config = tmp_path / "central.toml"
    base = ('site = "t-1"\nbroker = "{}://127.0.0.1:1"\ndatabase = "c.db"\n'
            '[services]\nA = "P"\n[[windows]]\nn = 1\nservices = ["A"]\n')
    assert "HOST:PORT" in hallgate("central", "run", "--config", config, "--http", "8080").stderr
    config.write_text(base.format("mqtts"))
    out = hallgate("central", "run", "--config", config, "--http", "127.0.0.1:0")
    assert out.returncode == 2 and "--http-cert" in out.stderr  # never the central's own
    config.write_text(base.format("mqtt"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = hallgate("central", "run", "--config", config, "--http", f"127.0.0.1:{port}")
    assert out.returncode == 1 and f"127.0.0.1:{port}" in out.stderr and "in use" in out.stderr
    assert "Traceback" not in out.stderr
