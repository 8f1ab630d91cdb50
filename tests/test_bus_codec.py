"""The bus codec on CPython: vectors, CRC, resynchronisation, and property tests."""

import json
import os
import subprocess
import sys

import pytest
from conftest import PROTOCOLS, ROOT
from hallgate.protocols import bus
from hypothesis import given, settings
from hypothesis import strategies as st

VECTORS = PROTOCOLS / "bus_vectors.json"
CHECKER = ROOT / "tests" / "mp" / "check_vectors.py"


def decode_all(data, chunk=None):
    """Feeds data in chunks, then tells the decoder the line went quiet, as the I/O does."""
    d = bus.Decoder()
    frames = []
    step = chunk or max(len(data), 1)
    for i in range(0, len(data), step):
        d.feed(data[i : i + step])
        while (f := d.maybe_extract_frame()) is not None:
            frames.append(f)
    while (f := d.maybe_extract_frame(line_idle=True)) is not None:
        frames.append(f)
    return frames, d


def test_crc_is_modbus_crc16():
    # The Modbus RTU read of one holding register at address 1: 01 03 00 00 00 01 84 0A.
    assert bus.crc16(bytes.fromhex("010300000001")) == 0x0A84


def test_vectors_hold_on_cpython():
    env = dict(os.environ, PYTHONPATH=str(PROTOCOLS))
    out = subprocess.run(
        [sys.executable, str(CHECKER), str(VECTORS)], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["ok", str(len(json.loads(VECTORS.read_text())["vectors"]))]


@pytest.mark.micropython
def test_vectors_hold_on_micropython(micropython):
    # A roomy heap: this checks bytes, not memory (the firmware's heap is tested with it).
    out = micropython(CHECKER, VECTORS, path=(PROTOCOLS,), heapsize="512k")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.split() == ["ok", str(len(json.loads(VECTORS.read_text())["vectors"]))]


def test_every_message_type_has_a_vector():
    types = {v["frame"]["type"] for v in json.loads(VECTORS.read_text())["vectors"]}
    assert types == set(bus.TYPE_NAMES)


def test_idle_exchange_is_leaner_than_modbus_read():
    # Modbus RTU "read one register": 8-byte request + 7-byte reply = 15 bytes.
    poll, status = bus.encode_poll(5), bus.encode_status(5, 1234)
    assert len(poll) + len(status) == 14 <= 15
    assert len(bus.encode_poll(5, (1, 2))) + len(status) <= 17


def test_resync_after_garbage_and_split_reads():
    frames = [bus.encode_poll(3), bus.encode_status(3, 7), bus.encode_get_info(200)]
    noise = b"\xa5\xa5\x00\xff\xa5\x03\x01\x05garbage"
    data = noise + frames[0] + noise + frames[1] + b"\xa5" + frames[2]
    for chunk in (1, 2, 3, 7, None):
        got, _ = decode_all(data, chunk)
        assert [f.to_bytes() for f in got] == frames


def test_frame_hidden_in_a_bad_frame_is_found():
    # A truncated frame whose LEN swallows the next real one: the CRC fails, and the hunt
    # restarts one byte later, so the real frame is still found.
    real = bus.encode_status(9, 1)
    data = bytes((bus.SYNC, 9, bus.STATUS, 10)) + real + b"\x00" * 10
    got, d = decode_all(data)
    assert got == [bus.Frame(9, bus.STATUS, b"\x01\x00")]
    assert d.crc_errors == 1


def test_a_cut_frame_waits_for_bytes_until_the_line_goes_quiet():
    # Garbage whose LEN reaches past the real frame: without the quiet line the decoder
    # must wait (more bytes could complete it); once the line is quiet it looks past it.
    real = bus.encode_status(9, 1)
    d = bus.Decoder()
    d.feed(bytes((bus.SYNC, 0, 0, 20)) + real)
    assert d.maybe_extract_frame() is None
    assert d.maybe_extract_frame(line_idle=True) == bus.Frame(9, bus.STATUS, b"\x01\x00")
    assert d.pending() == 0


def test_encode_rejects_out_of_range():
    with pytest.raises(ValueError, match="address 248"):
        bus.encode(248, bus.POLL)
    with pytest.raises(ValueError, match="payload of 129 bytes"):
        bus.encode(1, bus.POLL, bytes(129))
    with pytest.raises(ValueError, match="longer than 8"):
        bus.encode_set(1, 1, bus.DisplayState("A042A042X"))
    with pytest.raises(ValueError, match="printable ASCII"):
        bus.encode_set(1, 1, bus.DisplayState("A\n42"))
    with pytest.raises(ValueError, match="brightness 16"):
        bus.encode_set(1, 1, bus.DisplayState("A042", brightness=16))
    with pytest.raises(ValueError, match="version 0"):
        bus.encode_set(1, 0, bus.DisplayState("A042"))


def test_malformed_payloads_name_the_problem():
    with pytest.raises(ValueError, match="POLL payload of 2 bytes"):
        bus.decode_poll(b"\x01\x02")
    with pytest.raises(ValueError, match="unknown role 9"):
        bus.decode_set(b"\x09\x01\x00")
    with pytest.raises(ValueError, match="version 0"):
        bus.decode_set(b"\x02\x00\x00\x00\x08")
    with pytest.raises(ValueError, match="panel mode 7"):
        bus.decode_set(b"\x01\x01\x00\x07\x00\x00\x00\x00\x00")
    with pytest.raises(ValueError, match="EVENT payload of 3 bytes"):
        bus.decode_event(b"\x00\x00\x00")


def test_feedback_pad_role_keys_and_state():
    assert bus.ROLES[bus.ROLE_FEEDBACK_PAD - 1] == "feedback-pad"
    assert [(bus.KEYS + bus.VOTE_KEYS).index(k) + 1 for k in bus.VOTE_KEYS] == [9, 10]
    assert [bus.Event(1, 1, k).key_name for k in (1, 5)] == ["call", "noshow"]
    assert [bus.Event(1, 1, k).key_name for k in (8, 9, 10, 11)] == [
        "redirect", "like", "dislike", "key11"]
    info = bus.Info(bus.ROLE_FEEDBACK_PAD, (0, 1, 0), 41)
    assert info.role_name == "feedback-pad"
    for state in (bus.FeedbackState(), bus.FeedbackState(invite=True),
                  bus.FeedbackState(thank="like", ack_ds=15),
                  bus.FeedbackState(True, "dislike", 255)):
        frame = bus.encode_set(21, 7, state)
        assert len(frame) == 11  # 5 payload bytes, no text
        assert bus.decode_set(frame[bus.HEADER:-2]) == (bus.ROLE_FEEDBACK_PAD, 7, state)
    assert bus.encode_set(21, 7, bus.FeedbackState(thank="like", ack_ds=999))[-3] == 255
    assert bus.FeedbackState() == (False, None, 0) != bus.DisplayState()
    assert repr(bus.DisplayState("A1", 3)) == "DisplayState('A1', 3, 8)"
    assert bus.Event(1, 2, 3) == bus.Event(1, 2, 3) != bus.Event(1, 2, 4)
    assert bus.Info(3, (0, 1, 0), 41) == bus.Info(3, (0, 1, 0), 41) != bus.Info(3, (0, 1, 0), 4)


def test_malformed_feedback_pad_sets_are_refused():
    with pytest.raises(ValueError):
        bus.encode_set(21, 1, bus.FeedbackState(thank="call"))
    for payload, gist in (
        (b"\x03\x01\x00\x01", "pad SET payload of 4 bytes"),
        (b"\x03\x01\x00\x01\x00A", "pad SET payload of 6 bytes"),
        (b"\x03\x01\x00\x06\x0f", "pad flags 6"),  # a thank-you for both keys
        (b"\x03\x01\x00\x08\x00", "pad flags 8"),  # a reserved bit
        (b"\x03\x00\x00\x01\x00", "version 0"),
    ):
        with pytest.raises(ValueError, match=gist):
            bus.decode_set(payload)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600), st.integers(1, 64))
def test_random_bytes_never_crash_and_never_yield_a_bad_frame(data, chunk):
    frames, d = decode_all(data, chunk)
    for f in frames:
        # Every frame returned re-encodes to bytes whose CRC checks: nothing unchecked leaks.
        raw = f.to_bytes()
        assert bus.crc16(raw[1:-2]) == raw[-2] | raw[-1] << 8
        assert f.addr <= bus.MAX_ADDRESS and len(f.payload) <= bus.MAX_PAYLOAD
    assert d.pending() <= len(data)


frames_st = st.builds(
    lambda addr, mtype, payload: bus.encode(addr, mtype, payload),
    st.integers(0, bus.MAX_ADDRESS),
    st.integers(0, 255),
    st.binary(max_size=bus.MAX_PAYLOAD),
)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300), frames_st, st.integers(1, 64))
def test_one_valid_frame_after_any_garbage_is_found(garbage, frame, chunk):
    # The garbage may itself hold a frame-looking prefix whose LEN covers the real frame;
    # the real frame must still come out, last, exactly once.
    frames, _ = decode_all(garbage + frame, chunk)
    assert frames and frames[-1].to_bytes() == frame


# ---- board identity and the device log ----------------------------------------------


def test_info_carries_the_board_and_its_id_and_reads_the_older_19_bytes():
    board_id = bytes.fromhex("e6613852834b2c2f")
    info = bus.Info(2, (0, 1, 0), 7, 86400, 3, 0, 12, 4, 0, board=2, board_id=board_id)
    frame = bus.encode_info(7, info)
    assert len(frame) == 34  # 28 payload bytes
    back = bus.decode_info(frame[bus.HEADER:-2])
    assert back == info and back.board_name == "rp2" and back.board_id == board_id
    d = back.asdict()
    assert d["board"] == "rp2" and d["board_id"] == "e6613852834b2c2f"
    assert list(d) == list(bus.Info.FIELDS)
    # Firmware from before board identity: the first 19 bytes.
    old = bus.decode_info(frame[bus.HEADER:bus.HEADER + 19])
    assert (old.board, old.board_id, old.board_name, old.resets) == (0, None, "unknown", 12)
    assert old.asdict()["board_id"] is None
    assert old == bus.Info(2, (0, 1, 0), 7, 86400, 3, 0, 12, 4, 0)
    # No id: 8 zero bytes on the wire, None again when read.
    plain = bus.Info(1, (0, 1, 0), 3, board=1)
    assert bus.encode_info(3, plain)[-10:-2] == bytes(8)
    assert bus.decode_info(bus.encode_info(3, plain)[bus.HEADER:-2]) == plain
    assert [bus.Info(1, (0, 1, 0), 1, board=n).board_name for n in (0, 1, 2, 7)] == [
        "unknown", "unix", "rp2", "board7"]
    assert info != bus.Info(2, (0, 1, 0), 7, 86400, 3, 0, 12, 4, 0, board=2,
                            board_id=bytes(7) + b"\x01")


def test_info_refuses_a_bad_board_id_and_other_lengths():
    with pytest.raises(ValueError, match="board_id payload of 7 bytes"):
        bus.encode_info(3, bus.Info(1, (0, 1, 0), 3, board=1, board_id=bytes(7)))
    for n in (18, 20, 27, 29):
        with pytest.raises(ValueError, match=f"INFO payload of {n} bytes"):
            bus.decode_info(bytes(n))


def test_log_round_trips_and_a_master_reads_a_long_text_in_pieces():
    assert bus.decode_get_log(bus.encode_get_log(9)[bus.HEADER:-2]) == 0
    assert bus.decode_get_log(bus.encode_get_log(9, 300)[bus.HEADER:-2]) == 300
    kept = b"Traceback (most recent call last):\n" + b"x" * 400 + b"\nValueError: boom\n"

    def device(offset):  # what a device answers (firmware/devlog.py and appcore)
        offset = min(offset, len(kept))
        return bus.encode_log(9, bus.Log(2, 11, len(kept), offset, kept[offset:offset + 120]))

    text, offset, pieces = b"", 0, 0
    while True:
        log = bus.decode_log(device(offset)[bus.HEADER:-2])
        assert (log.reset_cause_name, log.crash_boot, log.total) == ("watchdog", 11, len(kept))
        text += log.text
        offset = log.offset + len(log.text)
        pieces += 1
        if offset >= log.total:
            break
    assert text == kept and pieces == 4
    none = bus.decode_log(bus.encode_log(9, bus.Log(1))[bus.HEADER:-2])
    assert none == bus.Log(1, 0, 0, 0, b"") and none.reset_cause_name == "power-on"
    assert [bus.Log(n).reset_cause_name for n in (0, 3, 9)] == ["unknown", "reboot", "cause9"]
    assert len(bus.encode_log(9, bus.Log(3, 2, 120, 0, b"y" * 120))) == 133  # fits a frame


def test_malformed_logs_name_the_problem():
    with pytest.raises(ValueError, match="GET_LOG payload of 1 bytes"):
        bus.decode_get_log(b"\x01")
    with pytest.raises(ValueError, match="LOG payload of 6 bytes is too short"):
        bus.decode_log(bytes(6))
    with pytest.raises(ValueError, match="LOG text of 121 bytes at 0: over 120"):
        bus.decode_log(b"\x01\x01\x00\xff\x00\x00\x00" + b"z" * 121)
    with pytest.raises(ValueError, match="LOG text of 6 bytes at 5: .* past its total 10"):
        bus.decode_log(b"\x01\x01\x00\x0a\x00\x05\x00" + b"z" * 6)
    with pytest.raises(ValueError):
        bus.encode_log(9, bus.Log(1, 1, 200, 0, b"z" * 121))
    with pytest.raises(ValueError):
        bus.encode_log(9, bus.Log(1, 1, 5, 0, b"z" * 6))
