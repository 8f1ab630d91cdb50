"""The simulator's live view and report text, from a snapshot and a report as the hall
makes them (no processes: the view is a pure function of them)."""

from hallgate.sim.view import render, report_text
from rich.console import Console

SNAPSHOT = {
    "clock": 1_795_420_800.0 + 3 * 3600 + 15 * 60, "day": "2026-11-23",
    "all": {"issued": 40, "served": 30, "noshow": 2, "wait_avg_s": 300, "wait_p95_s": 1000,
            "over_norm_share": 0.1, "satisfaction": 0.8, "votes": 20, "misuse": 3},
    "now": {"waiting": 8},
    "windows": [
        {"n": 1, "services": ["A"], "display": "A042 > 1", "blink": True, "mode": "called",
         "ticket": "A042", "queue": 5, "wait_s": 1000, "tea": True, "served": 12,
         "likes": 7, "dislikes": 1, "misuse": 2},
        {"n": 2, "services": ["B", "C"], "display": "", "blink": False, "mode": "paused",
         "ticket": "", "queue": 3, "wait_s": 0, "tea": False, "served": 18, "likes": 9,
         "dislikes": 3, "misuse": 1},
    ],
    "gateway_starts": 2, "central_starts": 1, "problems": 0,
}


def text_of(renderable):
    console = Console(record=True, width=120, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_the_live_view_shows_each_window_as_the_firmware_shows_it():
    out = text_of(render(SNAPSHOT))
    assert "2026-11-23 11:15" in out
    row1 = next(line for line in out.splitlines() if "A042 > 1" in line)
    assert "called" in row1 and "16:40 tea" in row1
    row2 = next(line for line in out.splitlines() if "B,C" in line)
    assert "paused" in row2 and " 18 " in row2
    assert "served 30" in out and "satisfaction 80%" in out and "(starts 2)" in out


def test_the_report_text_names_the_figures_and_every_problem():
    report = {
        "day": "2026-11-23", "finished": False, "real_s": 61.0, "sim_hours": 10.2,
        "options": {"speed": 600.0}, "plan": {"visitors": 40},
        "calls": 41, "calls_shown": 41, "vote_presses": 25, "gateway_starts": 1,
        "central_starts": 1, "broker": {"url": "mqtt://127.0.0.1:1883", "protocol": "5"},
        "problems": ["window 3: call not answered within 45 s"],
        "central": {"all": {"issued": 40, "served": 37, "noshow": 3, "votes": 20, "likes": 16,
                            "dislikes": 4, "satisfaction": 0.8, "misuse": 5},
                    "by_window": {"1": {"served": 20, "noshow": 1, "satisfaction": 0.75}}},
    }
    out = report_text(report)
    assert "NOT FINISHED" in out and "served 37, no-show 3" in out
    assert "satisfaction 80%" in out and "window  1: served  20" in out
    assert "problem: window 3: call not answered within 45 s" in out
