"""The service catalogue: codes past A-Z, groups, prefixes shared by services, ticket
numbers that fit the call panel's 4 digits and the bus's 8 bytes, and the config's errors."""

import importlib
import re
import string
import sys
from pathlib import Path

import pytest
from hallgate.central.config import ConfigError, load_config_dict
from hallgate.central.queue import Queue, QueueConfig, QueueError
from hallgate.central.queueconfig import SEVEN_SEGMENT_LETTERS, digit_positions

ROOT = Path(__file__).resolve().parents[1]


def queue(services, windows=None, **extra):
    windows = windows or [{"n": 12, "services": list(services)}]
    return Queue(QueueConfig.from_dict({"services": services, "windows": windows,
                                        "tz": "UTC", **extra}))


def test_two_hundred_services_with_codes_beyond_a_to_z():
    letters = SEVEN_SEGMENT_LETTERS
    services = {f"{letters[i // 11]}{i % 11 if i % 11 < 10 else ''}":
                {"name": f"Service {i}", "group": f"G{i // 40}", "expected_s": 300 + i}
                for i in range(len(letters) * 11)}
    q = queue(services, [{"n": 1, "services": list(services)}])
    assert len(q.config.services) == 209
    t = q.issue("T9", now=0.0)
    assert t.number == "T9.01" and digit_positions(t.number) == 4
    assert q.config.service("T9").group == "G4" and q.config.service("T9").expected_s == 474
    assert q.issue("T", now=0.0).number == "T001"


def test_numbers_per_prefix_shared_by_a_group_of_services():
    q = queue({"P": {"name": "Passports"},
               "P1": {"name": "Passport abroad", "prefix": "P"},
               "RU": {"name": "Registry"}})
    numbers = [q.issue(s, now=0.0).number for s in ("P", "P1", "P", "RU")]
    assert numbers == ["P001", "P002", "P003", "RU01"]
    assert q.config.service("RU").digits == 2


def test_what_the_displays_show_for_long_numbers():
    q = queue({"P1": "Passport abroad", "A": "Passports"},
              [{"n": 5, "services": ["P1"]}, {"n": 12, "services": ["A", "P1"]}])
    q.issue("P1", now=0.0)
    q.issue("P1", now=1.0)
    q.issue("A", now=2.0)
    shown = {}
    for n in (5, 12):
        assert q.handle_event({"id": f"call-{n}", "window": n, "type": "key",
                               "key": "call"}, now=60.0).ok
        for d in q.take_desired():
            if d.kind == "display" and d.payload["text"]:
                shown[d.window] = d.payload["text"]
            if d.kind == "panel" and d.payload["text"]:
                assert digit_positions(d.payload["text"]) <= 4  # the panel's 4 digits
    # "P1.01 > 5" is 9 bytes: the short form; every text within the bus's 8 bytes.
    assert shown[5] == "P1.01>5"
    assert shown[12] == "P1.02>12"
    assert all(len(text) <= 8 for text in shown.values())


@pytest.mark.parametrize("services, message", [
    ({"a": "x"}, "service 'a': a capital letter and up to 3 more"),
    ({"ABCDE": "x"}, "service 'ABCDE'"),
    ({"A12": "x"}, "leaves 1 digit(s) of the call panel's 4"),
    ({"A": {"name": "x", "digits": 4}}, "numbers like A0001 take 5 digits"),
    ({"A": {"name": "x", "prefix": "b"}}, "prefix 'b'"),
    ({"M": "x"}, "prefix 'M': the 7-segment panels and displays cannot show M"),
    ({"S1": "x"}, "cannot show S (blank, or read as a digit)"),
    ({"A": {"name": "x", "colour": "red"}}, "services.A: unknown key 'colour'"),
    ({"A": {"group": "x"}}, "services.A.name: missing"),
    ({"A": {"name": "x", "expected_s": 0}}, "expected_s 0"),
    ({"A": {"name": "x", "expected_s": "10 min"}}, "services.A.expected_s: '10 min'"),
])
def test_catalogue_errors_name_the_service(services, message):
    with pytest.raises(QueueError, match=re.escape(message)):
        QueueConfig.from_dict({"services": services, "windows": [
            {"n": 1, "services": list(services)}]})


def test_bigger_panels_take_longer_prefixes():
    q = queue({"A12": "x"}, panel_digits=6)
    assert q.issue("A12", now=0.0).number == "A12.001"


@pytest.mark.parametrize("window, message", [
    ({"n": 1, "services": {"A": 0}}, "weight of A 0: 1-9"),
    ({"n": 1, "services": {"A": 10}}, "weight of A 10: 1-9"),
    ({"n": 1, "services": {"Z": 1}}, "unknown service 'Z'"),
])
def test_window_weights_are_checked(window, message):
    with pytest.raises(QueueError, match=message):
        QueueConfig.from_dict({"services": {"A": "x"}, "windows": [window]})


def test_the_central_config_file_takes_the_catalogue_and_names_the_key(tmp_path):
    base = {"site": "s", "broker": "mqtt://h", "database": "c.db",
            "services": {"A": {"name": "Passports", "group": "Documents"}, "P1": "Abroad"},
            "windows": [{"n": 1, "services": {"A": 3, "P1": 1}}],
            "operators": {"ivanova": {"name": "Ivanova A.", "pin": "1357"}},
            "grace_s": 120, "late": "refuse", "skill_credit_s": 200}
    cfg = load_config_dict(base, tmp_path).queue
    assert cfg.windows[0].weight("A") == 3 and cfg.windows[0].weight("P1") == 1
    assert (cfg.grace_s, cfg.late, cfg.skill_credit_s) == (120, "refuse", 200)
    assert cfg.operators["ivanova"].pin == "1357"
    for change, message in [
        ({"windows": [{"n": 1, "services": {"A": True}}]}, "windows[0].services"),
        ({"services": {"A": 7}}, "services.A: 7 is not a name or a table"),
        ({"late": "ignore"}, "late 'ignore'"),
        ({"operators": {"ivanova": {"pin": "1290"}}}, "operator ivanova: pin"),
        ({"operators": {"a": {"pin": "1111"}, "b": {"pin": "1111"}}}, "same as a's"),
        ({"operators": {"ivanova": "I"}, "windows": [{"n": 1, "services": ["A"],
                                                      "operator": "petrov"}]},
         "operator 'petrov' is not in operators"),
        ({"grace_s": -1}, "grace_s: -1 must be >= 0"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config_dict({**base, **change}, tmp_path)


def test_the_prefix_letters_are_those_the_firmware_font_shows_unlike_a_digit():
    sys.path.insert(0, str(ROOT / "firmware"))
    try:
        max7219 = importlib.import_module("max7219")
    finally:
        sys.path.remove(str(ROOT / "firmware"))
    digits = {max7219.glyph(d) for d in "0123456789"}
    readable = {c for c in string.ascii_uppercase
                if max7219.glyph(c) and max7219.glyph(c) not in digits}
    assert readable == set(SEVEN_SEGMENT_LETTERS)
    q = queue({"M": {"name": "Migration", "prefix": "N"}})
    assert q.issue("M", now=0.0).number == "N001"
