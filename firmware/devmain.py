# hallgate device firmware: start-up and the main loop (main.py only calls main()).
#
# Start-up reads the config (config.json on a board's flash, or the path given on the
# unix command line), counts the boot, then builds HAL, role and core. The board is picked
# here and nowhere else: hal_rp2 on an RP2040, hal_unix otherwise.
# Exit codes on unix: 2 = bad config (the message names the field).

import gc
import sys
import time



def start(path):
    """Build the device from its config; returns (core, hal). Raises ValueError (a
    devconfig.ConfigError, mostly) naming the field when the config is bad."""
    cfg, count, persisted = _read_config(path)
    if sys.platform == "rp2":
        import hal_rp2 as board
    else:
        import hal_unix as board
    hal = board.Board(cfg)
    if cfg["role"] == "call-panel":
        from role_panel import CallPanel as Role
    else:
        from role_display import WindowDisplay as Role
    from appcore import FIRMWARE, Core

    now = time.ticks_ms()
    role = Role(hal, cfg, now)
    hal.setup_keys(role.KEYS)
    core = Core(hal, cfg, role, count & 0xFF, count, now)
    role.tick(now)
    hal.emit(role.KIND, role.shown())
    hal.emit(  # last: whoever waits for it has seen everything start-up says
        "ready",
        {
            "address": cfg["address"],
            "role": cfg["role"],
            "window": cfg["window"],
            "boot": count & 0xFF,
            "resets": count,
            "boot_persisted": persisted,
            "firmware": "%d.%d.%d" % FIRMWARE,
        },
    )
    return core, hal


def _read_config(path):
    """The checked config and the new boot count. Runs first, and its modules are let go
    afterwards: devconfig alone takes ~5 KB of RAM, which the running device needs."""
    import bootcount
    import devconfig

    try:
        cfg = devconfig.load(path)
        count, persisted = bootcount.next_boot(cfg["state_file"])
    finally:
        del sys.modules["devconfig"], sys.modules["bootcount"]
    gc.collect()
    return cfg, count, persisted


def run(core, hal):
    """Serve the bus and sample the keys until the HAL stops (never, on a board)."""
    from keypad import Debouncer

    sample_ms = Debouncer.sample_ms  # the loop's period when idle: the key sampling rate
    buf = bytearray(64)
    view = memoryview(buf)
    faults = 0
    while hal.running:
        try:
            now = time.ticks_ms()
            n = hal.uart_read(buf)
            if n:
                core.feed(view[:n], now)
            core.tick(now)
            hal.wait(core, 1 if core.waiting() else sample_ms, now)
        except Exception as e:  # one bad moment must not silence the device for good
            faults += 1
            # (the stubs type the file as a MicroPython stream, which sys.stderr is)
            sys.print_exception(e, sys.stderr)  # pyright: ignore[reportArgumentType]
            hal.emit("fault", {"count": faults, "error": repr(e)})
            time.sleep_ms(sample_ms)  # a fault that repeats must not spin the CPU


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "config.json"
    try:
        core, hal = start(path)
    except ValueError as e:  # a bad config: say which field, and stop
        print("hallgate firmware: %s" % e, file=sys.stderr)
        sys.exit(2)
    run(core, hal)

