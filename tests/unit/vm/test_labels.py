"""Label keys/values (Kubernetes rules), `corral label` arguments, selectors and VM filters, report grouping."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from corral.store.db import EventQuery, EventRecord, Store
from corral.vm import labels as lbl
from corral.vm import report
from corral.vm.events import parse_since
from corral.vm.spec import VMSpec


@pytest.mark.parametrize("key", ["env", "app.kubernetes.io/name", "a", "A_b-c.d", "x" * 63, "corral.dev/tier"])
def test_valid_keys(key: str) -> None:
    assert lbl.check_key(key) == key


@pytest.mark.parametrize("key,why", [
    ("", "empty"), ("-env", "the name must be"), ("env-", "the name must be"), ("x" * 64, "the name must be"),
    ("Has Space", "the name must be"), ("UPPER.io/x", "prefix"), ("/x", "prefix"), ("a/b/c", "prefix"),
    ("ok/", "the name must be"),
])
def test_invalid_keys_say_why(key: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        lbl.check_key(key)


def test_values() -> None:
    assert lbl.check_value("k", "") == ""
    assert lbl.check_value("k", "v1.2_3-x") == "v1.2_3-x"
    for bad in ("-x", "x y", "x" * 64, "é"):
        with pytest.raises(ValueError, match="the value must be empty or"):
            lbl.check_value("k", bad)


def test_spec_validates_ownership_fields() -> None:
    s = VMSpec(name="a", owner="ann", project="web", labels={"env": "dev"}, description="x")
    assert (s.owner, s.project, s.labels, s.description) == ("ann", "web", {"env": "dev"}, "x")
    assert VMSpec(name="a").project == "default" and VMSpec(name="a").owner == ""
    for field, value, msg in [("labels", {"bad key": "v"}, "label key 'bad key'"),
                              ("labels", {"env": "a b"}, "the value must be"),
                              ("project", "Web", "project 'Web' is not valid"),
                              ("owner", "ann smith", "owner 'ann smith' is not valid"),
                              ("description", "two\nlines", "one line"),
                              ("labels", {f"k{i}": "v" for i in range(65)}, "at most 64 labels")]:
        with pytest.raises(ValidationError, match=msg):
            VMSpec.model_validate({"name": "a", field: value})


def test_old_specs_still_load() -> None:
    assert VMSpec.model_validate_json('{"name": "old", "image": "tiny"}').project == "default"


def test_assignments() -> None:
    assert lbl.parse_assignments(["env=dev", "tier=", "team-"]) == ({"env": "dev", "tier": ""}, ["team"])
    with pytest.raises(ValueError, match="the value must be"):
        lbl.parse_assignments(["url=a=b"])
    with pytest.raises(ValueError, match="KEY=VALUE to set a label or KEY- to remove"):
        lbl.parse_assignments(["env"])
    with pytest.raises(ValueError, match="both set and removed"):
        lbl.parse_assignments(["env=dev", "env-"])
    with pytest.raises(ValueError, match="only be set at launch"):
        lbl.parse_set(["env-"])


def test_default_owner() -> None:
    assert lbl.default_owner({"CORRAL_OWNER": "ann", "USER": "root"}) == "ann"
    assert lbl.default_owner({"USER": "bob"}) == "bob"
    assert lbl.default_owner({"LOGNAME": "carl"}) == "carl"


LABELS = {"a": {"env": "dev", "team": "web"}, "b": {"env": "dev", "team": "db"}, "c": {"env": "prod"}, "d": {}}


@pytest.mark.parametrize("terms,want", [
    ([], "abcd"), (["env=dev"], "ab"), (["env=dev", "team=web"], "a"), (["env=dev,team=web"], "a"),
    (["team"], "ab"), (["env!=dev"], "cd"), (["env==prod"], "c"), (["env=dev", "team!=web"], "b"),
    (["nope"], ""), (["env="], ""),
])
def test_selectors_and(terms: list[str], want: str) -> None:
    sel = lbl.parse_selector(terms)
    assert "".join(n for n, labels in LABELS.items() if lbl.selects(labels, sel)) == want


@pytest.mark.parametrize("bad", ["", "env=dev,", "bad key=x", "env=a b", "!=x"])
def test_bad_selectors(bad: str) -> None:
    with pytest.raises(ValueError):
        lbl.parse_selector([bad])


def _row(name: str, owner: str, project: str, labels: dict[str, str], running: bool) -> report.ReportRow:
    return report.ReportRow(name=name, owner=owner, project=project, labels=labels,
                            state="running" if running else "stopped", created_at=0, age=10, vcpus=2,
                            memory_mib=256, disk_bytes=1 << 30, disk_used_bytes=1 << 20, running=running,
                            rss_bytes=100 if running else None)


def test_report_groups_and_totals() -> None:
    rows = [_row("a", "ann", "web", {"env": "dev"}, True), _row("b", "bob", "web", {"env": "prod"}, False),
            _row("c", "ann", "db", {}, True)]
    r = report.build(rows, "owner", now=1.0)
    assert [(g.key, [v.name for v in g.vms]) for g in r.groups] == [("ann", ["a", "c"]), ("bob", ["b"])]
    ann = r.groups[0].totals
    assert (ann.vms, ann.running, ann.vcpus, ann.memory_mib, ann.rss_bytes) == (2, 2, 4, 512, 200)
    assert r.totals.vms == 3 and r.totals.disk_bytes == 3 << 30
    by_env = report.build(rows, "label:env", now=1.0)
    assert [g.key for g in by_env.groups] == ["dev", "prod", None]  # VMs without the label last
    assert [g.key for g in report.build(rows, "project", 1.0).groups] == ["db", "web"]
    for bad in ("state", "label:", "label:bad key"):
        with pytest.raises(Exception, match="cannot group by|label key"):
            report.check_by(bad)


def test_rss_from_proc(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "status").write_text("Name:\tqemu\nVmRSS:\t  2048 kB\n")
    assert report.rss_bytes(42, tmp_path) == 2 << 20
    assert report.rss_bytes(43, tmp_path) is None


def test_parse_since() -> None:
    assert parse_since("10m", 1000.0) == 400.0
    assert parse_since("2h", 10000.0) == 2800.0
    assert parse_since("1700000000", 0) == 1700000000.0
    assert parse_since("2024-01-01T00:00:00Z", 0) == 1704067200.0
    with pytest.raises(ValueError, match="duration ago"):
        parse_since("yesterday", 0)


def test_event_filters_in_sql_and_live(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = Store(tmp_path / "db.sqlite")
    store.add_event("a", "state", "x", actor="ann", owner="ann")
    store.add_event("b", "start", "y", {"error": "no"}, actor="bob", owner="ann", result="error")
    store.add_event(None, "daemon", "z", actor="corrald")
    for q, want in [(EventQuery(owner="ann"), ["x", "y"]), (EventQuery(actor="bob"), ["y"]),
                    (EventQuery(type="state"), ["x"]), (EventQuery(result="error"), ["y"]),
                    (EventQuery(vm="a", owner="ann"), ["x"]), (EventQuery(since=0), ["x", "y", "z"]),
                    (EventQuery(after=2), ["z"])]:
        found = store.events(query=q)
        assert [e.message for e in found] == want, q
        assert all(q.matches(e) for e in found)
        assert not any(q.matches(e) for e in store.events() if e.message not in want)
    assert [e.message for e in store.events(limit=2, newest=True)] == ["y", "z"]
    assert set(store.last_activity()) == {"a", "b"}
    assert store.events(query=EventQuery(result="error"))[0].data == {"error": "no"}
    store.close()


def test_old_event_table_gains_columns(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import sqlite3
    db = sqlite3.connect(tmp_path / "db.sqlite")
    db.executescript("CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, vm TEXT, "
                     "type TEXT NOT NULL, message TEXT NOT NULL, data TEXT NOT NULL DEFAULT '{}');"
                     "INSERT INTO events (ts, vm, type, message) VALUES (1, 'a', 'state', 'old');")
    db.close()
    store = Store(tmp_path / "db.sqlite")
    (e,) = store.events()
    assert (e.message, e.actor, e.result) == ("old", "", "ok")
    store.close()


def test_event_record_defaults() -> None:
    assert EventRecord(1, 0.0, None, "t", "m", {}).result == "ok"
