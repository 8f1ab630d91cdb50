# hal_rp2 on the unix port against tests/mp/fake/machine.py: the order of the RS-485
# direction pin around a reply, active-low keys, the MAX7219 set-up and the panel outputs,
# a feedback pad's key LEDs.
# Prints "hal_rp2: N cases ok".

import machine
from hal_rp2 import Board

LOG = machine.LOG
CFG = {
    "uart_id": 0,
    "baud": 115200,
    "de_pin": 2,
    "spi_id": 0,
    "digits": 4,
    "pins": {"call": 20},
}


def board():
    del LOG[:]
    return Board(CFG)


def case_de_high_only_while_the_reply_is_sent():
    b = board()
    del LOG[:]
    b.uart_write(b"\xa5\x05\x81\x02\x00\x00\x61\xfc")
    assert LOG[0] == ("pin", 2, 1), LOG
    assert LOG[1][0] == "write"
    assert LOG[2] == ("flush",)
    assert LOG[3:-1] == [("txdone", False), ("txdone", False), ("txdone", True)], LOG
    assert LOG[-1] == ("pin", 2, 0), LOG


def case_de_low_from_the_start():
    board()
    assert ("pin", 2, 0) in LOG and ("pin", 2, 1) not in LOG


def case_keys_are_active_low_with_config_pins():
    b = board()
    b.setup_keys(("call", "recall"))
    assert b._keys[0].id == 20 and b._keys[1].id == 7  # config pin, then the default
    assert b.key_level(0, 0) == 0  # pulled up: open
    b._keys[0].level = 0  # contact to ground
    assert b.key_level(0, 0) == 1


def case_max7219_set_up_then_text_and_blanking():
    b = board()
    spi = [e[1:] for e in LOG if e[0] == "spi"]
    assert spi[:4] == [(0x0F, 0), (0x0B, 3), (0x09, 0), (0x0A, 8)], spi
    assert spi[4:8] == [(4, 0), (3, 0), (2, 0), (1, 0)], spi  # blank, leftmost first
    assert spi[8] == (0x0C, 1)  # on
    del LOG[:]
    b.display.show("A0.1")
    assert [e[1:] for e in LOG if e[0] == "spi"] == [(4, 0x77), (3, 0xFE), (2, 0x30), (1, 0)]
    del LOG[:]
    b.display.light(False)
    b.display.intensity(20)
    assert [e[1:] for e in LOG if e[0] == "spi"] == [(0x0C, 0), (0x0A, 15)]


def case_led_and_buzzer_made_on_first_use():
    b = board()
    assert not [e for e in LOG if e[0] == "pwm" or e[:2] == ("pin", 14)]
    b.led(True)
    b.buzzer(True)
    b.buzzer(False)
    assert ("pin", 14, 1) in LOG
    assert [e for e in LOG if e[0] in ("pwm", "duty")] == [
        ("pwm", 15, 2700, 0),
        ("duty", 15, 32768),
        ("duty", 15, 0),
    ], LOG


def case_feedback_pad_key_leds_and_no_display():
    del LOG[:]
    cfg = dict(CFG, digits=0, pins={"like_led": 21})
    b = Board(cfg)
    assert b.display is None and not [e for e in LOG if e[0] == "spi"], LOG
    b.setup_keys(("like", "dislike"))
    assert b._keys[0].id == 6 and b._keys[1].id == 7  # the defaults
    del LOG[:]
    b.led(True, 0)  # the pins are made on first use, dark, then set
    b.led(False, 1)
    assert LOG == [("pin", 21, 0), ("pin", 15, 0), ("pin", 21, 1), ("pin", 15, 0)], LOG


def case_identity_and_a_watchdog_fed_once_started():
    b = board()
    assert b.BOARD == 2 and b.identity == (machine.UNIQUE_ID, 1), b.identity
    machine.CAUSE[0] = machine.WDT_RESET
    try:
        assert board().identity[1] == 2  # watchdog (or machine.reset: devlog's marker)
    finally:
        machine.CAUSE[0] = machine.PWRON_RESET
    del LOG[:]
    b.watchdog(0)
    b.feed()
    assert LOG == [], LOG  # none started: nothing to feed
    b.watchdog(60000)
    b.feed()
    assert LOG == [("wdt", 8388), ("feed",)], LOG  # capped at the RP2040's longest


CASES = [
    case_de_high_only_while_the_reply_is_sent,
    case_de_low_from_the_start,
    case_keys_are_active_low_with_config_pins,
    case_max7219_set_up_then_text_and_blanking,
    case_led_and_buzzer_made_on_first_use,
    case_feedback_pad_key_leds_and_no_display,
    case_identity_and_a_watchdog_fed_once_started,
]

if __name__ == "__main__":
    for case in CASES:
        case()
    print("hal_rp2: %d cases ok" % len(CASES))
