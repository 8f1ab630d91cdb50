# hallgate device firmware: the boot loader's logic (slots.mpy in the root of the flash).
#
# The firmware lives in two slots beside main.py, a/ and b/; boot.json names the one
# that runs: {"slot": "a"}. An update over the bus (ota.py) unpacks a new image into the
# other slot and adds "trial": that slot gets ONE boot to confirm itself healthy
# (devmain calls Boot.confirm). A trial whose start-up raises, or a start that finds the
# trial already tried and not confirmed (it hung, was reset, lost power), goes back to the
# previous slot by itself. main.py and this file are never changed over the bus: they are
# what keeps every update reversible. Without boot.json (the development image on a PC)
# it runs devmain from the module path.
#
# On a Pico a trial also starts the hardware watchdog before the new image is imported:
# an image stuck in a C call, where no timer callback runs, still resets the board, and
# the next start falls back. Every restart the loader asks for is marked first (devlog.py:
# an RP2040 reports its own machine.reset() as a watchdog reset); the trial timer's reset
# is not, being a watchdog's in all but name. A start-up that raises is kept in the
# device log. When the firmware stops for the REPL (Ctrl-C from the USB console:
# mpremote, `hallgate flash`; or a start-up that raises outside a trial) the watchdog is
# stopped, or the board would reset in the middle of a technician's copy.

import gc
import json
import sys

from micropython import const

_TRIAL_RESET_MS = const(90000)
_WATCHDOG_MS = const(8388)  # a trial's watchdog: the RP2040's longest (devmain re-arms it)


class Boot:
    def __init__(self, root, state):
        self.root = root  # folder of config.json and boot.json ("" on a board)
        self.state = state  # boot.json
        self.slot = None  # the slot running now
        self.trial = False  # running a slot that has not confirmed itself yet
        # rp2: resets a trial that neither confirms nor falls back; set when the loader has
        # also started the watchdog for the trial (devmain then feeds it whatever the config)
        self.timer = None
        self.files = root + "state"  # devlog's files; devmain sets the config's
        self.count = 0  # this boot's count, once devmain has taken it

    def pick(self):
        """The folder of the slot to run now (falling back from a failed trial)."""
        s = self.state
        if s.get("trial"):
            if s.get("tries"):
                self.fall_back("not confirmed before the next start")
            else:
                s["tries"] = 1
                self.save(s)
        s = self.state
        self.trial = bool(s.get("trial"))
        self.slot = s["trial"] if self.trial else s["slot"]
        return self.root + self.slot

    def confirm(self):
        if self.trial:  # 4: otawire.UPDATED, with the version
            self.save({"slot": self.slot, "last": [4, self.state.get("version", "")]})
            self.trial = False
            if self.timer is not None:
                self.timer.deinit()

    def fall_back(self, why):
        # 5: otawire.ROLLED_BACK
        self.save({"slot": self.state["slot"], "last": [5, why[:64]]})

    def save(self, state):
        self.state = state
        path = self.root + "boot.json"
        with open(path + ".tmp", "w") as f:
            f.write(json.dumps(state))
        import os

        try:
            os.rename(path + ".tmp", path)
        except OSError:  # FAT will not rename onto an existing file
            os.remove(path)
            os.rename(path + ".tmp", path)


def _read(root):
    try:
        with open(root + "boot.json") as f:
            return json.load(f)
    except OSError:
        return None  # no slots: a development image
    except ValueError:  # written through a rename, so only a flash fault gets here
        return {"slot": "a", "tries": 0}


def start():
    config = sys.argv[1] if len(sys.argv) > 1 else "config.json"
    root = config[: config.rfind("/") + 1]
    state = _read(root)
    if state is None:
        import devmain

        devmain.main()
        return
    boot = Boot(root, state)
    while True:
        path = boot.pick()
        if boot.trial and sys.platform == "rp2":
            # devmain falls back after 60 s unconfirmed; should the new image hang before
            # it can, this timer (the loader's, not the image's) resets the board, and the
            # next start falls back (a trial gets one start).
            import machine

            boot.timer = machine.Timer(mode=machine.Timer.ONE_SHOT, period=_TRIAL_RESET_MS,
                                       callback=lambda t: machine.reset())
            machine.WDT(timeout=_WATCHDOG_MS)
        sys.path.insert(0, path)
        loaded = set(sys.modules)
        crash = None
        boot.count = 0  # until this start's devmain has taken it
        try:
            import devmain

            again = devmain.main(boot)  # True: reboot (a new image is staged)
        except BaseException as e:  # SystemExit too: a config the new image refuses
            # (KeyboardInterrupt: the USB console takes over; no fall-back, nothing kept)
            crash, again = e, boot.trial and not isinstance(e, KeyboardInterrupt)
            if again:
                sys.print_exception(e, sys.stderr)  # pyright: ignore[reportArgumentType]
                boot.fall_back("start-up failed: " + repr(e))
        # The slot's modules go first: the unix port starts the firmware again in this
        # process, and keeping the crash needs room too.
        devmain = None
        for name in set(sys.modules) - loaded:
            del sys.modules[name]
        gc.collect()
        if crash is not None and boot.count and not isinstance(crash, KeyboardInterrupt):
            try:  # devmain took the count: keep the traceback
                import devlog  # (the image's own, from its slot)

                devlog.keep(boot.files, boot.count, crash)
            except Exception:  # a broken image's devlog must not stop the fall-back
                pass
            sys.modules.pop("devlog", None)
        sys.path.remove(path)
        if not again:
            if crash is not None:
                # Off to the REPL, which feeds no watchdog: stop it, or the board resets
                # under a technician's USB copy (RP2040 WATCHDOG CTRL's ENABLE bit,
                # through its clear alias).
                if "RP2040" in sys.implementation._machine:
                    import machine

                    machine.mem32[0x4005B000] = 0x40000000
                raise crash
            return
        try:  # tell the next start it was a reboot (devlog.reset_cause)
            with open(boot.files + ".rst", "w") as f:
                f.write("3")
        except OSError:
            pass
        if sys.platform == "rp2":
            import machine

            machine.reset()
        gc.collect()  # the unix port cannot reset: it starts the firmware again

