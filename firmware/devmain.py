# hallgate device firmware: start-up and the main loop (main.py only calls main()).
#
# Start-up reads the config (config.json on a board's flash, or the path given on the
# unix command line), counts the boot, then builds HAL, role and core. The board is picked
# here and nowhere else: hal_rp2 on an RP2040, hal_unix otherwise.
# Exit codes on unix: 2 = bad config (the message names the field).
#
# Started by the boot loader (main.py) from a slot, main() gets its Boot: a new image on
# trial confirms itself once it has run _CONFIRM_MS and answered _CONFIRM_REQUESTS bus
# requests (it can start, and it can talk), and falls back by itself if that has not
# happened within _TRIAL_MS.
#
# The hardware watchdog (HAL watchdog/feed, config watchdog_ms) is started as soon as the
# HAL exists and fed by every turn of the main loop: a loop stuck, in a C call or anywhere,
# resets the board. A trial on a board always has one (the boot loader starts it; the
# longest, when the config says 0): a new image that hangs is reset, and the boot loader
# then falls back. The unix port's (an emulation, hal_unix.py) runs when configured.
# Faults the loop survives, and a start-up that raises (slots.py), are kept in the device
# log (devlog.py).

import gc
import sys
import time

from compat import const, ticks_diff

_CONFIRM_MS = const(2000)
_CONFIRM_REQUESTS = const(3)
_TRIAL_MS = const(60000)
_WATCHDOG_MAX_MS = const(8388)  # the RP2040's longest
_KEEP_FAULTS = const(3)  # faults per boot offered to the device log (flash writes)


def start(path, boot=None):
    """Build the device from its config; returns (core, hal). Raises ValueError (a
    devconfig.ConfigError, mostly) naming the field when the config is bad."""
    cfg, count, persisted = _read_config(path)
    files = cfg["files"]
    if boot:  # for the boot loader: a start-up that raises is kept too, a restart marked
        boot.files, boot.count = files, count
    if sys.platform == "rp2":
        import hal_rp2 as board
    else:
        import hal_unix as board
    hal = board.Board(cfg)
    try:
        # (a trial on a board: the boot loader started one, to be fed whatever the config)
        hal.watchdog(cfg["watchdog_ms"] or (_WATCHDOG_MAX_MS if boot and boot.timer else 0))
        if cfg["role"] == "call-panel":
            from role_panel import CallPanel as Role
        elif cfg["role"] == "feedback-pad":
            from role_feedback import FeedbackPad as Role
        else:
            from role_display import WindowDisplay as Role
        from appcore import FIRMWARE, Core

        now = time.ticks_ms()
        role = Role(hal, cfg, now)
        hal.setup_keys(role.KEYS)
        core = Core(hal, cfg, role, count & 0xFF, count, now, boot)
        # Last, so the room devlog takes for a moment is given back in one piece (the
        # heap an update over the bus needs is the free one at its top).
        import devlog

        core.ident = devlog.ident(hal, files)
        del sys.modules["devlog"]
    except BaseException:
        hal.close()  # its UART and watchdog: the unix boot loader starts again in-process
        raise
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
            "slot": boot.slot if boot else None,
            "trial": boot.trial if boot else False,
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


def run(core, hal, boot=None):
    """Serve the bus and sample the keys until the HAL stops (never, on a board) or a
    new image wants a reboot; returns True for a reboot."""
    from keypad import Debouncer

    sample_ms = Debouncer.sample_ms  # the loop's period when idle: the key sampling rate
    buf = bytearray(64)
    view = memoryview(buf)
    faults = 0
    started = time.ticks_ms()
    while hal.running:
        try:
            hal.feed()
            now = time.ticks_ms()
            n = hal.uart_read(buf)
            if n:
                core.feed(view[:n], now)
            if core.reboot:
                return True
            if boot and boot.trial:
                if _trial_over(core, hal, boot, ticks_diff(now, started)):
                    return True
            core.tick(now)
            hal.wait(core, 1 if core.waiting() else sample_ms, now)
        except Exception as e:  # one bad moment must not silence the device for good
            faults += 1
            # (the stubs type the file as a MicroPython stream, which sys.stderr is)
            sys.print_exception(e, sys.stderr)  # pyright: ignore[reportArgumentType]
            hal.emit("fault", {"count": faults, "error": repr(e)})
            if faults <= _KEEP_FAULTS:  # the first few of a boot (flash writes)
                try:
                    import devlog

                    devlog.keep(core.ident[3], core.resets, e)
                except Exception:  # a full flash: the device goes on without its log
                    pass
                sys.modules.pop("devlog", None)
            time.sleep_ms(sample_ms)  # a fault that repeats must not spin the CPU
    return False


def _trial_over(core, hal, boot, up_ms):
    """Confirm a healthy trial; True when it ran out of time (fallen back: reboot)."""
    if up_ms >= _CONFIRM_MS and core.requests >= _CONFIRM_REQUESTS:
        boot.confirm()
        hal.emit("confirmed", boot.slot)
    elif up_ms >= _TRIAL_MS:
        boot.fall_back("not healthy within %d s" % (_TRIAL_MS // 1000))
        return True
    return False


def main(boot=None):
    """Runs the device; returns True when it should reboot (the boot loader does it)."""
    path = sys.argv[1] if len(sys.argv) > 1 else "config.json"
    try:
        core, hal = start(path, boot)
    except ValueError as e:  # a bad config: say which field, and stop
        print("hallgate firmware: %s" % e, file=sys.stderr)
        sys.exit(2)
    try:
        return run(core, hal, boot)
    finally:
        hal.close()  # (the unix HAL's watchdog thread too, whatever ended the loop)

