"""Loading fleet files: counts, defaults, cloud-init files, and errors that name the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.fleet import FLEET_LABEL
from corral.fleet.file import FleetFileError, load, loads

FLEET = """\
fleet: demo
defaults:
  image: tiny
  memory: 256M
  labels: {env: dev}
vms:
  db:
    memory: 512M
    restart: always
    description: the database
  web:
    count: 3
    vcpus: 2
    labels: {role: web}
    ports: ["8080:80"]
  bare:
"""


def test_counts_defaults_and_names() -> None:
    f = loads(FLEET)
    assert f.name == "demo"
    assert [s.name for s in f.vms] == ["db", "web-1", "web-2", "web-3", "bare"]
    db, web1, *_, bare = f.vms
    assert (db.memory, db.restart, db.description, db.vcpus) == (512, "always", "the database", 1)
    assert web1.vcpus == 2 and web1.memory == 256
    assert web1.labels == {"env": "dev", "role": "web", FLEET_LABEL: "demo"}
    assert [str(p) for p in web1.ports] == ["127.0.0.1:8080:80/tcp"]
    assert bare.labels == {"env": "dev", FLEET_LABEL: "demo"} and bare.image == "tiny"


def test_count_zero_declares_none() -> None:
    assert loads("fleet: f\nvms:\n  web: {count: 0}\n").vms == []


def test_cloud_init_inline_and_file_relative_to_the_fleet_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "user-data.yaml").write_text("#cloud-config\nhostname: x\n")
    (tmp_path / "fleet.yaml").write_text(
        "fleet: f\nvms:\n  a: {cloud_init: {file: sub/user-data.yaml}}\n"
        "  b:\n    cloud_init: |\n      #cloud-config\n      packages: []\n")
    f = load(tmp_path / "fleet.yaml")
    assert f.vms[0].cloud_init == "#cloud-config\nhostname: x\n"
    assert f.vms[1].cloud_init == "#cloud-config\npackages: []\n"


def _error(text: str) -> str:
    with pytest.raises(FleetFileError) as exc:
        loads(text, where="fleet.yaml")
    return str(exc.value)


@pytest.mark.parametrize(("text", "expected"), [
    ("fleet: f\nvms:\n  web:\n    count: 2\n    memory: lots\n", "fleet.yaml:5: web-1: memory: 'lots' is not a size"),
    ("fleet: f\ndefaults:\n  vcpus: 0\nvms:\n  a:\n", "fleet.yaml:3: a: vcpus: Input should be greater than"),
    ("fleet: f\nvms:\n  a:\n    colour: red\n", "fleet.yaml:4: a: colour: unknown field 'colour'"),
    ("fleet: f\nvms:\n  Bad_Name: {}\n", "fleet.yaml:3: Bad_Name: name: 'Bad_Name' is not a valid VM name"),
    ("fleet: f\nvms:\n  a: {restart: sometimes}\n", "fleet.yaml:3: a: restart: Input should be"),
    ("fleet: f\nvms:\n  web: {count: 2}\n  web-2: {}\n", "fleet.yaml:4: VM 'web-2' is declared twice (also on line 3)"),
    ("fleet: f\nvms:\n  web: {count: many}\n", "fleet.yaml:3: web: count must be a whole number"),
    ("fleet: f\nvms:\n  a: {labels: {corral.fleet: g}}\n", "fleet.yaml:3: a: the label corral.fleet is reserved"),
    ("fleet: f\nvms:\n  a: {name: b}\n", "fleet.yaml:3: a: 'name' is not a field here"),
    ("fleet: f\nvms:\n  a: {cloud_init: {file: /nonexistent/x}}\n", "fleet.yaml:3: cloud_init: cannot read"),
    ("fleet: f\nvms:\n  a: {}\n  a: {}\n", "fleet.yaml:4: vms: 'a' is given twice"),
    ("fleet: f\nflock: 1\nvms: {}\n", "fleet.yaml:2: unknown key 'flock'"),
    ("vms: {}\n", "fleet.yaml:1: 'fleet: NAME' is missing"),
    ("fleet: Not Valid\nvms: {}\n", "fleet.yaml:1: fleet: 'Not Valid' is not a valid fleet name"),
    ("fleet: f\nvms: [a, b]\n", "fleet.yaml:2: vms must be a mapping"),
    ("fleet: f\nvms:\n  a: {memory: [1\n", "fleet.yaml:4: not valid YAML"),
    ("", "fleet.yaml: the file is empty"),
])
def test_errors_name_the_line(text: str, expected: str) -> None:
    assert _error(text).startswith(expected), _error(text)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(FleetFileError, match="cannot read fleet file"):
        load(tmp_path / "missing.yaml")


def test_idle_policy_in_a_fleet_file() -> None:
    text = ("fleet: f\ndefaults:\n  idle: {suspend_after: 30m, cpu: 2%}\n"
            "vms:\n  a: {}\n  b: {idle: {suspend_after: off}}\n")
    a, b = loads(text).vms
    assert a.idle is not None and (a.idle.suspend_after, a.idle.cpu, a.idle.net) == (1800, 2.0, 16 << 10)
    assert b.idle is not None and not b.idle.enabled
    assert _error("fleet: f\nvms:\n  a:\n    idle: {suspend_after: soon}\n") == \
        "fleet.yaml:4: a: idle.suspend_after: 'soon' is not a duration: use e.g. 90s, 30m, 2h, 7d or 1h30m"


def test_balloon_in_a_fleet_file() -> None:
    f = loads("fleet: f\ndefaults: {balloon: true}\nvms:\n  a: {}\n  b: {balloon: false}\n")
    assert [(s.name, s.balloon) for s in f.vms] == [("a", True), ("b", False)]
