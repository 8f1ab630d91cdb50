"""What a simulated site is made of: which windows serve what, the central's queue config,
and its gateways (which windows each serves, its bus addresses and GPIO pins, its config).

Design note
-----------
A site's windows are numbered 1..N and shared out to its gateways in contiguous ranges, as
an installer would wire a hall part by part. On each gateway the i-th window it serves has
its call panel at bus address i, its window display at 100 + i and, past the Pi's
`GPIO_PAIRS` like / dislike pairs, its feedback pad at 200 + i: so one gateway holds at most
`MAX_GATEWAY_WINDOWS` windows (addresses 1-247, protocols/BUS.md), and with one gateway
the addresses are the window numbers, as in the example configs. Nothing here does I/O but
`gateway_config`, which writes a file.
"""

from __future__ import annotations

import dataclasses

__all__ = ["GPIO_PAIRS", "MAX_GATEWAY_WINDOWS", "GatewayPlan", "button_pins", "gateway_config",
           "gateway_plans", "queue_config", "redirect_of", "skills"]

DISPLAY_BASE = 100  # the display of a gateway's i-th window is at bus address 100 + i
PAD_BASE = 200  # its feedback pad (votes over the bus) at 200 + i
GPIO_PAIRS = 12  # the Pi header's 26 GPIOs hold 12 like / dislike pairs
MAX_GATEWAY_WINDOWS = 47  # 200 + 47 = 247, the last bus address
OPENING_HOUR = 8  # the day starts at 08:00 in the central's zone (UTC)
MAIN_WEIGHT = 3  # a window's main service (central.selection: 600 s head start there)


def button_pins(i):
    """(like, dislike) BCM pins of a gateway's i-th window: BCM 2 and 3 for the first, 4 and
    5 for the second, up to 24 and 25 for the twelfth."""
    return 2 * i, 2 * i + 1


@dataclasses.dataclass(frozen=True)
class GatewayPlan:
    """One gateway of a site: its id and the windows it serves, in order (the i-th at
    `local(n)` = i)."""

    id: str
    windows: tuple[int, ...]

    def local(self, window):
        return self.windows.index(window) + 1

    def on_gpio(self, window):
        """True where the window's vote buttons are on the Pi's GPIO, False on a pad."""
        return self.local(window) <= GPIO_PAIRS

    def devices(self):
        """(name, bus address, role, window) of every device on this gateway's line.

        >>> [d[:2] for d in GatewayPlan("gw", tuple(range(1, 14))).devices()][-3:]
        [('panel-13', 13), ('display-13', 113), ('pad-13', 213)]
        """
        out = []
        for n in self.windows:
            i = self.local(n)
            out += [(f"panel-{n}", i, "call-panel", n),
                    (f"display-{n}", DISPLAY_BASE + i, "window-display", n)]
            if not self.on_gpio(n):
                out.append((f"pad-{n}", PAD_BASE + i, "feedback-pad", n))
        return out


def gateway_plans(windows, gateways):
    """The site's windows 1..`windows` split into `gateways` contiguous ranges (the first
    ranges one longer where it does not divide).

    >>> [g.windows for g in gateway_plans(5, 2)]
    [(1, 2, 3), (4, 5)]
    >>> [g.id for g in gateway_plans(2, 1)], [g.id for g in gateway_plans(2, 2)]
    (['gw-sim'], ['gw-1', 'gw-2'])
    """
    if not 1 <= gateways <= windows:
        raise ValueError(f"gateways: 1 to the number of windows ({windows}), got {gateways}")
    size, extra = divmod(windows, gateways)
    if size + (extra > 0) > MAX_GATEWAY_WINDOWS:
        raise ValueError(f"{windows} windows over {gateways} gateway(s): at most "
                         f"{MAX_GATEWAY_WINDOWS} windows per gateway (the bus addresses of "
                         "a panel, a display and a feedback pad each end at 247)")
    out, n = [], 1
    for k in range(gateways):
        count = size + (k < extra)
        out.append(GatewayPlan("gw-sim" if gateways == 1 else f"gw-{k + 1}",
                               tuple(range(n, n + count))))
        n += count
    return out


def skills(windows, services):
    """Each window's services and weights: main services shared out in proportion to each
    service's load (share x mean service time, largest remainder, every service at least
    one main window when there are enough windows), and every window also serves, at weight
    1, the other service with the most load per window serving it, so queues are pooled
    where the load is.

    >>> from hallgate.sim.dayplan import DEFAULT_SERVICES
    >>> [sorted(s.items()) for s in skills(4, DEFAULT_SERVICES).values()]
    [[('A', 3), ('B', 1)], [('A', 1), ('B', 3)], [('B', 1), ('C', 3)], [('C', 1), ('D', 3)]]
    """
    load = {s.letter: s.share * s.mean_s for s in services}
    total = sum(load.values())
    mains = {c: 0 for c in load}
    if windows >= len(load):
        mains = {c: 1 for c in load}
        quota = {c: windows * load[c] / total - 1 for c in load}
    else:
        quota = {c: windows * load[c] / total for c in load}
    for c in load:
        mains[c] += max(0, int(quota[c]))
    by_remainder = sorted(load, key=lambda c: quota[c] - int(quota[c]), reverse=True)
    i = 0
    while sum(mains.values()) < windows:
        mains[by_remainder[i % len(by_remainder)]] += 1
        i += 1
    while sum(mains.values()) > windows:  # fewer windows than services
        mains[min((c for c in mains if mains[c]), key=lambda c: load[c])] -= 1
    order = [c for c in load for _ in range(mains[c])]
    out = {}
    seconds = {c: 0 for c in load}  # windows serving it second
    for n, main in enumerate(order, 1):
        # The other service with the most load per window serving it (a second window
        # counted half): the next window's help goes where it is needed most.
        need = {c: load[c] / (mains[c] + 0.5 * seconds[c] or 0.5) for c in load if c != main}
        if not need:  # a single service
            out[n] = {main: MAIN_WEIGHT}
            continue
        second = max(need, key=need.get)
        seconds[second] += 1
        out[n] = {main: MAIN_WEIGHT, second: 1}
    unserved = [c for c in load if not any(c in s for s in out.values())]
    for k, c in enumerate(unserved):  # fewer windows than services: share the rest out
        out[k % windows + 1][c] = 1
    return out


def redirect_of(skill):
    """Where a window redirects to: its other service (the plan's redirects go elsewhere)."""
    others = [c for c, w in skill.items() if w < MAIN_WEIGHT]
    return others[0] if others else None


def queue_config(options, services, by_window=None):
    """The central's queue config (a dict for `QueueConfig.from_dict`) of a simulated site:
    `by_window` (window -> {service: weight}) or, by default, `skills()`."""
    by_window = by_window or skills(options.windows, services)
    return {
        "services": {s.letter: s.name for s in services},
        "windows": [{"n": n, "services": skill, "redirect_to": redirect_of(skill),
                     "operator": f"operator-{n}"} for n, skill in sorted(by_window.items())],
        "tz": "UTC",
        # The day as planned: the report flags a last visit past closing (the overrun).
        "closes": closing(options.hours),
        # Hall time: the visitor votes while the operator waits (hall time stands still
        # meanwhile); the next call closes voting sooner.
        "vote_timeout_s": 120,
        "blink_s": 3,  # real seconds on the firmware: long enough to see
    }


def closing(hours):
    """The local closing time ("HH:MM") of a day of `hours` opening at OPENING_HOUR.

    >>> closing(10), closing(8.5), closing(16)
    ('18:00', '16:30', '23:59')
    """
    end = min(OPENING_HOUR * 60 + round(hours * 60), 24 * 60 - 1)
    return f"{end // 60:02d}:{end % 60:02d}"


def gateway_config(path, site, plan, *, broker_url, protocol, bus_path, baud, outbox,
                   public_key=None, subscribe="windows"):
    """Write the hall config of gateway `plan` of `site` to `path`: its bus with a panel
    and a display per window (and a feedback pad past the GPIO pairs), its windows' like /
    dislike pins on the GPIO; `broker_url`: a URL, or a list of them (a cluster's nodes, in
    failover order); `public_key`: updates over the bus signed with its pair; `subscribe`:
    its [mqtt] subscribe (the central's desired shape)."""
    urls = ", ".join(f'"{u}"' for u in ([broker_url] if isinstance(broker_url, str)
                                         else broker_url))
    devices = [f'\n  [[buses.devices]]\n  address = {a}\n  role = "{role}"\n  window = {n}\n'
               for _, a, role, n in plan.devices()]
    windows = []
    for n in plan.windows:
        if plan.on_gpio(n):
            like, dislike = button_pins(plan.local(n))
            windows.append(f"\n[[windows]]\nnumber = {n}\nlike_pin = {like}\n"
                           f"dislike_pin = {dislike}\n")
        else:  # its buttons are on the pad
            windows.append(f"\n[[windows]]\nnumber = {n}\n")
    firmware = f'\n[firmware]\npublic_key = "{public_key}"\n' if public_key else ""
    path.write_text(f"""# written by hallgate sim
[gateway]
site = "{site}"
id = "{plan.id}"

[mqtt]
urls = [{urls}]
protocol = "{protocol}"
subscribe = "{subscribe}"

[outbox]
path = "{outbox}"
{firmware}
[timings]
poll_timeout_ms = 200

[[buses]]
name = "hall"
port = "{bus_path}"
baud = {baud}
{"".join(devices)}{"".join(windows)}""")
    return path
