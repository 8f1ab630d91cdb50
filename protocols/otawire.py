# hallgate firmware update over the device bus: the OTA messages (spec: protocols/BUS.md, 10).
#
# Like bus.py, one file with no I/O for both sides: the gateway (CPython) imports it to
# send an image, a device (MicroPython) imports it only when the first OTA request comes,
# so a device that is never updated does not pay its RAM.

import struct

try:
    from hallgate.protocols import bus  # the gateway
except ImportError:
    import bus  # a device: bus.py beside this file

CHUNK = 124  # image bytes per OTA_DATA: offset u32 + 124 = MAX_PAYLOAD
DIGEST = 32  # sha256 of the whole image
REASON_MAX = 64  # bytes of reason text in OTA_STATUS

# A device's update state, in every OTA_STATUS.
IDLE = 0  # nothing staged; no update since this slot was installed
RECEIVING = 1  # taking an image; `have` bytes of it are staged
STAGED = 2  # image checked and unpacked beside the running one; rebooting into it
TRIAL = 3  # running a new image that has not confirmed itself healthy yet
UPDATED = 4  # running a new image that confirmed itself healthy
ROLLED_BACK = 5  # a new image failed; back on the previous one (reason says why)
BAD_IMAGE = 6  # the staged image could not be used (reason says why); it was thrown away
CHECKING = 7  # committed: hashing and unpacking the image (then STAGED, or BAD_IMAGE)
STATES = ("idle", "receiving", "staged", "trial", "updated", "rolled-back", "bad-image",
          "checking")

# Image: MAGIC, version (u8 length + ASCII), then per file: name (u8 length + ASCII),
# size u32, data; a zero name length ends it.
MAGIC = b"HGI1"


class Status:
    FIELDS = ("state", "have", "firmware", "reason")

    def __init__(self, state, have=0, firmware=(0, 0, 0), reason=""):
        self.state = state
        self.have = have
        self.firmware = firmware
        self.reason = reason

    @property
    def state_name(self):
        return STATES[self.state] if self.state < len(STATES) else "state %d" % self.state

    def __eq__(self, other):
        return isinstance(other, Status) and self.__dict__ == other.__dict__

    def __repr__(self):
        return "Status(%s, have=%d, firmware=%d.%d.%d, reason=%r)" % (
            (self.state_name, self.have) + tuple(self.firmware) + (self.reason,))


def _digest(digest):
    if len(digest) != DIGEST:
        raise ValueError("digest of %d bytes, expected %d" % (len(digest), DIGEST))
    return bytes(digest)


def encode_begin(addr, size, digest):
    return bus.encode(addr, bus.OTA_BEGIN, struct.pack("<I", size) + _digest(digest))


def decode_begin(payload):
    """(size, digest) of an OTA_BEGIN."""
    if len(payload) != 4 + DIGEST:
        raise ValueError("OTA_BEGIN payload of %d bytes, expected %d" % (len(payload), 4 + DIGEST))
    return struct.unpack_from("<I", payload, 0)[0], bytes(payload[4:])


def encode_data(addr, offset, data):
    if not 0 < len(data) <= CHUNK:
        raise ValueError("OTA_DATA of %d bytes, expected 1-%d" % (len(data), CHUNK))
    return bus.encode(addr, bus.OTA_DATA, struct.pack("<I", offset) + data)


def decode_data(payload):
    """(offset, data) of an OTA_DATA; data is a memoryview into the payload."""
    if len(payload) < 5:
        raise ValueError("OTA_DATA payload of %d bytes, expected 5-%d" % (len(payload), 4 + CHUNK))
    return struct.unpack_from("<I", payload, 0)[0], memoryview(payload)[4:]


def encode_commit(addr, digest):
    return bus.encode(addr, bus.OTA_COMMIT, _digest(digest))


def decode_commit(payload):
    if len(payload) != DIGEST:
        raise ValueError("OTA_COMMIT payload of %d bytes, expected %d" % (len(payload), DIGEST))
    return bytes(payload)


def encode_query(addr):
    return bus.encode(addr, bus.OTA_QUERY)


def encode_status(addr, status):
    reason = status.reason.encode()[:REASON_MAX]
    fw = status.firmware
    head = struct.pack("<BIBBB", status.state, status.have, fw[0], fw[1], fw[2])
    return bus.encode(addr, bus.OTA_STATUS, head + reason)


def decode_status(payload):
    if not 8 <= len(payload) <= 8 + REASON_MAX:
        raise ValueError("OTA_STATUS payload of %d bytes, expected 8-%d"
                         % (len(payload), 8 + REASON_MAX))
    state, have, a, b, c = struct.unpack_from("<BIBBB", payload, 0)
    return Status(state, have, (a, b, c), bytes(payload[8:]).decode())


def pack_image(version, files):
    """The image of `files` ({name: bytes}, in name order) for firmware `version`."""
    out = [MAGIC, _name(version)]
    for name in sorted(files):
        out.append(_name(name))
        out.append(struct.pack("<I", len(files[name])))
        out.append(files[name])
    out.append(b"\x00")
    return b"".join(out)


def _name(text):
    raw = text.encode()
    if not 0 < len(raw) < 64:
        raise ValueError("image name %r: 1-63 bytes" % (text,))
    return bytes((len(raw),)) + raw
