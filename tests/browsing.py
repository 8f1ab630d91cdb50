"""The pages' tests' clients: plain HTTP requests, and Debian's chromium, headless, driven
by Playwright (never Playwright's own browser download: make installs chromium as it
installs mosquitto)."""

import http.client
import os
import shutil
import socket
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
# As machines/python.md says works here: no network of its own, a fresh profile (Playwright
# makes one per launch); sound allowed without a click, as a kiosk board is started.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--autoplay-policy=no-user-gesture-required"]


def launched():
    """A context manager yielding the browser; fails under CI (where make installed it)
    and skips, saying why, elsewhere when chromium is missing."""
    if not os.path.exists(CHROMIUM):
        why = f"{CHROMIUM} is missing: Debian's chromium (make test installs it)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    from contextlib import contextmanager

    from playwright.sync_api import sync_playwright

    @contextmanager
    def run():
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
            try:
                yield b
            finally:
                b.close()

    return run()


def open_page(browser, url, viewport, init_script=None):
    """A new page at `url`; `page.errors` collects what the page raised or logged as an
    error. A failed load while the server is down is expected; anything else (a CSP
    violation, a script error) is a fault of the page."""
    page = browser.new_page(viewport=viewport)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" and not (
        "net::ERR_" in m.text or "Failed to load resource" in m.text) else None)
    page.errors = errors
    if init_script:
        page.add_init_script(init_script)
    page.goto(url)
    return page


def screenshot(page, folder, name, full_page=False, readme=False):
    """The page as a PNG in `folder` (animations stopped); the README's also in
    $HALLGATE_SCREENSHOTS when set (docs/screens)."""
    path = Path(folder) / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page, animations="disabled")
    if readme and os.environ.get("HALLGATE_SCREENSHOTS"):
        out = Path(os.environ["HALLGATE_SCREENSHOTS"])
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, out / f"{name}.png")
    return path


def request(port, method, path, headers=None, body=None, raw=None):
    """(status, headers, body) of one request; `raw`: bytes sent as they are."""
    if raw is not None:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
            s.sendall(raw)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), {}, rest
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()
