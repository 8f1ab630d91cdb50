# Checks protocols/bus_vectors.json against protocols/bus.py. Runs unchanged on CPython
# and on MicroPython (tests/test_bus_vectors.py runs it on both), so the one codec file is
# proven to produce and accept the same bytes on both interpreters.
# Usage: check_vectors.py VECTORS.json ; prints "ok N" or raises.
import json
import sys

import bus
import otawire as ow


def unhex(text):
    return bytes.fromhex(text.replace(" ", ""))


def encode_message(addr, m):
    kind = m["kind"]
    if kind == "poll":
        ack = m["ack"]
        return bus.encode_poll(addr, None if ack is None else (ack[0], ack[1]))
    if kind == "get_info":
        return bus.encode_get_info(addr)
    if kind == "identify":
        return bus.encode_identify(addr, m["seconds"])
    if kind == "status":
        return bus.encode_status(addr, m["version"])
    if kind == "nak":
        return bus.encode_nak(addr, m["type"], m["reason"])
    if kind == "event":
        return bus.encode_event(
            addr,
            bus.Event(m["boot"], m["seq"], m["key"], m["action"], m["age_ds"], m["pending"]),
        )
    if kind == "info":
        board_id = m["board_id"]
        return bus.encode_info(
            addr,
            bus.Info(m["role"], tuple(m["firmware"]), m["window"], m["uptime_s"],
                     m["crc_errors"], m["overflows"], m["resets"], m["version"], m["queued"],
                     board=m["board"], board_id=board_id and unhex(board_id)),
        )
    if kind == "get_log":
        return bus.encode_get_log(addr, m["offset"])
    if kind == "log":
        return bus.encode_log(addr, bus.Log(m["reset_cause"], m["crash_boot"], m["total"],
                                            m["offset"], m["text"].encode()))
    if kind == "set_display":
        return bus.encode_set(
            addr, m["version"], bus.DisplayState(m["text"], m["blink_s"], m["brightness"])
        )
    if kind == "set_panel":
        return bus.encode_set(
            addr,
            m["version"],
            bus.PanelState(m["text"], m["mode"], m["queue"], m["wait_s"], m["tea"], m["beep"]),
        )
    if kind == "set_feedback":
        return bus.encode_set(
            addr, m["version"], bus.FeedbackState(m["invite"], m["thank"], m["ack_ds"])
        )
    if kind == "ota_begin":
        return ow.encode_begin(addr, m["size"], unhex(m["sha256"]))
    if kind == "ota_data":
        return ow.encode_data(addr, m["offset"], unhex(m["data"]))
    if kind == "ota_commit":
        return ow.encode_commit(addr, unhex(m["sha256"]))
    if kind == "ota_query":
        return ow.encode_query(addr)
    if kind == "ota_status":
        return ow.encode_status(
            addr, ow.Status(m["state"], m["have"], tuple(m["firmware"]), m["reason"]))
    raise ValueError("unknown kind " + kind)


def decode_message(frame, m):
    """Decodes the payload and checks every field the vector names."""
    kind = m["kind"]
    p = frame.payload
    if kind == "poll":
        ack = bus.decode_poll(p)
        got = {"ack": None if ack is None else [ack[0], ack[1]]}
    elif kind == "get_info":
        got = {}
    elif kind == "identify":
        got = {"seconds": bus.decode_identify(p)}
    elif kind == "status":
        got = {"version": bus.decode_status(p)}
    elif kind == "nak":
        t, r = bus.decode_nak(p)
        got = {"type": t, "reason": r}
    elif kind == "event":
        e = bus.decode_event(p)
        got = {"boot": e.boot, "seq": e.seq, "key": e.key, "action": e.action,
               "age_ds": e.age_ds, "pending": e.pending}
    elif kind == "info":
        i = bus.decode_info(p)
        got = {}
        for name in bus.Info.FIELDS:
            got[name] = getattr(i, name)
        got["firmware"] = list(i.firmware)
        got["board_id"] = i.board_id and i.board_id.hex()
    elif kind == "get_log":
        got = {"offset": bus.decode_get_log(p)}
    elif kind == "log":
        lg = bus.decode_log(p)
        got = {"reset_cause": lg.reset_cause, "crash_boot": lg.crash_boot, "total": lg.total,
               "offset": lg.offset, "text": lg.text.decode()}
    elif kind in ("set_display", "set_panel"):
        role, version, s = bus.decode_set(p)
        got = {"version": version, "text": s.text}
        if kind == "set_display":
            assert role == bus.ROLE_WINDOW_DISPLAY
            got["blink_s"] = s.blink_s
            got["brightness"] = s.brightness
        else:
            assert role == bus.ROLE_CALL_PANEL
            for name in ("mode", "queue", "wait_s", "tea", "beep"):
                got[name] = getattr(s, name)
    elif kind == "set_feedback":
        role, version, (invite, thank, ack_ds) = bus.decode_set(p)
        assert role == bus.ROLE_FEEDBACK_PAD
        got = {"version": version, "invite": invite, "thank": thank, "ack_ds": ack_ds}
    elif kind == "ota_begin":
        size, digest = ow.decode_begin(p)
        got = {"size": size, "sha256": digest.hex()}
    elif kind == "ota_data":
        offset, data = ow.decode_data(p)
        got = {"offset": offset, "data": bytes(data).hex()}
    elif kind == "ota_commit":
        got = {"sha256": ow.decode_commit(p).hex()}
    elif kind == "ota_query":
        got = {}
    elif kind == "ota_status":
        st = ow.decode_status(p)
        got = {"state": st.state, "have": st.have, "firmware": list(st.firmware),
               "reason": st.reason}
    else:
        raise ValueError("unknown kind " + kind)
    for name in got:
        if got[name] != m[name]:
            raise AssertionError("%s: field %s decoded as %r, vector says %r"
                                 % (kind, name, got[name], m[name]))


def main(path):
    with open(path) as f:
        vectors = json.load(f)["vectors"]
    for v in vectors:
        raw = unhex(v["bytes"])
        fr = v["frame"]
        made = encode_message(fr["addr"], v["message"])
        # encodes_as: a frame of an older layout the decoder still takes (a 19-byte INFO)
        # is written by today's encoder in today's layout.
        want = unhex(v["encodes_as"]) if "encodes_as" in v else raw
        if made != want:
            raise AssertionError(
                "%s: encoded %s, vector says %s" % (v["name"], made.hex(), want.hex())
            )
        if made != raw:
            decode_message(bus.Frame(fr["addr"], fr["type"], made[bus.HEADER:-2]), v["message"])
        # Split the frame byte by byte and put garbage in front: the decoder must still
        # return exactly this frame.
        d = bus.Decoder()
        frames = []
        for b in b"\x00\xa5\xff" + raw:
            d.feed(bytes((b,)))
            f = d.maybe_extract_frame()
            if f is not None:
                frames.append(f)
        if len(frames) != 1:
            raise AssertionError("%s: decoded %d frames" % (v["name"], len(frames)))
        f = frames[0]
        if (f.addr, f.mtype, f.payload) != (fr["addr"], fr["type"], unhex(fr["payload"])):
            raise AssertionError("%s: decoded %r" % (v["name"], f))
        decode_message(f, v["message"])
        # One flipped bit anywhere must be caught.
        for i in range(1, len(raw)):
            bad = bytearray(raw)
            bad[i] ^= 0x10
            d = bus.Decoder()
            d.feed(bytes(bad))
            g = d.maybe_extract_frame()
            if g is not None and g == f:
                raise AssertionError("%s: flipped byte %d went unnoticed" % (v["name"], i))
    print("ok", len(vectors))


main(sys.argv[1])
