"""The MQTT contract: protocols/MQTT.md's topic table and examples, the JSON Schemas, the
AsyncAPI document and gateway/commands.py all say the same thing. No broker needed. (The
central service's examples, marked `central-example`, are validated by test_central_mqtt.py.)"""

import json
import re
from pathlib import Path
from typing import NamedTuple

import jsonschema
import pytest
from hallgate.gateway import commands
from hallgate.gateway.commands import (
    CommandError,
    DisplayCommand,
    PanelCommand,
    VoteCommand,
    parse_command,
    parse_topic,
    supersedes,
)
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

ROOT = Path(__file__).resolve().parent.parent
PROTOCOLS = ROOT / "protocols"
SCHEMAS = PROTOCOLS / "schemas"
DOC = (PROTOCOLS / "MQTT.md").read_text()
ASYNCAPI = (PROTOCOLS / "asyncapi.yaml").read_text()


class Topic(NamedTuple):
    address: str
    schema: str  # protocols/schemas/{schema}.schema.json
    retained: bool
    action: str  # of the hallgate application at its end (asyncapi.yaml's header)


TOPICS = {  # the contract's topic tree (MQTT.md section 1), per AsyncAPI channel; all QoS 1
    "status": Topic("hall/v1/{site}/gw/{gateway}/status", "status", True, "send"),
    "devices": Topic("hall/v1/{site}/gw/{gateway}/devices", "devices", True, "send"),
    "errors": Topic("hall/v1/{site}/gw/{gateway}/errors", "errors", False, "send"),
    "event": Topic("hall/v1/{site}/window/{n}/event", "event", False, "send"),
    "receipt": Topic("hall/v1/{site}/gw/{gateway}/receipt", "receipt", False, "receive"),
    "display": Topic("hall/v1/{site}/window/{n}/display", "display", True, "receive"),
    "panel": Topic("hall/v1/{site}/window/{n}/panel", "panel", True, "receive"),
    "vote": Topic("hall/v1/{site}/window/{n}/vote", "vote", True, "receive"),
    "desired": Topic("hall/v1/{site}/desired", "desired", True, "receive"),
    "ticket_request": Topic("hall/v1/{site}/ticket/request", "ticket_request", False, "receive"),
    "ticket_issued": Topic("hall/v1/{site}/ticket/issued", "ticket_issued", False, "send"),
    "central_status": Topic("hall/v1/{site}/central/status", "status", True, "send"),
    "central_stats": Topic("hall/v1/{site}/central/stats", "central_stats", True, "send"),
    "central_errors": Topic("hall/v1/{site}/central/errors", "central_errors", False, "send"),
    "central_alerts": Topic("hall/v1/{site}/central/alerts", "central_alerts", False, "send"),
    "ticket_refused": Topic("hall/v1/{site}/ticket/refused", "ticket_refused", False, "send"),
    "session": Topic("hall/v1/{site}/window/{n}/session", "session", True, "send"),
    "staff_session": Topic("hall/v1/{site}/staff/session", "staff_session", False, "receive"),
    "staff_session_result": Topic("hall/v1/{site}/staff/session/result",
                                  "staff_session_result", False, "send"),
}
SCHEMA_NAMES = sorted(p.name.removesuffix(".schema.json") for p in SCHEMAS.glob("*.schema.json"))


def schema(name):
    return json.loads((SCHEMAS / f"{name}.schema.json").read_text())


def validator(name):
    """Its schema, with the sibling schemas it refers to (desired: display, panel, vote)."""
    registry = Registry().with_resources(
        (f"{n}.schema.json", Resource.from_contents(schema(n), default_specification=DRAFT7))
        for n in SCHEMA_NAMES)
    return jsonschema.Draft7Validator(schema(name), registry=registry)


def doc_examples():
    """(schema name, JSON text) for each ```json block in MQTT.md, marked by the comment
    `<!-- example: NAME -->` right before it."""
    return re.findall(r"<!-- example: (\w+) -->\n```json\n(.*?)\n```", DOC, re.S)


def test_every_schema_file_is_a_payload_of_the_contract():
    assert set(SCHEMA_NAMES) == {t.schema for t in TOPICS.values()}


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_schemas_are_valid_draft7_and_name_their_topic(name):
    s = schema(name)
    jsonschema.Draft7Validator.check_schema(s)
    uses = [t for t in TOPICS.values() if t.schema == name]
    topic, rest = s["description"].split(", ", 1)  # "hall/v1/..., QoS 1, not retained..."
    assert topic in {t.address for t in uses}, s["description"]
    assert "QoS 1" in rest and re.search(r"\bretained\b", rest), s["description"]
    assert {("not retained" not in rest)} == {t.retained for t in uses}, s["description"]


def test_every_json_block_in_the_doc_is_a_checked_example():
    blocks = re.findall(r"```json\n", DOC)
    examples = doc_examples()
    assert len(examples) == len(blocks), "a ```json block without <!-- example: NAME -->"
    central = re.findall(r"<!-- central-example: (\w+) -->\n```jsonc\n", DOC)
    assert len(central) == DOC.count("```jsonc\n"), "a ```jsonc block without a mark"
    names = {name for name, _ in examples} | set(central)
    assert names == set(SCHEMA_NAMES), "every payload has an example"


@pytest.mark.parametrize("name,text", doc_examples())
def test_doc_example_validates_against_its_schema(name, text):
    payload = json.loads(text)
    errors = sorted(validator(name).iter_errors(payload), key=str)
    assert not errors, "\n".join(e.message for e in errors)
    if name in commands.KINDS:  # and the gateway accepts it
        assert parse_command(name, text.encode()) is not None


def doc_topic_table():
    """{topic: (QoS, retained, schema)} from the table of MQTT.md section 1."""
    rows = re.findall(r"^\| `(hall/[^`]*)` \|(.*)$", DOC, re.M)
    table = {}
    for topic, rest in rows:
        m = re.fullmatch(r" [^|]+ \| (\d) \| (yes|no) \| \[(\w+)\]\(schemas/\3\.schema\.json\) \|",
                         rest)
        assert m, f"topic table row for {topic} not understood: {rest}"
        assert topic not in table, f"{topic} twice in the topic table"
        table[topic] = (int(m[1]), m[2] == "yes", m[3])
    return table


def test_doc_topic_table_is_the_contract():
    assert doc_topic_table() == {t.address: (1, t.retained, t.schema) for t in TOPICS.values()}


# -- commands: the parser and the schemas agree ---------------------------------------------

GOOD = [
    ("display", {"version": 1, "text": ""}, DisplayCommand(1, "")),
    (
        "display",
        {"version": 4, "text": "A042 > 5", "blink_s": 10, "brightness": 15},
        DisplayCommand(4, "A042 > 5", 10, 15),
    ),
    ("display", {"version": 2, "text": "A1", "brightness": 3.0}, DisplayCommand(2, "A1", 0, 3)),
    ("display", {"version": 2, "text": "A1", "colour": "red"}, DisplayCommand(2, "A1")),
    ("panel", {"version": 1, "mode": "idle"}, PanelCommand(1, "idle")),
    (
        "panel",
        {
            "version": 9,
            "text": "A042",
            "mode": "called",
            "queue": 12,
            "wait_s": 1020,
            "tea": True,
            "beep": True,
        },
        PanelCommand(9, "called", "A042", 12, 1020, True, True),
    ),
    ("vote", {"version": 3, "open": True, "ticket": "A042"}, VoteCommand(3, True, "A042")),
    (
        "vote",
        {"version": 3, "open": True, "ticket": "A042", "timeout_s": 60},
        VoteCommand(3, True, "A042", 60),
    ),
    ("vote", {"version": 4, "open": False}, VoteCommand(4, False)),
    ("vote", {"version": 4, "open": False, "ticket": None}, VoteCommand(4, False)),
]

BAD = [  # kind, payload, what the reason must say
    ("display", {"text": "A042"}, "version: missing"),
    ("display", {"version": 0, "text": "A042"}, "version: 0 is out of range"),
    ("display", {"version": -3, "text": "A042"}, "out of range"),
    ("display", {"version": "4", "text": "A042"}, 'version: "4" is not an integer'),
    ("display", {"version": True, "text": "A042"}, "version: true is not an integer"),
    ("display", {"version": 2.5, "text": "A042"}, "not an integer"),
    ("display", {"version": 2**53, "text": "A042"}, "out of range"),
    ("display", {"version": 2**31, "text": "A042"}, "would make every later one stale"),
    ("panel", {"version": 2**53 - 1, "mode": "idle"}, "out of range 1-2147483647"),
    ("display", {"version": 1}, "text: missing"),
    ("display", {"version": 1, "text": "A042 > 12"}, "is 9 characters, at most 8"),
    ("display", {"version": 1, "text": "Ж"}, "outside printable ASCII"),
    ("display", {"version": 1, "text": "A\n1"}, "outside printable ASCII"),
    ("display", {"version": 1, "text": 42}, "text: 42 is not a string"),
    ("display", {"version": 1, "text": "A", "blink_s": 256}, "blink_s: 256 is out of range"),
    ("display", {"version": 1, "text": "A", "brightness": 16}, "brightness: 16"),
    ("display", {"version": 1, "text": "A", "brightness": None}, "brightness: null"),
    ("panel", {"version": 1}, "mode: missing"),
    ("panel", {"version": 1, "mode": "lunch"}, 'mode: "lunch" is not one of'),
    ("panel", {"version": 1, "mode": ["idle"]}, "is not one of"),
    ("panel", {"version": 1, "mode": "idle", "queue": -1}, "queue: -1 is out of range"),
    ("panel", {"version": 1, "mode": "idle", "wait_s": "5"}, "wait_s"),
    ("panel", {"version": 1, "mode": "idle", "tea": 1}, "tea: 1 is not true or false"),
    ("panel", {"version": 1, "mode": "idle", "text": "TOO LONG!"}, "at most 8"),
    ("vote", {"version": 1}, "open: missing"),
    ("vote", {"version": 1, "open": "yes"}, 'open: "yes" is not true or false'),
    ("vote", {"version": 1, "open": True}, "ticket: missing"),
    ("vote", {"version": 1, "open": True, "ticket": ""}, "ticket: must not be empty"),
    ("vote", {"version": 1, "open": True, "ticket": None}, "ticket: null is not a string"),
    ("vote", {"version": 1, "open": True, "ticket": "A042", "timeout_s": 0}, "timeout_s: 0"),
    ("vote", {"version": 1, "open": True, "ticket": "A042", "timeout_s": 3601}, "timeout_s"),
]


@pytest.mark.parametrize("kind,payload,expected", GOOD)
def test_good_command_parses_and_validates(kind, payload, expected):
    assert parse_command(kind, json.dumps(payload).encode()) == expected
    assert not list(validator(kind).iter_errors(payload))


@pytest.mark.parametrize("kind,payload,reason", BAD)
def test_bad_command_is_rejected_by_parser_and_schema(kind, payload, reason):
    with pytest.raises(CommandError) as e:
        parse_command(kind, json.dumps(payload).encode())
    assert reason in str(e.value)
    assert list(validator(kind).iter_errors(payload)), "the schema must reject it too"


@pytest.mark.parametrize(
    "raw,reason",
    [
        (b"{not json", "payload is not JSON"),
        (b'{"version": NaN, "text": ""}', "payload is not JSON"),
        (b"[1, 2]", "payload is a JSON list, not an object"),
        (b'"text"', "not an object"),
        (b"\xff\xfe{}", "payload is not UTF-8"),
        (b'{"version": 1, "text": "' + b"x" * 5000 + b'"}', "at most 4096 allowed"),
        (b"[" * 2000 + b"]" * 2000, "nests deeper than"),
        (b'{"version": 1, "text": "", "x": ' + b'{"a":' * 600 + b"1" + b"}" * 601,
         "nests deeper than"),
    ],
)
def test_bad_payload_bytes(raw, reason):
    with pytest.raises(CommandError) as e:
        parse_command("display", raw)
    assert reason in str(e.value)


def test_empty_payload_is_no_desired_state():
    for kind in commands.KINDS:
        assert parse_command(kind, b"") is None


def test_parse_topic():
    assert parse_topic("msk-01", "hall/v1/msk-01/window/5/display") == (5, "display")
    assert parse_topic("msk-01", "hall/v1/msk-01/window/12/vote") == (12, "vote")
    for topic in [
        "hall/v1/other/window/5/display",
        "hall/v1/msk-01/window/05/display",
        "hall/v1/msk-01/window/0/display",
        "hall/v1/msk-01/window/x/display",
        "hall/v1/msk-01/window/5/event",
        "hall/v1/msk-01/window/5/display/extra",
        "hall/v1/msk-01/gw/gw-1/status",
    ]:
        assert parse_topic("msk-01", topic) is None, topic


def test_supersedes_by_version():
    v4, v5 = DisplayCommand(4, "A"), DisplayCommand(5, "B")
    assert supersedes(v5, v4) and supersedes(v4, None) and supersedes(None, v4)
    assert not supersedes(v4, v5)  # stale
    assert not supersedes(DisplayCommand(5, "B"), v5)  # the same again (retained, reconnect)
    assert not supersedes(None, None)


# -- AsyncAPI -------------------------------------------------------------------------------


def test_asyncapi_refers_to_every_schema_and_topic():
    refs = set(re.findall(r"\$ref: '\./schemas/([\w.]+)'", ASYNCAPI))
    assert refs == {f"{name}.schema.json" for name in SCHEMA_NAMES}
    addresses = re.findall(r"address: '([^']+)'", ASYNCAPI)
    assert sorted(addresses) == sorted(t.address for t in TOPICS.values())


def test_asyncapi_structure():
    yaml = pytest.importorskip("yaml")
    doc = yaml.safe_load(ASYNCAPI)
    assert doc["asyncapi"].startswith("3.")

    def resolve(ref):  # '#/components/messages/status' -> that object
        node = doc
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
        return node

    channels = doc["channels"]
    assert {name: c["address"] for name, c in channels.items()} == {
        name: t.address for name, t in TOPICS.items()}
    for name, c in channels.items():
        assert set(c["parameters"]) == set(re.findall(r"\{(\w+)\}", c["address"])), name
        for p in c["parameters"].values():
            resolve(p["$ref"])
        payloads = {resolve(m["$ref"])["payload"]["$ref"] for m in c["messages"].values()}
        assert payloads == {f"./schemas/{TOPICS[name].schema}.schema.json"}, name
    ops = [op["channel"]["$ref"].rsplit("/", 1)[1] for op in doc["operations"].values()]
    assert sorted(ops) == sorted(TOPICS), "one operation per channel"
    for op in doc["operations"].values():
        name = op["channel"]["$ref"].rsplit("/", 1)[1]
        assert op["action"] == TOPICS[name].action, name
        assert op["bindings"]["mqtt"]["retain"] is TOPICS[name].retained, name
        assert op["bindings"]["mqtt"]["qos"] == 1
    # the gateway receives exactly the commands it parses, and its receipts
    gateway = {n for n, t in TOPICS.items() if re.search(r"/(gw|window)/", t.address)}
    assert {n for n in gateway if TOPICS[n].action == "receive"} == {*commands.KINDS, "receipt"}
