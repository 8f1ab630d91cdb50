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

import gc
import json
import sys

from micropython import const

_TRIAL_RESET_MS = const(90000)


class Boot:
    def __init__(self, root, state):
        self.root = root  # folder of config.json and boot.json ("" on a board)
        self.state = state  # boot.json
        self.slot = None  # the slot running now
        self.trial = False  # running a slot that has not confirmed itself yet
        self.timer = None  # rp2: resets a trial that neither confirms nor falls back

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
        sys.path.insert(0, path)
        loaded = set(sys.modules)
        try:
            import devmain

            again = devmain.main(boot)  # True: reboot (a new image is staged)
        except BaseException as e:  # SystemExit too: a config the new image refuses
            if not boot.trial or isinstance(e, KeyboardInterrupt):
                raise
            sys.print_exception(e, sys.stderr)  # pyright: ignore[reportArgumentType]
            boot.fall_back("start-up failed: " + repr(e))
            again = True
        if not again:
            return
        if sys.platform == "rp2":
            import machine

            machine.reset()
        # The unix port cannot reset: forget the slot's modules and start again.
        devmain = None
        for name in set(sys.modules) - loaded:
            del sys.modules[name]
        sys.path.remove(path)
        gc.collect()

