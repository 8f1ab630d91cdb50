"""Calibrated days (sim/profile.py and sim/profiles/*.toml): the bundled profiles load and
stay below capacity; a bad profile is refused naming the file, the key and what was wrong;
each site's plan is its own."""

import math
import textwrap
from pathlib import Path

import pytest
from hallgate.sim import dayplan, profile
from hallgate.sim.hall import skills
from hallgate.sim.load import load_text, offered_load
from hallgate.sim.profile import (
    PROFILES,
    Profile,
    ProfileError,
    SiteProfile,
    load_profile,
    site_plan,
    site_seed,
)

BUNDLED = Path(profile.__file__).parent / "profiles"
SEEDS = range(1, 21)

GOOD = """\
name = "tiny"
about = "A test hall"
hours = 3

[[services]]
code = "A"
name = "Passports"
share = 3
mean_min = 10
sd_min = 4

[[services]]
code = "B"
name = "Benefits"
share = 1
mean_min = 12
sd_min = 5

[arrivals]
by_hour = [1, 2, 1]

[mix]
no_show = 0.1

[[sites]]
name = "main"
windows = 3
gateways = 1
visitors = 40
[sites.skills]
"1-2" = { A = 3, B = 1 }
"3" = ["B"]

[[sites]]
name = "small"
windows = 2
visitors = 10
"""


def write(tmp_path, text, name="hall.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def windows_of(p, site):
    by_window = site.skills if site.skills is not None else skills(site.windows, p.services)
    return list(by_window.items())


# ---- the bundled profiles -----------------------------------------------------------------


def test_the_bundled_profiles_are_the_files_of_the_folder():
    assert sorted(PROFILES) == sorted(f.stem for f in BUNDLED.glob("*.toml"))
    assert set(PROFILES) == {"syzran", "moscow-centre"}


@pytest.mark.parametrize("name", PROFILES)
def test_every_bundled_profile_loads(name):
    p = load_profile(name)
    assert isinstance(p, Profile) and p.name == name
    assert Path(p.source).name == f"{name}.toml" and Path(p.source).is_file()
    assert p.about.strip() and len(p.about.splitlines()) <= 2
    assert 0.5 <= p.hours <= 16
    assert p.arrivals is not None and len(p.arrivals) == math.ceil(p.hours)
    assert p.windows == sum(s.windows for s in p.sites)
    assert p.visitors == sum(s.visitors for s in p.sites)
    assert all(isinstance(s, SiteProfile) for s in p.sites)
    assert load_profile(p.source) == p  # the same file by its path
    text = Path(p.source).read_text()
    assert all(key in text.split("\n\n")[0] for key in ("[[services]]", "[arrivals]",
                                                        "[mix]", "[[sites]]"))


@pytest.mark.parametrize("name", PROFILES)
def test_every_bundled_site_is_below_capacity_in_every_service_and_hour(name):
    p = load_profile(name)
    for site in p.sites:
        for seed in SEEDS:
            load = offered_load(site_plan(p, site, seed), windows_of(p, site))
            assert load["over"] == [], f"{name}/{site.name} seed {seed}\n" + load_text(load)
            assert load["total_windows"] == site.windows
            assert set(load["windows"]) == {s.letter for s in p.services}


def test_syzran_is_three_sites_of_36_windows_and_600_visitors_a_day():
    p = load_profile("syzran")
    assert [(s.name, s.windows, s.gateways) for s in p.sites] == [
        ("main", 26, 1), ("branch", 8, 1), ("remote", 2, 1)]
    assert p.windows == 36
    assert 550 <= p.visitors <= 650  # 150,000 a year over ~250 working days
    share = {s.letter: s.share / sum(x.share for x in p.services) for s in p.services}
    assert share["A"] == pytest.approx(0.30)  # passports: "about 30 % of all requests"
    assert "Passports" in next(s.name for s in p.services if s.letter == "A")
    assert p.hours == 10
    a = p.arrivals
    assert max(a) in a[1:3] and a[4] < min(a[3], a[5], a[6])  # morning peak, lunch dip
    assert a[-1] < a[1] / 2  # quiet before closing
    for site in p.sites:  # split about by windows
        assert site.visitors / p.visitors == pytest.approx(site.windows / 36, abs=0.05)


def test_a_moscow_centre_is_a_twelve_hour_day_of_420_visitors():
    p = load_profile("moscow-centre")
    assert p.hours == 12 and len(p.arrivals) == 12
    (site,) = p.sites
    assert abs(site.visitors - 40_000 / 96) <= 10
    assert site.gateways in (1, 2) and math.ceil(site.windows / site.gateways) <= 40
    # enough windows for short waits: the busiest hour, on average, well below capacity
    mean_min = sum(s.share * s.mean_s for s in p.services) / sum(s.share for s in p.services)
    mass = [*p.arrivals[:11], p.arrivals[11] / 2]  # tickets stop at 19:30
    peak_erlangs = site.visitors * max(mass) / sum(mass) * mean_min / 3600
    assert peak_erlangs < 0.7 * site.windows


# ---- the file's format --------------------------------------------------------------------


def test_the_example_of_the_docstring_is_a_valid_profile(tmp_path):
    doc = profile.__doc__
    example = doc[doc.index("::\n") + 3:doc.index("With a skills table")]
    p = load_profile(write(tmp_path, textwrap.dedent(example)))
    assert p.name == "example" and p.windows == 9 and p.visitors == 120
    assert p.mix == dayplan.Mix()
    assert p.sites[0].skills[9] == {"A": 1, "D": 1}


def test_a_profile_is_read_as_written(tmp_path):
    path = write(tmp_path, GOOD)
    p = load_profile(path)
    assert p.source == str(path) and load_profile(str(path)) == p
    assert (p.name, p.about, p.hours) == ("tiny", "A test hall", 3.0)
    assert p.services == (dayplan.Service("A", "Passports", 3, 600, 240),
                          dayplan.Service("B", "Benefits", 1, 720, 300))
    assert p.arrivals == (1.0, 2.0, 1.0)
    assert p.mix == dayplan.Mix(no_show=0.1)
    main, small = p.sites
    assert main == SiteProfile("main", 3, 1, 40, {1: {"A": 3, "B": 1}, 2: {"A": 3, "B": 1},
                                                  3: {"B": 1}})
    assert small == SiteProfile("small", 2, 1, 10, None)  # gateways: 1 when left out
    assert (p.windows, p.visitors) == (5, 50)


def test_the_optional_tables_default_to_the_built_in_day(tmp_path):
    text = GOOD.replace("[arrivals]\nby_hour = [1, 2, 1]\n", "").replace(
        "[mix]\nno_show = 0.1\n", "")
    p = load_profile(write(tmp_path, text))
    assert p.arrivals is None and p.mix == dayplan.Mix()
    assert [v.arrive_s for v in site_plan(p, "main", 1)] == [
        v.arrive_s for v in dayplan.plan_visitors(40, 3, seed=site_seed(1, "main"),
                                                  services=p.services)]


def test_a_partial_last_hour_has_its_weight(tmp_path):
    text = GOOD.replace("hours = 3", "hours = 2.5")
    p = load_profile(write(tmp_path, text))
    assert p.hours == 2.5 and p.arrivals == (1.0, 2.0, 1.0)
    bad = GOOD.replace("hours = 3", "hours = 3.5")
    with pytest.raises(ProfileError, match=r"arrivals\.by_hour: expected 4 weights"):
        load_profile(write(tmp_path, bad))
    # 3.5 h: the last ticket at 3 h, so a weight in the last half hour brings nobody
    late = bad.replace("by_hour = [1, 2, 1]", "by_hour = [0, 0, 0, 1]")
    with pytest.raises(ProfileError, match=r"arrivals\.by_hour: expected a weight > 0 in "
                                           r"some hour before the last ticket \(3 h"):
        load_profile(write(tmp_path, late))


def test_the_sites_and_services_are_required(tmp_path):
    no_sites = GOOD[:GOOD.index("[[sites]]")]
    with pytest.raises(ProfileError, match=r": sites: expected one or more \[\[sites\]\] "
                                           r"tables, found nothing \(the key is missing\)"):
        load_profile(write(tmp_path, no_sites))
    empty = no_sites.replace('about = "A test hall"', 'about = "A test hall"\nsites = []')
    with pytest.raises(ProfileError, match=r": sites: expected one or more .* found an array "
                                           r"of 0"):
        load_profile(write(tmp_path, empty))
    with pytest.raises(ProfileError, match=r": sites\[0\]: expected a table, found 1"):
        load_profile(write(tmp_path, empty.replace("sites = []", "sites = [1]")))


# ---- bad profiles -------------------------------------------------------------------------

SITE1 = ' (site "small")'

BAD = [
    # (what, old, new, key path, words of the message)
    ("unknown top key", "hours = 3", "hours = 3\nhourz = 3", "hourz", "unknown key"),
    ("unknown service key", "sd_min = 4", "sd_min = 4\nmean = 5", "services[0].mean",
     "unknown key"),
    ("unknown site key", "visitors = 10", "visitors = 10\nwindws = 2",
     "sites[1].windws" + SITE1, "unknown key"),
    ("unknown mix key", "no_show = 0.1", "noshow = 0.1", "mix.noshow", "unknown key"),
    ("unknown arrivals key", "by_hour", "per_hour", "arrivals.per_hour", "unknown key"),
    ("missing hours", "hours = 3\n", "", "hours", "missing"),
    ("missing windows", "windows = 2\n", "", "sites[1].windows" + SITE1, "missing"),
    ("missing visitors", "visitors = 40\n", "", 'sites[0].visitors (site "main")',
     "missing"),
    ("missing service time", "mean_min = 12\n", "", "services[1].mean_min", "missing"),
    ("wrong type", "windows = 2", 'windows = "2"', "sites[1].windows" + SITE1,
     'found "2" (a string)'),
    ("float windows", "windows = 2", "windows = 2.0", "sites[1].windows" + SITE1,
     "found 2.0 (a number)"),
    ("bool visitors", "visitors = 10", "visitors = true", "sites[1].visitors" + SITE1,
     "found true (a boolean)"),
    ("zero windows", "windows = 2", "windows = 0", "sites[1].windows" + SITE1,
     "expected an integer 1..999, found 0"),
    ("too many windows", "windows = 2", "windows = 1000", "sites[1].windows" + SITE1,
     "1..999"),
    ("gateways over windows", "visitors = 10", "visitors = 10\ngateways = 3",
     "sites[1].gateways" + SITE1, "expected an integer 1..2, found 3"),
    ("zero visitors", "visitors = 10", "visitors = 0", "sites[1].visitors" + SITE1,
     "found 0"),
    ("bad site name", 'name = "small"', 'name = "Small Hall"', "sites[1].name",
     '"Small Hall"'),
    ("repeated site", 'name = "small"', 'name = "main"', "sites[1].name",
     "not used before"),
    ("hours out of range", "hours = 3", "hours = 17", "hours", "0.5 to 16, found 17"),
    ("service letter", 'code = "B"', 'code = "BB"', "services[1].code", "A-Z"),
    ("repeated service", 'code = "B"', 'code = "A"', "services[1].code",
     "not used by another"),
    ("zero share", "share = 1", "share = 0", "services[1].share", "> 0, found 0"),
    ("negative sd", "sd_min = 5", "sd_min = -1", "services[1].sd_min", ">= 0"),
    ("no services", "[[services]]", "[[servicez]]", "servicez", "unknown key"),
    ("short arrivals", "by_hour = [1, 2, 1]", "by_hour = [1, 2]", "arrivals.by_hour",
     "expected 3 weights (one per opening hour of hours = 3), found 2 weights"),
    ("negative arrivals", "by_hour = [1, 2, 1]", "by_hour = [1, -2, 1]",
     "arrivals.by_hour[1]", "a weight >= 0, found -2"),
    ("no arrivals", "by_hour = [1, 2, 1]", "by_hour = [0, 0, 0]",
     "arrivals.by_hour", "a weight > 0 in some hour before the last ticket (2.5 h"),
    ("probability", "no_show = 0.1", "no_show = 1.5", "mix.no_show",
     "a probability from 0 to 1, found 1.5"),
    ("unknown skill service", '"3" = ["B"]', '"3" = ["B", "X"]',
     'sites[0].skills."3".X (site "main")', 'declared in [[services]] (A, B), found "X"'),
    ("skill weight", "A = 3, B = 1", "A = 10, B = 1", 'sites[0].skills."1-2".A (site "main")',
     "expected an integer 1..9, found 10"),
    ("skill past the windows", '"3" = ["B"]', '"3-4" = ["B"]',
     'sites[0].skills."3-4" (site "main")', 'a window 1..3 or a range "a-b"'),
    ("skill key", '"3" = ["B"]', '"three" = ["B"]', 'sites[0].skills."three" (site "main")',
     'a window 1..3 or a range "a-b" of them, found "three"'),
    ("skills overlap", '"3" = ["B"]', '"2-3" = ["B"]', 'sites[0].skills."2-3" (site "main")',
     'found window 2, given in "1-2" too'),
    ("a window without skills", '"3" = ["B"]\n', "", 'sites[0].skills (site "main")',
     "found none for window(s) 3"),
    ("a service nobody serves", '"1-2" = { A = 3, B = 1 }\n"3" = ["B"]',
     '"1-3" = { A = 3 }', 'sites[0].skills (site "main")', "found B served by none"),
    ("empty skill", '"3" = ["B"]', '"3" = []', 'sites[0].skills."3" (site "main")',
     "non-empty list"),
    ("skills not a table", '[sites.skills]\n"1-2" = { A = 3, B = 1 }\n"3" = ["B"]',
     'skills = ["A", "B"]', 'sites[0].skills (site "main")', "found an array of 2"),
]


@pytest.mark.parametrize(("what", "old", "new", "key", "says"), BAD,
                         ids=[b[0] for b in BAD])
def test_a_bad_profile_names_the_file_the_key_and_what_was_wrong(tmp_path, what, old, new,
                                                                  key, says):
    assert old in GOOD, what
    path = write(tmp_path, GOOD.replace(old, new, 1), "bad.toml")
    with pytest.raises(ProfileError) as e:
        load_profile(path)
    message = str(e.value)
    assert message.startswith(f"{path}: {key}: expected "), message
    assert says in message and ", found " in message, message
    assert e.value.source == str(path) and e.value.key == key
    assert isinstance(e.value, ValueError)


def test_toml_syntax_errors_and_missing_files_are_profile_errors(tmp_path):
    path = write(tmp_path, GOOD.replace('name = "tiny"', 'name = tiny'), "syntax.toml")
    with pytest.raises(ProfileError, match=rf"^{path}: expected valid TOML, found a syntax"):
        load_profile(path)
    with pytest.raises(ProfileError, match="moscow-centre, syzran.*found neither"):
        load_profile("syzran-2016")
    with pytest.raises(ProfileError, match="found neither"):
        load_profile(tmp_path / "nowhere.toml")
    (tmp_path / "bin.toml").write_bytes(b"name = \"\xff\"")
    with pytest.raises(ProfileError, match="expected UTF-8"):
        load_profile(tmp_path / "bin.toml")


# ---- the sites' plans ---------------------------------------------------------------------


def test_a_site_plan_is_the_profile_s_day_for_the_site(tmp_path):
    p = load_profile(write(tmp_path, GOOD))
    plan = site_plan(p, p.sites[0], 5)
    assert plan == dayplan.plan_visitors(40, 3, seed=site_seed(5, "main"), services=p.services,
                                         arrivals=(1, 2, 1), mix=dayplan.Mix(no_show=0.1))
    assert site_plan(p, "main", 5) == plan
    assert len(site_plan(p, "small", 5)) == 10
    assert site_plan(p, "main", 5) != site_plan(p, "main", 6)
    with pytest.raises(ValueError, match="no site 'big'"):
        site_plan(p, "big", 5)


def test_the_profile_s_arrivals_and_mix_shape_the_plan(tmp_path):
    text = GOOD.replace("by_hour = [1, 2, 1]", "by_hour = [0, 1, 0]").replace(
        "no_show = 0.1", "no_show = 1.0\nno_vote = 1.0")
    p = load_profile(write(tmp_path, text))
    plan = site_plan(p, "main", 1)
    assert all(3600 <= v.arrive_s < 7200 and not v.shows_up for v in plan)


def test_each_site_has_its_own_seed(tmp_path):
    p = load_profile(write(tmp_path, GOOD))
    seeds = {site_seed(seed, s) for seed in (1, 2) for s in ("main", "small", "other")}
    assert len(seeds) == 6 and all(isinstance(s, int) and s >= 0 for s in seeds)
    assert site_seed(1, "main") == site_seed(1, "main")
    # another site before it, or a site removed: the main site's plan stays the same
    more = GOOD.replace('[[sites]]\nname = "main"',
                        '[[sites]]\nname = "first"\nwindows = 1\nvisitors = 5\n\n'
                        '[[sites]]\nname = "main"')
    fewer = GOOD[:GOOD.index('[[sites]]\nname = "small"')]
    q = load_profile(write(tmp_path, more, "more.toml"))
    r = load_profile(write(tmp_path, fewer, "fewer.toml"))
    assert [s.name for s in q.sites] == ["first", "main", "small"]
    assert [s.name for s in r.sites] == ["main"]
    for seed in (1, 2, 3):
        assert site_plan(q, "main", seed) == site_plan(p, "main", seed) == site_plan(
            r, "main", seed)
        assert site_plan(q, "small", seed) == site_plan(p, "small", seed)
    # two sites alike are not the same day
    twins = load_profile("syzran")
    assert [v.arrive_s for v in site_plan(twins, "main", 1)][:20] != [
        v.arrive_s for v in site_plan(twins, "branch", 1)][:20]


def test_the_seed_of_a_site_is_the_same_on_every_machine():
    # a hash of (seed, name), never Python's salted hash(): pinned
    assert site_seed(1, "main") == int.from_bytes(
        __import__("hashlib").sha256(b"hallgate-site:1:main").digest()[:6], "big")
