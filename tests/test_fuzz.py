"""Fuzzing with hypothesis: bad input gets a clear error, never a crash or a hang.

- The bus codec (more than tests/test_bus_codec.py has): every typed payload decoder on
  random bytes raises ValueError or returns; typed messages round-trip; a flipped bit in a
  frame is always caught (the frames around it still come out, the damaged one never).
- A running firmware device: random bytes and random frames (every message type, random
  payloads, to its address and to broadcast) written to its pty; after each, once the line
  is quiet, it answers a valid POLL; at the end it is alive, answers GET_INFO and its
  control channel, and has printed no traceback.
- A running daemon: random bytes, random JSON and mutated valid commands on its command
  topics; each bad one is reported on the errors topic (with the topic and the payload's
  size), no good one is; the daemon stays up and applies a good command afterwards.
- `hallgate config check`: random TOML-ish text and mutations of hardware/*.toml: problems
  or a config, never an exception (in-process), exit code 0 or 1 and no traceback (CLI).
  Two inputs that do crash it today are pinned as strict xfails at the end.
"""

import json
import os
import re
import select
import time

import pytest
from conftest import ROOT, wait_for
from hallgate.gateway import commands
from hallgate.gateway.config import ConfigError, Problem, check_config, load_config
from hallgate.protocols import bus
from hallgate.sim.broker import Mosquitto
from harness import Daemon, Witness, hallgate, write_hall_config
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

# ---- the bus codec --------------------------------------------------------------------------

DECODERS = (bus.decode_poll, bus.decode_identify, bus.decode_status, bus.decode_nak,
            bus.decode_event, bus.decode_info, bus.decode_set)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(DECODERS), st.binary(max_size=bus.MAX_PAYLOAD))
def test_payload_decoders_raise_only_value_error(decode, payload):
    try:
        decode(payload)
    except ValueError as e:
        assert str(e)  # a message saying what is wrong


texts = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=bus.TEXT_MAX)
display_states = st.builds(bus.DisplayState, texts, st.integers(0, 255), st.integers(0, 15))
panel_states = st.builds(bus.PanelState, texts, st.integers(0, len(bus.PANEL_MODES) - 1),
                         st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.booleans(),
                         st.booleans())
feedback_states = st.builds(bus.FeedbackState, st.booleans(),
                            st.sampled_from((None, *bus.VOTE_KEYS)), st.integers(0, 255))
u8, u16 = st.integers(0, 0xFF), st.integers(0, 0xFFFF)
events = st.builds(bus.Event, u8, u16, u8, u8, u16, u8)
infos = st.builds(bus.Info, st.integers(1, len(bus.ROLES)), st.tuples(u8, u8, u8), u16,
                  st.integers(0, 0xFFFFFFFF), u16, u16, u16, u16, u8)
addresses = st.integers(0, bus.MAX_ADDRESS)


def only_frame(data):
    d = bus.Decoder()
    d.feed(data)
    frame = d.maybe_extract_frame(line_idle=True)
    assert frame is not None and d.maybe_extract_frame(line_idle=True) is None
    return frame


@settings(max_examples=200, deadline=None)
@given(addresses, st.integers(1, 0xFFFF), st.one_of(display_states, panel_states,
                                                     feedback_states))
def test_set_round_trips(addr, version, state):
    frame = only_frame(bus.encode_set(addr, version, state))
    role = {bus.DisplayState: bus.ROLE_WINDOW_DISPLAY, bus.PanelState: bus.ROLE_CALL_PANEL,
            tuple: bus.ROLE_FEEDBACK_PAD}[type(state)]
    assert (frame.addr, frame.mtype) == (addr, bus.SET)
    assert bus.decode_set(frame.payload) == (role, version, state)


@settings(max_examples=200, deadline=None)
@given(addresses, events, infos, st.one_of(st.none(), st.tuples(u8, u16)))
def test_event_info_poll_round_trip(addr, ev, info, ack):
    assert bus.decode_event(only_frame(bus.encode_event(addr, ev)).payload) == ev
    assert bus.decode_info(only_frame(bus.encode_info(addr, info)).payload) == info
    assert bus.decode_poll(only_frame(bus.encode_poll(addr, ack)).payload) == ack


frames = st.builds(bus.encode, addresses, st.integers(0, 255),
                   st.binary(max_size=bus.MAX_PAYLOAD))


@settings(max_examples=300, deadline=None)
@given(frames, frames, frames, st.data())
def test_a_flipped_bit_is_always_caught(before, damaged, after, data):
    # A SYNC byte inside the damaged frame could start a frame of its own: not this test.
    assume(bus.SYNC not in damaged[1:])
    bit = data.draw(st.integers(0, len(damaged) * 8 - 1))
    flipped = bytearray(damaged)
    flipped[bit // 8] ^= 1 << (bit % 8)
    assume(bus.SYNC not in flipped[1:])
    d = bus.Decoder()
    d.feed(before + bytes(flipped) + after)
    got = []
    while (f := d.maybe_extract_frame(line_idle=True)) is not None:
        got.append(f.to_bytes())
    assert got == [before, after]


# ---- a running firmware device ----------------------------------------------------------------


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    from test_firmware_device import Rig  # the pty + firmware set-up of those tests

    rig = Rig(tmp_path_factory.mktemp("fuzz-device"), "call-panel")
    yield rig
    rig.close()


def drain(fd, quiet=0.1, limit=2.0):
    """Reads what the device sends until the line is quiet for `quiet` s (at most `limit`)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if not select.select([fd], [], [], quiet)[0]:
            return
        os.read(fd, 4096)


fuzz_frames = st.builds(
    bus.encode,
    st.sampled_from([5, 5, 5, bus.BROADCAST]),  # 5: the rig's device
    st.one_of(st.sampled_from(sorted(bus.TYPE_NAMES)), st.integers(0, 255)),
    st.binary(max_size=bus.MAX_PAYLOAD),
)
line_garbage = st.lists(st.one_of(st.binary(min_size=1, max_size=64), fuzz_frames),
                        min_size=1, max_size=6).map(b"".join)


@pytest.mark.micropython
@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(line_garbage)
def test_firmware_survives_random_bytes_and_frames(rig, garbage):
    master = rig.master
    os.write(rig.fd, garbage)
    time.sleep(0.05)  # a quiet line: the device gives up any partial frame
    drain(rig.fd)
    master.decoder = bus.Decoder()
    for _ in range(3):  # a frame the garbage left half-read may eat one poll
        master.send(bus.encode_poll(5))
        frame = master.reply(2.0)
        if frame is not None:
            break
    assert frame is not None, f"no reply to a POLL after {garbage.hex()}"
    assert frame.addr == 5 and frame.mtype in (bus.STATUS, bus.EVENT), frame
    assert rig.dev.running, rig.dev.stderr_text()[-2000:]


@pytest.mark.micropython
def test_firmware_after_the_fuzzing_is_whole(rig):
    drain(rig.fd)
    rig.master.decoder = bus.Decoder()
    info = bus.decode_info(rig.master.request(bus.encode_get_info(5)).payload)
    assert info.role_name == "call-panel"
    assert rig.dev.info()  # the control channel answers too
    assert rig.dev.running
    assert "Traceback" not in rig.dev.stderr_text(), rig.dev.stderr_text()[-3000:]


# ---- MQTT commands into a running daemon ---------------------------------------------------------

SITE, GW, WINDOW = "fuzz-site", "gw-z", 1
ERRORS = f"hall/v1/{SITE}/gw/{GW}/errors"


@pytest.fixture(scope="module")
def daemon_hall(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz-daemon")
    broker = Mosquitto(tmp / "broker").start()
    witness = daemon = None
    try:
        witness = Witness(broker.port, topics=[ERRORS], client_id="fuzz-witness")
        config = write_hall_config(
            tmp, site=SITE, gateway=GW, broker_url=broker.url,
            windows=f"[[windows]]\nnumber = {WINDOW}\nlike_pin = 5\ndislike_pin = 6\n")
        daemon = Daemon(tmp, config, env={"GPIOZERO_PIN_FACTORY": "mock"}).start()
        daemon.wait_status(lambda s: s["broker"]["connected"], "daemon connected", 30)
        yield daemon, witness
    finally:
        if daemon is not None:
            daemon.close()
        if witness is not None:
            witness.close()
        broker.stop()


GOOD = {
    "display": {"version": 3, "text": "A042", "blink_s": 10, "brightness": 8},
    "panel": {"version": 3, "mode": "called", "text": "A042", "queue": 4, "wait_s": 60,
              "tea": False, "beep": True},
    "vote": {"version": 3, "open": True, "ticket": "A042", "timeout_s": 30},
}
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**60, 2**60) | st.floats(allow_nan=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12,
)


@st.composite
def command_payloads(draw, kind):
    how = draw(st.sampled_from(["bytes", "json", "mutate", "mutate", "big"]))
    if how == "bytes":
        return draw(st.binary(max_size=200))
    if how == "json":
        return json.dumps(draw(json_values)).encode()
    if how == "big":
        return b'{"version": 1, "x": "' + b"a" * draw(st.integers(4070, 4200)) + b'"}'
    obj = dict(GOOD[kind])
    for _ in range(draw(st.integers(1, 3))):
        field = draw(st.sampled_from(sorted(obj) + ["extra"]))
        if draw(st.booleans()) and field in obj:
            del obj[field]
        else:
            obj[field] = draw(json_values)
    if obj.get("version") == commands.MAX_VERSION:  # kept for the good command at the end
        obj["version"] -= 1
    return json.dumps(obj).encode()


fuzz_commands = st.sampled_from(commands.KINDS).flatmap(
    lambda kind: st.tuples(st.just(kind), command_payloads(kind)))


def is_bad(kind, payload):
    try:
        commands.parse_command(kind, payload)
    except commands.CommandError:
        return True
    return False


class Sentinels:
    """Puts a numbered bad command after each fuzzed one, so the errors between two
    sentinels' reports are the fuzzed command's."""

    n = 0


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(fuzz_commands)
def test_daemon_reports_each_bad_command_and_stays_up(daemon_hall, command):
    daemon, witness = daemon_hall
    kind, payload = command
    topic = commands.command_topic(SITE, WINDOW, kind)
    Sentinels.n += 1
    sentinel = f"sentinel {Sentinels.n}".encode()
    seen = len(witness.on(ERRORS))
    witness.publish(topic, payload, retain=False)
    witness.publish(topic, sentinel, retain=False)

    def reported():
        return any(isinstance(e, dict) and e.get("payload") == sentinel.decode()
                   for e in witness.on(ERRORS)[seen:])

    wait_for(reported, 15, f"the report of sentinel {Sentinels.n}")
    new = witness.on(ERRORS)[seen:]
    mine = new[: [e.get("payload") for e in new].index(sentinel.decode())]
    assert daemon.running, daemon.log()
    if is_bad(kind, payload):
        assert len(mine) == 1, (payload, mine)
        e = mine[0]
        assert e["kind"] == "bad-command" and e["topic"] == topic and e["reason"], e
        assert e["payload_size"] == len(payload), e
    else:
        assert mine == [], (payload, mine)


def test_daemon_applies_a_good_command_after_the_fuzzing(daemon_hall):
    daemon, witness = daemon_hall
    topic = commands.command_topic(SITE, WINDOW, "vote")
    # The highest version there is: newer than whatever the fuzzing applied (a clear
    # would not do: the feedback panel keeps its ballot's version across a clear)
    good = {"version": commands.MAX_VERSION, "open": True, "ticket": "Z999"}
    witness.publish(topic, good, retain=False)
    daemon.wait_status(
        lambda s: any(f.get("open") and f.get("ticket") == "Z999"
                      for f in s["feedback"].values()),
        "voting open for Z999 at window 1", 20)
    assert daemon.terminate() == 0, daemon.log()


# ---- config files into `hallgate config check` ---------------------------------------------

EXAMPLES = sorted((ROOT / "hardware").glob("*.toml"))
TOML_WORDS = ["[gateway]", "[mqtt]", "[outbox]", "[timings]", "[firmware]", "[[windows]]",
              "[[buses]]", "[[buses.devices]]", "[windows.panel]", "site", "id", "urls",
              "number", "address", "role", "window", "port", "baud", "like_pin", "=", '"',
              "'", "[", "]", "{", "}", ",", ".", "\n", " ", "#", "true", "false", "1", "-3",
              "4.5", "1e400", "nan", "0x1F", '"call-panel"', '"mqtt://127.0.0.1:1883"',
              '"/dev/ttyUSB0"', "1979-05-27", "\\u00e9", "\t", "\r\n", '"""']
toml_ish = st.lists(st.sampled_from(TOML_WORDS) | st.text(max_size=6),
                    max_size=60).map("".join)


@st.composite
def mutated_example(draw):
    lines = draw(st.sampled_from(EXAMPLES)).read_text().splitlines(keepends=True)
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, max(len(lines) - 1, 0)))
        how = draw(st.sampled_from(["delete", "duplicate", "replace", "insert", "truncate",
                                    "value"]))
        if not lines:
            break
        if how == "delete":
            del lines[i]
        elif how == "duplicate":
            lines.insert(i, lines[i])
        elif how == "replace":
            lines[i] = draw(toml_ish) + "\n"
        elif how == "insert":
            lines.insert(i, draw(toml_ish) + "\n")
        elif how == "truncate":
            lines[i] = lines[i][: draw(st.integers(0, len(lines[i])))]
        else:  # a key's value replaced by a random TOML value
            key, eq, _ = lines[i].partition("=")
            if eq:
                lines[i] = f"{key}= {draw(st.sampled_from(TOML_WORDS[18:]))}\n"
    raw = "".join(lines).encode()
    if draw(st.integers(0, 9)) == 0:  # now and then, bytes that are not UTF-8
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + draw(st.binary(min_size=1, max_size=4)) + raw[at:]
    return raw


assert EXAMPLES, "hardware/*.toml: the examples to mutate"
configs = st.one_of(toml_ish.map(str.encode), mutated_example())


def check_in_process(path):
    problems = check_config(path)
    assert isinstance(problems, list)
    for p in problems:
        assert isinstance(p, Problem) and str(p).startswith(str(path)) and p.message, p
    if not problems:
        load_config(path)  # a config with no problem loads
    else:
        with pytest.raises(ConfigError):
            load_config(path)
    return problems


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(configs)
def test_config_check_in_process_never_raises(tmp_path, raw):
    path = tmp_path / "hall.toml"
    path.write_bytes(raw)
    check_in_process(path)


@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(configs)
def test_config_check_cli_exit_0_or_1_without_traceback(tmp_path, raw):
    path = tmp_path / "hall.toml"
    path.write_bytes(raw)
    out = hallgate("config", "check", path, timeout=60)
    assert out.returncode in (0, 1), (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stdout + out.stderr, out.stderr
    problems = check_config(path)
    assert out.returncode == (1 if problems else 0)
    if problems:
        assert out.stdout.strip(), "exit 1 without saying why"


# ---- bugs found -----------------------------------------------------------------------------

CRASHERS = {
    "an integer of 5000 digits": "x = " + "9" * 5000 + "\n",
    "an array nested 1000 deep": "x = " + "[" * 1000 + "]" * 1000 + "\n",
}


@pytest.mark.parametrize("what", sorted(CRASHERS))
def test_config_check_reports_absurd_toml_values(tmp_path, what):
    path = tmp_path / "hall.toml"
    path.write_text(CRASHERS[what])
    out = hallgate("config", "check", path, timeout=60)
    assert "Traceback" not in out.stderr, out.stderr[-600:]
    assert out.returncode == 1 and re.search(r"hall\.toml(:1)?: TOML syntax error: ",
                                             out.stdout), out.stdout



@pytest.mark.micropython
def test_firmware_answers_ota_requests_back_to_back(tmp_path):
    from test_firmware_device import Rig

    rig = Rig(tmp_path, "call-panel")
    try:
        answered = []
        for _ in range(12):
            rig.master.send(bus.encode(5, bus.OTA_QUERY))
            frame = rig.master.reply(2.0)
            answered.append(frame is not None and frame.mtype == bus.OTA_STATUS)
        assert rig.dev.running
        assert all(answered), f"OTA_QUERY answered: {answered}\n{rig.dev.stderr_text()[-800:]}"
    finally:
        rig.close()
