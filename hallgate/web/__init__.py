"""The pages: a hall board for the TV on the wall, a manager's view, and the gateway's
technician page, on one small web stack.

Design note
-----------
Operations: `hallgate central run --http HOST:PORT` (and `hallgate sim --http`, `make
demo`) serve the hall board at ``/board`` and the manager's view at ``/``
(hallgate/web/hallpages.py); the gateway daemon, with ``[http] listen`` in its config,
serves its technician page (hallgate/web/gatewaypage.py). Nothing here is imported
unless a page is configured: the gateway daemon is 43 MB resident on a Pi and must stay
under 50 MB with its page on (bench/footprint.py measures it, on beside off).

The stack, and why (measured on top of the gateway daemon's imports, serving):
- uvicorn (h11 underneath, pure Python) runs a small ASGI application of ours
  (hallgate/web/asgi.py): +4.6 MB. Starlette on top adds anyio and its routing for +6.2 MB
  in all, aiohttp +15.7 MB; the standard library's http.server +0.9 MB but one thread
  per connection, and its own docs keep it out of production. Our needs are a handful of
  exact paths, a fixed list of files and one stream, so a framework buys little; uvicorn,
  widely kept, does what must not be ours: HTTP parsing (h11, with size limits), keep-alive
  timeouts, a cap on connections, shutdown.
- Live updates by server-sent events, not WebSocket: one way is all the pages need, it is
  plain HTTP (no WebSocket library loaded), and the browser reconnects by itself (the
  pages add a watchdog and their own retry on top, hallgate/web/static/live.js).
- The front end is plain HTML, CSS and JavaScript in hallgate/web/static/: no build step,
  no library, charts drawn as SVG by a few lines of script; sound by the Web Audio API (a
  chime made by oscillators, no sound file) and speech by the browser's speechSynthesis.

Where the data comes from: the hall's MQTT topics, not the central's memory
(hallgate/web/hallfeed.py). The pages' client subscribes to the site's retained window
state, ``central/stats``, ``central/status`` and ``central/alerts``, and publishes
nothing: so the pages work beside any central that speaks the contract (or on another
machine), they cannot change the queue whatever a request says, and on the secured broker
they run with a read-only monitoring certificate (hardware/mosquitto: ``--http-cert``).

Safety: every page only reads. Unsafe methods (POST, PUT, PATCH, DELETE) are refused
unless a route asks for them (the gateway's identify, its login form), and then only from
the same origin with the page's token; bad paths and parameters get a 4xx with a line
saying why, never a traceback.
"""

from __future__ import annotations

__all__ = ["http_address"]


def http_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8080`` for IPv6; port 0: any free one) -> (host, port);
    ValueError with the reason. Standard library only: the command's parser uses it.

    >>> http_address("127.0.0.1:8080")
    ('127.0.0.1', 8080)
    >>> http_address("[::]:80")
    ('::', 80)
    >>> http_address("8080")
    Traceback (most recent call last):
    ...
    ValueError: '8080': HOST:PORT, e.g. 0.0.0.0:8080 (all interfaces) or 127.0.0.1:8080
    """
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r}: HOST:PORT, e.g. 0.0.0.0:8080 (all interfaces) or "
                         "127.0.0.1:8080")
    return host, int(port)
