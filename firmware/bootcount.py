# The boot counter: how many times this device has started, kept in a small file.
#
# Its low 8 bits are the `boot` byte of every event, so the master can tell a reboot's
# fresh seq 1 from a retransmission of an old seq 1. The file is written once per start
# (a few bytes: no flash wear worth counting), through a temporary file and a rename so a
# power cut mid-write leaves the old count. If the file cannot be written (read-only or
# full flash) the boot byte is random: better a 1-in-256 chance of reusing a boot byte than
# a certain one.

import json
import os


def next_boot(path):
    """Increment the count in `path`; returns (count, persisted). When it could not be
    persisted, count is a random byte."""
    count = 0
    try:
        with open(path) as f:
            count = int(json.load(f)["boots"])
    except OSError:
        pass  # no file yet: first start
    except (ValueError, KeyError, TypeError):
        count = os.urandom(1)[0]  # unreadable: do not restart from a likely-used value
    count += 1
    tmp = path + ".tmp"
    try:
        with open(tmp, "w") as f:
            f.write(json.dumps({"boots": count}))
        try:
            os.rename(tmp, path)
        except OSError:  # FAT will not rename onto an existing file
            os.remove(path)
            os.rename(tmp, path)
    except OSError:
        return os.urandom(1)[0], False
    return count, True
