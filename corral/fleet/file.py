"""Loading a fleet file: a fleet name, defaults, and VMs by name or as a count, each VM a :class:`VMSpec`.

    fleet: demo
    defaults: {image: tiny, memory: 256M, labels: {env: dev}}
    vms:
      db: {memory: 512M, restart: always}
      web: {count: 3, labels: {role: web}, cloud_init: {file: web.yaml}}

Every VM's fields are VMSpec fields; the fleet layer adds only ``count`` (``web`` → web-1..web-3), ``defaults``
(merged under each VM; labels are merged key by key), ``cloud_init: {file: PATH}`` (read relative to the fleet file)
and relative host directories of ``mounts`` (from the fleet file's directory). Each VM gets the label
``corral.fleet=NAME``. Errors name the file and line: ``fleet.yaml:12: memory: ...``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from corral.errors import InvalidInput
from corral.fleet import FLEET_LABEL
from corral.vm.labels import check_project
from corral.vm.spec import VMSpec

MAX_COUNT = 100
TOP_KEYS = {"fleet", "defaults", "vms"}
FLEET_KEYS = {"count"}


class FleetFileError(InvalidInput):
    """The fleet file is not valid; the message names the file and line."""


@dataclass(frozen=True)
class Fleet:
    name: str
    vms: list[VMSpec]
    path: Path | None = None


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


class _Loader:
    def __init__(self, where: str, base: Path) -> None:
        self.where, self.base = where, base

    def error(self, node: yaml.Node | None, message: str) -> FleetFileError:
        return FleetFileError(f"{self.where}:{_line(node)}: {message}" if node is not None else
                              f"{self.where}: {message}")

    def value(self, node: yaml.Node) -> Any:
        """The Python value of a node (the safe loader's types)."""
        loader = yaml.SafeLoader("")
        try:
            return loader.construct_document(node)
        except yaml.YAMLError as exc:
            raise self.error(node, str(exc).splitlines()[0]) from None

    def mapping(self, node: yaml.Node, what: str) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        """key -> (key node, value node) of a mapping node; an error for anything else or a repeated key."""
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, f"{what} must be a mapping")
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for k, v in node.value:
            key = self.value(k)
            if not isinstance(key, str):
                raise self.error(k, f"{what}: keys must be strings, not {key!r}")
            if key in out:
                raise self.error(k, f"{what}: {key!r} is given twice")
            out[key] = (k, v)
        return out

    def fields(self, node: yaml.Node, what: str) -> dict[str, tuple[Any, yaml.Node]]:
        """A VM's (or the defaults') fields: name -> (value, the node to blame)."""
        out: dict[str, tuple[Any, yaml.Node]] = {}
        if isinstance(node, yaml.ScalarNode) and self.value(node) is None:
            return out  # `db:` with nothing: all defaults
        for key, (knode, vnode) in self.mapping(node, what).items():
            if key == "name":
                raise self.error(knode, f"{what}: 'name' is not a field here: the key is the VM's name")
            value = self.value(vnode)
            if key == "cloud_init" and isinstance(value, dict):
                value = self.cloud_init_file(vnode, value)
            if key == "mounts" and isinstance(value, list):
                value = [self.mount_host(m) for m in value]
            out[key] = (value, vnode if key != "labels" else vnode)
        return out

    def mount_host(self, m: Any) -> Any:
        """A mount with its host directory made absolute: ~ expanded, a relative one from the fleet file's
        directory (the form is checked by VMSpec after)."""
        def absolute(host: str) -> str:
            return str(self.base / Path(host).expanduser()) if host else host

        if isinstance(m, str):
            head, sep, rest = m.partition(":")
            return absolute(head) + sep + rest
        if isinstance(m, dict) and isinstance(m.get("host"), str):
            return m | {"host": absolute(m["host"])}
        return m

    def cloud_init_file(self, node: yaml.Node, value: dict[str, Any]) -> str:
        if set(value) != {"file"} or not isinstance(value["file"], str):
            raise self.error(node, "cloud_init: give the user-data inline (a string) or as {file: PATH}")
        path = (self.base / Path(value["file"]).expanduser())
        try:
            return path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise self.error(node, f"cloud_init: cannot read {path}: "
                                   f"{getattr(exc, 'strerror', None) or exc}") from None


def loads(text: str, where: str = "<fleet>", base: Path | None = None) -> Fleet:
    """Parse a fleet file's text; ``where`` names it in errors, ``base`` is where relative paths start."""
    ld = _Loader(where, base or Path.cwd())
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        line = f":{exc.problem_mark.line + 1}" if exc.problem_mark else ""
        raise FleetFileError(f"{where}{line}: not valid YAML: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise FleetFileError(f"{where}: not valid YAML: {exc}") from None
    if root is None:
        raise FleetFileError(f"{where}: the file is empty")
    top = ld.mapping(root, "the fleet file")
    for key, (knode, _) in top.items():
        if key not in TOP_KEYS:
            raise ld.error(knode, f"unknown key {key!r}: a fleet file has {', '.join(sorted(TOP_KEYS))}")
    if "fleet" not in top:
        raise ld.error(root, "'fleet: NAME' is missing")
    name_node = top["fleet"][1]
    name = ld.value(name_node)
    try:
        check_project(name if isinstance(name, str) else "")
    except ValueError:
        raise ld.error(name_node, f"fleet: {name!r} is not a valid fleet name: use 1-63 lower-case letters, "
                                  "digits and '-'") from None
    defaults = ld.fields(top["defaults"][1], "defaults") if "defaults" in top else {}
    if "count" in defaults:
        raise ld.error(defaults["count"][1], "defaults: 'count' belongs to a VM, not the defaults")
    if "vms" not in top:
        raise ld.error(root, "'vms:' is missing")
    specs: list[VMSpec] = []
    seen: dict[str, yaml.Node] = {}
    for vm_name, (knode, vnode) in ld.mapping(top["vms"][1], "vms").items():
        own = ld.fields(vnode, vm_name)
        count_node = None
        count: int | None = None
        if "count" in own:
            value, count_node = own.pop("count")
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_COUNT:
                raise ld.error(count_node, f"{vm_name}: count must be a whole number from 0 to {MAX_COUNT}")
            count = value
        merged = defaults | own
        if "labels" in defaults and "labels" in own:
            d, o = defaults["labels"][0], own["labels"][0]
            if isinstance(d, dict) and isinstance(o, dict):
                merged["labels"] = (d | o, own["labels"][1])
        names = [f"{vm_name}-{i}" for i in range(1, count + 1)] if count is not None else [vm_name]
        for n in names:
            if n in seen:
                raise ld.error(knode, f"VM {n!r} is declared twice (also on line {_line(seen[n])})")
            seen[n] = knode
            specs.append(_spec(ld, n, knode, merged, name))
    return Fleet(name=name, vms=specs)


def _spec(ld: _Loader, name: str, knode: yaml.Node, fields: dict[str, tuple[Any, yaml.Node]],
          fleet: str) -> VMSpec:
    data = {k: v for k, (v, _) in fields.items()}
    labels = data.get("labels", {})
    if isinstance(labels, dict):
        if FLEET_LABEL in labels:
            raise ld.error(fields["labels"][1], f"{name}: the label {FLEET_LABEL} is reserved: Corral sets it")
        data["labels"] = {str(k): "" if v is None else str(v) for k, v in labels.items()} | {FLEET_LABEL: fleet}
    try:
        spec = VMSpec.model_validate({"name": name} | data)
        # Host directories resolved as the daemon stores them, so that a plan compares like with like.
        return spec.model_copy(update={"mounts": [m.model_copy(update={"host": os.path.realpath(m.host)})
                                                  for m in spec.mounts]})
    except ValidationError as exc:
        e = exc.errors()[0]
        loc = [str(x) for x in e["loc"]]
        field = loc[0] if loc else ""
        node = fields[field][1] if field in fields else knode
        msg = str(e["msg"]).removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = f"unknown field {field!r} (VM fields are those of `corral launch`: see docs/reference/fleet-file.md)"
        raise ld.error(node, f"{name}: {'.'.join(loc)}: {msg}") from None


def load(path: Path | str) -> Fleet:
    """Read and parse a fleet file; relative cloud-init files are read relative to it."""
    p = Path(path)
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise FleetFileError(f"cannot read fleet file {p}: {getattr(exc, 'strerror', None) or exc}") from None
    fleet = loads(text, where=str(path), base=p.resolve().parent)
    return Fleet(name=fleet.name, vms=fleet.vms, path=p)
