"""TCP_NODELAY for paho clients: an MQTT message goes out when it is published.

paho leaves Nagle's algorithm on. Then a second small message written before the first is
acknowledged (the central publishes a window's display, panel and vote states one after
the other; a gateway sends a burst of events) waits for that ACK, which the peer delays by
up to 40 ms on Linux: measured on loopback, a key's answer came 45 ms after the key at
p50 with Nagle, against a few ms without. MQTT frames its own messages, so nothing is gained
by coalescing them. The broker's side is mosquitto's `set_tcp_nodelay true`.
"""

import socket


def no_delay(client):
    """Set TCP_NODELAY on `client`'s socket each time it connects (paho's on_socket_open);
    returns `client`."""

    def on_socket_open(client, userdata, sock):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):  # not a TCP socket (a websocket wrapper...)
            pass

    client.on_socket_open = on_socket_open
    return client
