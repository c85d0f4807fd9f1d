"""The protocol schemas in proto/ are the contract: the examples, the default
agent pool and every event `paraserve orchestrate` emits must validate."""
import json
import subprocess

import jsonschema
import pytest
from jsonschema.validators import Draft202012Validator
from referencing import Registry, Resource

from conftest import ROOT

PROTO = ROOT / "proto"
SCHEMAS = {p.name: json.loads(p.read_text()) for p in PROTO.glob("*.schema.json")}
REGISTRY = Registry().with_resources(
    [(name, Resource.from_contents(s)) for name, s in SCHEMAS.items()] +
    [(s["$id"], Resource.from_contents(s)) for s in SCHEMAS.values()])


def validator(name):
    s = SCHEMAS[name]
    Draft202012Validator.check_schema(s)
    return Draft202012Validator(s, registry=REGISTRY)


def test_schemas_are_valid():
    assert set(SCHEMAS) == {"action.schema.json", "feedback.schema.json", "agent.schema.json",
                            "event.schema.json", "trajectory.schema.json"}
    for name in SCHEMAS:
        validator(name)


def test_examples_validate():
    va, vf = validator("action.schema.json"), validator("feedback.schema.json")
    for a in json.loads((PROTO / "examples" / "actions.json").read_text()):
        va.validate(a)
    for f in json.loads((PROTO / "examples" / "feedback.json").read_text()):
        vf.validate(f)
    validator("trajectory.schema.json").validate(json.loads((PROTO / "examples" / "trajectory.json").read_text()))


BAD_ACTIONS = [
    {},
    {"calls": []},
    {"wait": True, "final": {"answer": "x"}},
    {"calls": [{"id": "c1", "to": "x"}]},
    {"final": {"answer": 3}},
    {"cancel": "c1"},
    {"calls": [{"id": "c1", "to": "x", "args": {}, "extra": 1}]},
    {"wait": False},
    {"cancel": []},
    {"final": {"answer": "x", "extra": 1}},
    {"thought": "only a thought"},
    {"thought": 7, "wait": True},
    {"calls": [7]},
    {"launch": True},
]
# refused by the schema; the executor takes these per call, as `rejected`
# feedback for that call, rather than refusing the whole action
CALL_LEVEL = ({"calls": [{"id": "c1", "to": "x"}]}, {"calls": [{"id": "c1", "to": "x", "args": {}, "extra": 1}]})


@pytest.mark.parametrize("bad", BAD_ACTIONS)
def test_bad_actions_rejected(bad):
    with pytest.raises(jsonschema.ValidationError):
        validator("action.schema.json").validate(bad)


def submit_script_step(paraserve_bin, action):
    """`paraserve orchestrate` of a task whose script is `action` then a
    final: (exit code, stderr)."""
    task = {"input": "parity", "script": [action, {"final": {"answer": "done"}}]}
    r = subprocess.run([paraserve_bin, "orchestrate", "--agents", str(ROOT / "configs" / "agents.default.json"),
                        "--quiet", "--task", json.dumps(task)], capture_output=True, timeout=60)
    return r.returncode, r.stderr.decode()


@pytest.mark.parametrize("bad", [b for b in BAD_ACTIONS if b not in CALL_LEVEL])
def test_code_refuses_what_the_schema_refuses(paraserve_bin, bad):
    """The executor's own check (action_check) agrees with the schema: a
    scripted step the schema refuses is refused at submission, naming it."""
    rc, err = submit_script_step(paraserve_bin, bad)
    assert rc == 2 and "script[0]: action:" in err, (rc, err)


@pytest.mark.parametrize("good", json.loads((PROTO / "examples" / "actions.json").read_text()))
def test_code_accepts_what_the_schema_accepts(paraserve_bin, good):
    rc, err = submit_script_step(paraserve_bin, good)
    assert "script[" not in err and rc == 0, (rc, err)


def test_default_agent_pool_validates():
    validator("agent.schema.json").validate(json.loads((ROOT / "configs" / "agents.default.json").read_text()))


def orchestrate_events(paraserve_bin, task):
    """`paraserve orchestrate` of `task` on the default pool: its events,
    each validated against proto/event.schema.json."""
    r = subprocess.run([paraserve_bin, "orchestrate", "--agents", str(ROOT / "configs" / "agents.default.json"),
                        "--task", json.dumps(task)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    v = validator("event.schema.json")
    for e in events:
        v.validate(e)
    return events


def test_orchestrate_events_follow_the_schema(paraserve_bin):
    task = {"input": "arithmetic", "script": [
        {"calls": [{"id": "c1", "to": "calculator", "args": {"expression": "6*7"}},
                   {"id": "c2", "to": "no_such_agent", "args": {}},
                   {"id": "c3", "to": "calculator", "args": {"expression": "{{c1.value}}+1"}, "after": ["c1"]}]},
        {"wait": True},
        {"final": {"answer": "{{c3.value}}", "uses": ["c1", "c3"]}}]}
    events = orchestrate_events(paraserve_bin, task)
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))
    statuses = {e["data"]["id"]: e["data"]["status"] for e in events if e["event"] == "call.result"}
    assert statuses == {"c1": "ok", "c2": "rejected", "c3": "ok"}
    assert events[-1]["event"] == "task.final" and events[-1]["data"]["output"] == "43"


def test_calls_without_ids_get_fresh_ones(paraserve_bin):
    """A call without an id gets c<k> (its position among the task's calls,
    or the next number not taken); the decision event shows the ids."""
    task = {"input": "ids", "script": [
        {"calls": [{"to": "calculator", "args": {"expression": "6*7"}},
                   {"id": "c3", "to": "calculator", "args": {"expression": "1"}},
                   {"to": "calculator", "args": {"expression": "{{c1}}+1"}, "after": ["c1"]}]},
        {"calls": [{"to": "calculator", "args": {"expression": "{{c4}}*2"}}]},
        {"final": {"answer": "{{c5}}", "uses": ["c5"]}}]}
    events = orchestrate_events(paraserve_bin, task)
    decisions = [e["data"]["action"] for e in events if e["event"] == "decision"]
    assert [c["id"] for c in decisions[0]["calls"]] == ["c1", "c3", "c4"]
    assert [c["id"] for c in decisions[1]["calls"]] == ["c5"]
    statuses = {e["data"]["id"]: e["data"]["status"] for e in events if e["event"] == "call.result"}
    assert statuses == {"c1": "ok", "c3": "ok", "c4": "ok", "c5": "ok"}
    assert events[-1]["event"] == "task.final" and events[-1]["data"]["output"] == "86"
