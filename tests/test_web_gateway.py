"""The gateway's technician page (issue 13, part 3): `[http] listen` in the hall config.

Checked: the config (off by default; loopback without a token; anywhere else refused
without one, naming the key and its line); without `listen` the daemon imports nothing of
the web stack; with a token every route but the login form needs it (a wrong one is
refused, a cross-site login too); bad paths, parameters and identify requests get a 4xx
with a line, never a traceback; identify from another site, another Host or without the
page's token is refused and the device shows nothing.
In Debian's chromium (headless, Playwright), against `hallgate run` as a child process
polling real firmware on MicroPython (a call panel and a window display on a paced pty
bus hub) with mosquitto: the page's figures equal the daemon's status file (what
`hallgate status` reads) value for value, counters between two status writes; a press
and a malformed command show up; the Identify button makes the display flash (the
firmware says {"identify": 10} on its control channel); the page warns while the daemon
restarts and comes back by itself. The README's screenshot comes from here
(HALLGATE_SCREENSHOTS=docs/screens).
"""

import contextlib
import datetime
import json
import socket
import subprocess
import sys
import time

import browsing
import pytest
from browsing import launched, request
from conftest import read_retained, wait_for
from gpiozero.pins.mock import MockFactory
from hallgate.gateway.config import check_config, load_config
from hallgate.gateway.daemon import Gateway
from hallgate.sim.broker import Mosquitto, free_port
from harness import CentralProcess, Daemon, Witness, daemon_env, write_hall_config

SITE, GW = "page-site", "gw-page"
PANEL, DISPLAY = 1, 2  # addresses; both at window 1
CENTRAL_STATUS = f"hall/v1/{SITE}/central/status"
SCREEN = {"width": 1440, "height": 800}  # a technician's laptop
TOKEN = "correct-horse-battery-staple-42"

BASE = """\
[gateway]
site = "test"
id = "gw-1"

[mqtt]
urls = ["mqtt://127.0.0.1:1"]

[outbox]
path = "outbox.sqlite"

[[windows]]
number = 1
like_pin = 5
dislike_pin = 6
"""  # 14 lines: an [http] table appended after a blank line starts at line 16


def write(tmp_path, http, name="hall.toml"):
    path = tmp_path / name
    path.write_text(BASE + "\n" + http)
    return path


def problems(path):
    return [(p.key, p.line, p.message) for p in check_config(path)]


# ---- the config ------------------------------------------------------------------------

def test_the_page_is_off_by_default_and_loopback_needs_no_token(tmp_path):
    assert load_config(write(tmp_path, "")).http.address is None
    for listen, address in (("127.0.0.1:8081", ("127.0.0.1", 8081)),
                            ("[::1]:8081", ("::1", 8081)),
                            ("localhost:8081", ("localhost", 8081))):
        config = load_config(write(tmp_path, f'[http]\nlisten = "{listen}"\n'))
        assert config.http.address == address and config.http.read_token() is None


def test_off_loopback_the_page_needs_a_token_said_with_key_and_line(tmp_path):
    path = write(tmp_path, '[http]\nlisten = "0.0.0.0:8081"\n', "open.toml")
    [(key, line, message)] = problems(path)
    assert (key, line) == ("http.listen", 17)
    assert message.startswith('"0.0.0.0:8081" is reachable from other machines: the page '
                              "then needs a token (token_file = ")
    (tmp_path / "page.token").write_text(TOKEN + "\n")
    good = write(tmp_path, '[http]\nlisten = "0.0.0.0:8081"\ntoken_file = "page.token"\n')
    assert load_config(good).http.read_token() == TOKEN  # its line end dropped
    (tmp_path / "short.token").write_text("letmein\n")
    cases = {
        'listen = "[::]:8081"\ntoken = "short"': ("http.token", 18, "the token is 5 characters"),
        'listen = "10.0.0.5:8081"\ntoken_file = "short.token"':
            ("http.token_file", 18, f"{tmp_path / 'short.token'}: the token is 7 characters"),
        'listen = "0.0.0.0:8081"\ntoken_file = "nowhere.token"':
            ("http.token_file", 18, "file not found: "),  # and not "needs a token" again
        f'listen = "0.0.0.0:8081"\ntoken = "{TOKEN}"\ntoken_file = "page.token"':
            ("http.token", 18, "give token or token_file, not both"),
        'token_file = "page.token"':
            ("http.token_file", 17, "token_file is set but listen is not: no page is served"),
        'listen = "hall-gw.local:8081"': ("http.listen", 17, '"hall-gw.local" is not an IP '
                                                              "address"),
        'listen = "8081"': ("http.listen", 17, '"8081": expected HOST:PORT'),
        'listen = "127.0.0.1:0"': ("http.listen", 17, "port 0 would be a different port"),
        "listen = 8081": ("http.listen", 17, "expected a string, found an integer (8081)"),
        'lisen = "127.0.0.1:8081"': ("http.lisen", 17, 'unknown key "lisen" (did you mean '
                                                         '"listen"?)'),
    }
    for text, (key, line, part) in cases.items():
        got = problems(write(tmp_path, f"[http]\n{text}\n"))
        assert len(got) == 1 and got[0][:2] == (key, line) and part in got[0][2], (text, got)

    # `hallgate run` refuses it at once, in those words, never with a traceback.
    out = subprocess.run([sys.executable, "-m", "hallgate.cli", "run", "--config", str(path),
                          "--status-file", str(tmp_path / "run" / "status.json")],
                         capture_output=True, text=True, timeout=30, env=daemon_env())
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert f"{path}:17: http.listen: \"0.0.0.0:8081\" is reachable" in out.stderr


def test_without_listen_nothing_of_the_web_stack_is_imported(tmp_path):
    """A daemon's imports, in a fresh interpreter: none of hallgate.web, uvicorn or h11
    without [http]; the page's module once listen is set (uvicorn only when it starts)."""
    off, on = write(tmp_path, "", "off.toml"), write(
        tmp_path, f'[http]\nlisten = "127.0.0.1:{free_port()}"\n', "on.toml")
    script = f"""
import json, sys
from gpiozero.pins.mock import MockFactory
from hallgate.gateway.config import load_config
from hallgate.gateway.daemon import Gateway
web = lambda: sorted(m for m in sys.modules if m.split(".")[0] in ("uvicorn", "h11")
                     or m.startswith("hallgate.web"))
gw = Gateway(load_config({str(off)!r}), pin_factory=MockFactory())
seen = [web()]
gw.outbox.close()
gw = Gateway(load_config({str(on)!r}), pin_factory=MockFactory())
seen.append(web())
print(json.dumps(seen))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path, env=daemon_env())
    assert out.returncode == 0, out.stderr
    off_mods, on_mods = json.loads(out.stdout.splitlines()[-1])
    assert off_mods == []
    assert "hallgate.web.gatewaypage" in on_mods and "uvicorn" not in on_mods


# ---- HTTP without a browser --------------------------------------------------------------

def same_origin(port, **more):
    here = f"127.0.0.1:{port}"
    return {"Host": here, "Origin": f"http://{here}", "Sec-Fetch-Site": "same-origin", **more}


def page_token(port, headers=None):
    """The token the page carries for its requests that change something."""
    status, _, body = request(port, "GET", "/", headers)
    assert status == 200, body
    return body.decode().split('name="hallgate-token" content="', 1)[1].split('"', 1)[0]


def assert_said(status, body, want):
    text = body.decode()
    assert status == want, (status, text)
    assert text.strip() and "Traceback" not in text and len(text) < 400, text


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """A gateway in this process (no bus, GPIO on mock pins, its broker unreachable)
    whose page is behind a token."""
    from gpiozero.pins.mock import MockFactory
    from hallgate.gateway.daemon import Gateway

    tmp = tmp_path_factory.mktemp("guarded")
    (tmp / "page.token").write_text(TOKEN + "\n")
    port = free_port()
    path = write(tmp, f'[http]\nlisten = "127.0.0.1:{port}"\ntoken_file = "page.token"\n')
    gw = Gateway(load_config(path), pin_factory=MockFactory(),
                 control_path=tmp / "control.sock").start()
    try:
        assert gw.page is not None and gw.page_error is None
        yield gw, port
    finally:
        gw.stop(drain_s=0)


def test_with_a_token_every_route_but_the_login_needs_it(guarded):
    gw, port = guarded
    status, headers, _ = request(port, "GET", "/")
    assert status == 303 and headers["location"] == "/login"
    for method, path in (("GET", "/api/gateway"), ("GET", "/api/gateway/events"),
                         ("HEAD", "/api/gateway")):
        status, _, body = request(port, method, path)
        assert status == 401 and (method == "HEAD" or body == b"log in first: /login\n")
    # Identify with everything right but the session: refused before anything is read.
    status, _, body = request(port, "POST", "/api/identify", same_origin(
        port, **{"X-Hallgate-Token": gw.page.app.token}), b'{"address": 1}')
    assert_said(status, body, 401)
    assert request(port, "GET", "/static/gateway.css")[0] == 200  # styles: no secret
    status, _, body = request(port, "GET", "/login")
    assert status == 200 and b'name="token"' in body and b'id="wrong" hidden' in body

    def login(token, headers):
        return request(port, "POST", "/login", {
            **headers, "Content-Type": "application/x-www-form-urlencoded"},
            f"token={token}".encode())

    t0 = time.monotonic()
    status, _, body = login("guess", same_origin(port))
    assert status == 403 and b'id="wrong">' in body and time.monotonic() - t0 >= 0.9
    for headers in ({"Host": f"127.0.0.1:{port}"},  # says no origin at all
                    {"Host": f"127.0.0.1:{port}", "Origin": "null"},  # and no Sec-Fetch-Site
                    same_origin(port, Origin="http://evil.example"),
                    same_origin(port, **{"Sec-Fetch-Site": "cross-site"}),
                    {**same_origin(port), "Host": f"evil.example:{port}",
                     "Origin": f"http://evil.example:{port}"}):
        status, _, body = login(TOKEN, headers)
        assert status == 403 and body.startswith(b"refused: "), (headers, body)
    status, headers, _ = login(TOKEN, same_origin(port))
    assert status == 303 and headers["location"] == "/"
    cookie = headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    session = cookie.split(";", 1)[0]
    assert TOKEN not in session  # a keyed hash of it, not the token
    status, _, body = request(port, "GET", "/api/gateway", {"Cookie": session})
    assert status == 200 and json.loads(body)["gateway"] == "gw-1"
    for bad in (session[:-1] + "0", "hallgate_page=", "other=1", session + "\u00e9"):
        assert request(port, "GET", "/api/gateway", {"Cookie": bad})[0] == 401, bad
    # With the session, identify gets as far as its own checks.
    token = page_token(port, {"Cookie": session})
    status, _, body = request(port, "POST", "/api/identify", same_origin(
        port, Cookie=session, **{"X-Hallgate-Token": token}), b'{"address": 1}')
    assert_said(status, body, 400)
    assert b"say which bus (buses: none)" in body


def test_a_port_in_use_leaves_the_gateway_running_without_its_page(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = write(tmp_path, f'[http]\nlisten = "127.0.0.1:{port}"\n')
        gw = Gateway(load_config(path), pin_factory=MockFactory(),
                     control_path=tmp_path / "control.sock").start()
        try:
            assert gw.page is None and "in use" in gw.page_error
            assert gw.control is not None and gw.healthy() is not None
            page = gw.status()["page"]  # what `hallgate status` prints as NOT SERVED
            assert page["listen"] == f"127.0.0.1:{port}" and "in use" in page["error"]
        finally:
            gw.stop(drain_s=0)


# ---- a daemon polling real firmware ---------------------------------------------------------

@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """mosquitto, the central service, a paced bus hub with a firmware call panel and
    window display, and `hallgate run` polling them (events out until the central's
    receipt) with its page on 127.0.0.1 (no token)."""
    from hallgate.sim.device import FirmwareDevice
    from hallgate.sim.hub import BusHub

    tmp = tmp_path_factory.mktemp("gateway-page")
    with contextlib.ExitStack() as stack:
        hub = BusHub(baud=115200).start()
        stack.callback(hub.close)
        devices = {}
        for addr, role in ((PANEL, "call-panel"), (DISPLAY, "window-display")):
            devices[addr] = FirmwareDevice(tmp / f"d{addr}", addr, role, 1,
                                           hub.add_port(f"d{addr}"), ready_timeout=30,
                                           lockout_ms=0)
            stack.callback(devices[addr].close)
        broker = Mosquitto(tmp / "broker").start()
        stack.callback(broker.stop)
        witness = Witness(broker.port, client_id="page-witness")
        stack.callback(witness.close)
        central = CentralProcess(tmp, SITE, broker.url, windows=[1])
        stack.callback(central.close)
        central.start()
        wait_for(lambda: b'"online"' in (read_retained(broker.port, CENTRAL_STATUS, 0.3) or b""),
                 30, "the central online")
        port = free_port()
        config = write_hall_config(
            tmp, site=SITE, gateway=GW, broker_url=broker.url, hub_path=hub.master_path,
            devices=[(PANEL, "call-panel", 1), (DISPLAY, "window-display", 1)],
            windows="[[windows]]\nnumber = 1\n", delivery="receipt")
        config.write_text(config.read_text() + f'\n[http]\nlisten = "127.0.0.1:{port}"\n')
        daemon = Daemon(tmp, config)
        stack.callback(daemon.close)
        daemon.start()
        daemon.wait_status(lambda s: s["broker"]["connected"] and s["devices"]["online"] == 2,
                           "daemon connected, both devices online", timeout=30)
        wait_for(lambda: request_ok(port), 10, "the page's port")
        yield {"port": port, "url": f"http://127.0.0.1:{port}", "daemon": daemon,
               "devices": devices, "witness": witness, "hub": hub}


def request_ok(port):
    try:
        return request(port, "GET", "/api/gateway")[0] == 200
    except OSError:
        return False


@pytest.mark.micropython
@pytest.mark.parametrize("method,path,status", [
    ("GET", "/nope", 404),
    ("GET", "/index.html", 404),
    ("GET", "/static/../static/gateway.js", 404),
    ("GET", "/static/%2e%2e/%2e%2e/etc/passwd", 404),
    ("GET", "/static/gateway.html", 404),  # the page is served at / with its checks
    ("GET", "/static/manager.js", 404),  # the hall's pages are not the gateway's
    ("GET", "/login", 404),  # no token, no login
    ("GET", "/?token=x", 400),
    ("GET", "/api/gateway?x=1", 400),
    ("GET", "/api/gateway?%ff=1", 400),
    ("GET", "/api/gateway/events?since=0", 400),
    ("POST", "/", 405),
    ("PUT", "/api/gateway", 405),
    ("DELETE", "/api/gateway", 405),
    ("GET", "/api/identify", 405),
    ("OPTIONS", "/api/identify", 405),  # no CORS preflight is ever granted
])
def test_bad_paths_and_parameters_get_a_4xx(lab, method, path, status):
    got, headers, body = request(lab["port"], method, path)
    assert_said(got, body, status)
    if status == 405:
        assert "allow" in headers


@pytest.mark.micropython
def test_bad_identify_requests_get_a_4xx_and_cross_site_ones_a_403(lab):
    port, display = lab["port"], lab["devices"][DISPLAY]
    token = page_token(port)
    good = same_origin(port, **{"X-Hallgate-Token": token, "Content-Type": "application/json"})
    mark = display.mark()
    for body, want, part in (
            (b"", 400, b"the body must be JSON"),
            (b"address=2", 400, b"the body must be JSON"),
            (b'{"address": 2, "what": 1}', 400, b"expected {"),
            (b"[2]", 400, b"expected {"),
            (b'{"address": 0}', 400, b"address: a whole number 1-247, not 0"),
            (b'{"address": 248}', 400, b"not 248"),
            (b'{"address": "2"}', 400, b'not "2"'),
            (b'{"address": true}', 400, b"not true"),
            (b'{"address": 2, "seconds": 0}', 400, b"seconds: a whole number 1-255"),
            (b'{"address": 2, "seconds": 1e9}', 400, b"seconds: a whole number 1-255"),
            (b'{"address": 77}', 404, b"device 77 is not known on bus hall"),
            (b'{"bus": "nope", "address": 2}', 404, b'no bus "nope" (buses: hall)'),
            (b'{"bus": 7, "address": 2}', 404, b"no bus 7"),
            (b"x" * 20000, 413, b"over")):
        status, _, answer = request(port, "POST", "/api/identify", good, body)
        assert_said(status, answer, want)
        assert part in answer, (body[:40], answer)
    ask = b'{"bus": "hall", "address": 2, "seconds": 3}'
    for headers in ({},  # curl with nothing
                    {**good, "X-Hallgate-Token": ""},
                    {**good, "X-Hallgate-Token": token[:-1] + "x"},
                    {**good, "Origin": "http://evil.example"},
                    {**good, "Sec-Fetch-Site": "cross-site"},
                    {**good, "Host": f"evil.example:{port}",  # DNS rebinding
                     "Origin": f"http://evil.example:{port}"}):
        status, _, answer = request(port, "POST", "/api/identify", headers, ask)
        assert status == 403 and answer.startswith(b"refused: "), (headers, answer)
    # ... and reading the page through a rebound name is refused as well.
    status, _, answer = request(port, "GET", "/api/gateway", {"Host": f"evil.example:{port}"})
    assert_said(status, answer, 403)
    time.sleep(0.5)  # a request that got through would have reached the device by now
    assert not any("identify" in m for m in display.messages[mark:])
    status, _, answer = request(port, "POST", "/api/identify", good, ask)
    assert status == 200 and json.loads(answer) == {"ok": True, "bus": "hall", "address": 2,
                                                    "seconds": 3}
    assert display.wait_kind("identify", since=mark, timeout=10) == 3


# ---- in the browser ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    with launched() as b:
        yield b


def open_page(browser, url):
    return browsing.open_page(browser, url, SCREEN)


def banner(page):
    return page.evaluate("document.getElementById('banner').hidden ? null : "
                         "document.getElementById('banner').textContent")


def screenshot(page, folder, name, readme=False):
    return browsing.screenshot(page, folder, name, full_page=True, readme=readme)


# Every figure on the page, as the raw values its elements carry.
FIGURES = """() => {
  const v = (e) => JSON.parse(e.dataset.value);
  const rows = (sel, key) => {
    const out = {};
    document.querySelectorAll(sel).forEach((tr) => {
      const row = {};
      tr.querySelectorAll("[data-key]").forEach((td) => { row[td.dataset.key] = v(td); });
      out[tr.dataset[key]] = row;
    });
    return out;
  };
  const kpi = {};
  document.querySelectorAll("#kpis [data-key]").forEach((e) => { kpi[e.dataset.key] = v(e); });
  const at = document.getElementById("asof").dataset.value;
  return {kpi: kpi, at: at ? JSON.parse(at) : null,
          devices: rows("#devices tr[data-device]", "device"),
          buses: rows("#buses tr[data-bus]", "bus"),
          errors: Array.from(document.querySelectorAll("#errors li")).map((li) => li.dataset.kind),
          about: document.getElementById("about").textContent};
}"""


def epoch(ts):
    return datetime.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def as_status_says(st):
    """What the page must show, from the daemon's status file."""
    o, b = st["outbox"], st["broker"]
    return {
        "kpi": {"broker.connected": b["connected"], "broker.url": b["url"],
                "outbox.central_online": o["central_online"], "outbox.depth": o["depth"],
                "outbox.waiting_to_send": o["waiting_to_send"],
                "outbox.awaiting_receipt": o["awaiting_receipt"],
                "outbox.oldest_age_s": o["oldest_age_s"],
                "devices.online": st["devices"]["online"],
                "devices.total": st["devices"]["total"]},
        "devices": {f"{r['bus']}:{r['address']}": {k: r[k] for k in (
            "bus", "address", "role", "window", "online", "firmware")}
            for r in st["devices"]["table"]},
        "buses": {n: {k: s[k] for k in ("port", "events", "timeouts")}
                  for n, s in st["buses"].items()},
    }


def shown(page, want):
    got = page.evaluate(FIGURES)
    return {"kpi": {k: got["kpi"].get(k, "missing") for k in want["kpi"]},
            "devices": {d: {k: got["devices"].get(d, {}).get(k, "missing") for k in row}
                        for d, row in want["devices"].items()},
            "buses": {n: {k: got["buses"].get(n, {}).get(k, "missing") for k in row}
                      for n, row in want["buses"].items()}}


def wait_figures_equal_status(page, daemon, what):
    """The page's figures = the status the daemon wrote: both are written every second,
    so they agree within a few seconds once nothing moves."""
    def same():
        st = daemon.status()
        return st is not None and shown(page, as_status_says(st)) == as_status_says(st)

    try:
        wait_for(same, 10, what)
    except AssertionError:
        st = daemon.status()
        assert shown(page, as_status_says(st)) == as_status_says(st), what


def check_counters_between_status_writes(page, daemon):
    """A counter that moves all the time (poll cycles): the page's value lies between the
    status written just before its figures were taken and the one written just after."""
    before = daemon.status()
    wait_for(lambda: (page.evaluate(FIGURES)["at"] or 0) > epoch(before["ts"]) + 0.05, 5,
             "figures newer than the status file")
    got = page.evaluate(FIGURES)
    after = {}

    def newer():
        st = daemon.status()
        after.update(st or {})
        return st is not None and epoch(st["ts"]) > got["at"] + 0.05

    wait_for(newer, 5, "a status newer than the figures")
    low, mine, high = (before["buses"]["hall"]["cycles"], got["buses"]["hall"]["cycles"],
                       after["buses"]["hall"]["cycles"])
    assert 0 < low <= mine <= high, (low, mine, high)


@pytest.mark.micropython
def test_the_page_shows_the_daemons_figures_and_identifies_a_device(lab, browser, tmp_path):
    daemon, devices, witness = lab["daemon"], lab["devices"], lab["witness"]
    page = open_page(browser, lab["url"] + "/")
    wait_for(lambda: banner(page) is None and page.evaluate(FIGURES)["devices"], 15,
             "the page live")
    assert page.title() == f"Gateway {SITE}/{GW}"
    wait_figures_equal_status(page, daemon, "the page's figures = the daemon's status")
    got = page.evaluate(FIGURES)
    assert got["kpi"]["devices.online"] == 2 and got["kpi"]["broker.connected"] is True
    assert f"pid {daemon.proc.pid}" in got["about"]
    assert {d: row["firmware"] for d, row in got["devices"].items()} == {
        f"hall:{a}": devices[a].ready["firmware"] for a in (PANEL, DISPLAY)}
    assert all(row["errors"] == 0 for row in got["devices"].values())
    check_counters_between_status_writes(page, daemon)

    # A press goes through the outbox to the broker; a malformed command is reported on the
    # errors topic: both show, and the figures still equal the status.
    events = len(witness.events())
    devices[PANEL].press("call")
    wait_for(lambda: len(witness.events()) > events, 10, "the press at the broker")
    daemon.wait_status(lambda s: s["broker"]["receipts"] >= 1 and s["outbox"]["depth"] == 0,
                       "the central's receipt", timeout=10)
    witness.publish(f"hall/v1/{SITE}/window/1/display", "{not json", retain=False)
    wait_for(lambda: "bad-command" in page.evaluate(FIGURES)["errors"], 10,
             "the bad command among the recent errors")
    wait_figures_equal_status(page, daemon, "the figures after a press")
    assert page.evaluate(FIGURES)["buses"]["hall"]["events"] >= 1
    assert page.locator("#errors li[data-kind='bad-command']").inner_text().count(
        "bad-command") == 1

    # Identify: the window display's firmware flashes for 10 s.
    mark = devices[DISPLAY].mark()
    page.locator(f"button.identify[data-device='hall:{DISPLAY}']").click()
    assert devices[DISPLAY].wait_kind("identify", since=mark, timeout=10) == 10
    said = page.locator("#identify-said")
    wait_for(lambda: said.get_attribute("data-status") == "200", 10, "the page's answer")
    assert said.inner_text() == (f"Device {DISPLAY} on bus hall is showing itself for 10 s: "
                                 "a display flashes, a panel beeps.")
    screenshot(page, tmp_path, "gateway", readme=True)
    assert page.errors == []
    page.close()


@pytest.mark.micropython
def test_the_page_comes_back_after_the_daemon_restarts(lab, browser, tmp_path):
    daemon = lab["daemon"]
    page = open_page(browser, lab["url"] + "/")
    wait_for(lambda: banner(page) is None and page.evaluate(FIGURES)["devices"], 15,
             "the page live")
    old = daemon.proc.pid
    assert daemon.terminate() == 0
    wait_for(lambda: "No connection to the gateway daemon" in (banner(page) or ""), 10,
             "the page's warning")
    assert page.evaluate(FIGURES)["kpi"]["devices.online"] == 2  # the last figures stay
    daemon.start()
    daemon.wait_status(lambda s: s["broker"]["connected"] and s["devices"]["online"] == 2,
                       "the daemon back, both devices online", timeout=30)
    wait_for(lambda: banner(page) is None and f"pid {daemon.proc.pid}" in
             page.evaluate(FIGURES)["about"], 20, "the page back, from the new daemon")
    assert daemon.proc.pid != old
    wait_figures_equal_status(page, daemon, "the figures after the restart")
    screenshot(page, tmp_path, "gateway-after-restart")
    assert page.errors == []
    page.close()


class StagedTransfer:
    """An update half-way, as Updates.running() reads an ota.Transfer (its progress)."""

    done = False
    addr = 7

    def progress(self, bus_name):
        return {"bus": bus_name, "address": 7, "phase": "data", "offset": 12400,
                "device_state": "receiving", "result": None, "reason": "",
                "version": "0.2.0", "firmware": "0.1.0", "bytes": 31000, "chunks": 100,
                "resent": 2, "failures": 0, "resumed_from": [], "interruptions": 0,
                "fresh_starts": 0, "seconds": 4.2}


def test_behind_a_token_in_the_browser_login_then_updates(guarded, browser):
    from hallgate.gateway.commands import utc_ts
    from hallgate.gateway.updates import Job

    gw, port = guarded
    page = open_page(browser, f"http://127.0.0.1:{port}/")
    assert page.url.endswith("/login")
    page.fill("#token", "not it")
    page.click("button[type=submit]")
    page.wait_for_selector("#wrong", state="visible")
    page.fill("#token", TOKEN)
    page.click("button[type=submit]")
    wait_for(lambda: page.url.endswith(f":{port}/") and "gw-1" in (
        page.evaluate("document.getElementById('name') && "
                      "document.getElementById('name').textContent") or ""), 10,
             "the page after the login")

    # Update progress, as `hallgate ota --status` has it: one running, one ended.
    gw.updates.history.add({"started": utc_ts(time.time() - 60), "ended": utc_ts(),
                            "bus": "hall", "address": 5, "board_id": None,
                            "role": "call-panel", "from": "0.1.0", "to": "0.2.0",
                            "runs": "0.2.0", "outcome": "updated", "reason": "",
                            "bundle": "panel.zip", "bytes": 31000, "seconds": 41.0})
    job = Job("hall", StagedTransfer(), "panel.zip")
    with gw.updates._lock:
        gw.updates._jobs.append(job)
    try:
        running = page.locator("#updates li[data-update='hall:7']")
        wait_for(lambda: running.count() == 1, 10, "the update running on the page")
        assert json.loads(running.locator("[data-key='progress']").get_attribute(
            "data-value")) == 12400 / 31000
        assert "0.1.0 \u2192 0.2.0, data, 12400 of 31000 bytes (40%)" in running.inner_text()
        assert "updated" in page.locator("#updates li").nth(1).inner_text()
        assert page.locator("[data-key='updates.running']").inner_text() == "1"
    finally:
        with gw.updates._lock:
            gw.updates._jobs.remove(job)
    assert page.errors == []
    page.close()
