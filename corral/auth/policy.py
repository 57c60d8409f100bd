"""Who may do what: THE table, checked in one place (:mod:`corral.api.gate`) for every request over TCP.

:data:`POLICY` maps each route, by (method, path template), to a :class:`Rule`: the action it needs and where the
project it acts on comes from ("vm": the VM named in the path; "body": the ``project`` of the request body, default
"default"; "none": no one project, lists are filtered with :func:`visible`). :data:`ROLE_ACTIONS` says which
actions each role has:

    action    what                                                       viewer  operator  admin
    public    log in; the web page's static files                        yes     yes       yes
    self      whoami; one's own tokens                                   yes     yes       yes
    read      GET of VMs, their events, logs, disks, snapshots; lists    yes     yes       yes
    operate   start/stop/restart/suspend/resume/exec/shell/cp/snapshot   -       yes       yes
    console   the serial and graphical consoles (web's tickets)          -       yes       yes
    create    create or clone a VM (in the project it is created in;     -       yes       yes
              a spec with host folders needs admin)
    delete    delete a VM                                                -       yes       yes
    admin     hosts, quotas, projects, users, others' tokens, images,    -       -         yes
              networks, backups, pools, templates, the daemon

An operator or viewer with a project acts in that project only; without one, in every project. A route with no
entry needs ``admin`` (and a unit test fails for it: every route of the app must be in the table). An unknown action
also needs admin.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from corral.auth.errors import Forbidden
from corral.auth.principal import Principal, Role

Action = Literal["public", "self", "read", "operate", "console", "create", "delete", "admin"]
Target = Literal["none", "vm", "body"]

ROLE_ACTIONS: dict[Role, frozenset[str]] = {
    "viewer": frozenset({"public", "self", "read"}),
    "operator": frozenset({"public", "self", "read", "operate", "console", "create", "delete"}),
    "admin": frozenset({"public", "self", "read", "operate", "console", "create", "delete", "admin"}),
}


@dataclass(frozen=True)
class Rule:
    action: Action
    target: Target = "none"


PUBLIC, SELF, READ, ADMIN = Rule("public"), Rule("self"), Rule("read"), Rule("admin")
VM_READ, VM_OPERATE, VM_CONSOLE = Rule("read", "vm"), Rule("operate", "vm"), Rule("console", "vm")
VM = "/v1/vms/{name}"

#: (method, route path template) -> Rule. HEAD is looked up as GET; "WS" is a websocket route.
POLICY: dict[tuple[str, str], Rule] = {
    # --- auth (this package) ---
    ("POST", "/v1/auth/login"): PUBLIC,
    ("GET", "/v1/auth/whoami"): SELF,
    ("GET", "/v1/users"): ADMIN,
    ("POST", "/v1/users"): ADMIN,
    ("GET", "/v1/users/{name}"): ADMIN,
    ("DELETE", "/v1/users/{name}"): ADMIN,
    ("GET", "/v1/tokens"): SELF,  # one's own; an admin's: everyone's
    ("POST", "/v1/tokens"): SELF,  # for oneself; for another user: admin (checked by the route)
    ("DELETE", "/v1/tokens/{token_id}"): SELF,  # one's own; an admin: any
    # --- documentation of the API ---
    ("GET", "/openapi.json"): READ,
    ("GET", "/docs"): READ,
    ("GET", "/docs/oauth2-redirect"): READ,
    ("GET", "/redoc"): READ,
    # --- metrics (corral.metrics: samples of VMs not visible are left out) ---
    ("GET", "/metrics"): READ,
    # --- the cluster (corral.cluster): its hosts are the admins' ---
    ("POST", "/v1/cluster/init"): ADMIN,
    ("POST", "/v1/cluster/join"): ADMIN,
    ("GET", "/v1/cluster"): READ,
    ("GET", "/v1/hosts"): READ,
    ("GET", "/v1/hosts/{name}"): READ,
    ("POST", "/v1/hosts/{name}/drain"): ADMIN,
    ("POST", "/v1/hosts/{name}/undrain"): ADMIN,
    ("POST", VM + "/move"): ADMIN,
    # --- live migration (corral.migration): host to host, the admins' ---
    ("POST", "/v1/migrations/incoming"): ADMIN,
    ("POST", "/v1/migrations/incoming/{name}/commit"): ADMIN,
    ("DELETE", "/v1/migrations/incoming/{name}"): ADMIN,
    ("POST", VM + "/migrate"): ADMIN,
    # --- the daemon and the fleet as a whole (lists filtered by visible()) ---
    ("GET", "/v1/status"): READ,
    ("GET", "/v1/capacity"): READ,
    ("GET", "/v1/events"): READ,
    ("GET", "/v1/events/stream"): READ,
    ("GET", "/v1/report"): READ,
    # --- VMs ---
    ("GET", "/v1/vms"): READ,
    ("POST", "/v1/vms"): Rule("create", "body"),
    ("GET", VM): VM_READ,
    ("PATCH", VM): VM_OPERATE,
    ("DELETE", VM): Rule("delete", "vm"),
    ("GET", VM + "/events"): VM_READ,
    ("GET", VM + "/logs"): VM_READ,
    ("GET", VM + "/disks"): VM_READ,
    ("GET", VM + "/disks/{disk}"): VM_READ,
    ("GET", VM + "/snapshots"): VM_READ,
    ("GET", VM + "/ports"): VM_READ,
    ("GET", VM + "/mounts"): VM_READ,
    ("GET", VM + "/balloon"): VM_READ,
    ("GET", VM + "/files/virtio/status"): VM_READ,
    **{("POST", VM + "/" + op): VM_OPERATE for op in (
        "start", "stop", "kill", "restart", "pause", "resume", "suspend", "wait", "wait-ready", "exec", "extend",
        "labels", "balloon", "snapshots", "disks", "ports", "files/virtio/uploads")},
    ("POST", VM + "/snapshots/{snapshot}/revert"): VM_OPERATE,
    ("DELETE", VM + "/snapshots/{snapshot}"): VM_OPERATE,
    ("POST", VM + "/disks/{disk}/attach"): VM_OPERATE,
    ("POST", VM + "/disks/{disk}/detach"): VM_OPERATE,
    ("POST", VM + "/disks/{disk}/resize"): VM_OPERATE,
    ("POST", VM + "/disks/{disk}/throttle"): VM_OPERATE,
    ("DELETE", VM + "/disks/{disk}"): VM_OPERATE,
    ("DELETE", VM + "/ports/{which}"): VM_OPERATE,
    ("PUT", VM + "/idle"): VM_OPERATE,
    ("DELETE", VM + "/idle"): VM_OPERATE,
    ("GET", VM + "/ssh"): VM_OPERATE,  # the way in (a key): as exec
    ("GET", VM + "/files"): VM_OPERATE,  # guest files: as cp
    ("PUT", VM + "/files"): VM_OPERATE,
    ("GET", VM + "/files/stat"): VM_OPERATE,
    ("GET", VM + "/files/virtio"): VM_OPERATE,
    ("POST", VM + "/clone"): Rule("create", "vm"),  # the clone is in its source's project
    ("WS", VM + "/console"): VM_CONSOLE,
    ("WS", VM + "/vnc"): VM_CONSOLE,
    ("POST", VM + "/console/tickets"): VM_CONSOLE,
    # host paths and host repairs: admin
    ("POST", VM + "/mounts"): ADMIN,  # shares a folder of the host
    ("DELETE", VM + "/mounts"): ADMIN,
    ("POST", VM + "/export"): ADMIN,  # writes a file on the host
    ("POST", VM + "/repair"): ADMIN,
    ("POST", "/v1/import"): ADMIN,
    # --- images and templates: read to launch, the rest admin ---
    ("GET", "/v1/images"): READ,
    ("GET", "/v1/images/{name}"): READ,
    ("POST", "/v1/images/import"): ADMIN,
    ("POST", "/v1/images/import-oci"): ADMIN,
    ("DELETE", "/v1/images/{name}"): ADMIN,
    ("POST", "/v1/images/{name}/build"): ADMIN,
    ("GET", "/v1/templates"): READ,
    ("GET", "/v1/templates/{name}"): READ,
    ("POST", "/v1/templates"): ADMIN,
    ("DELETE", "/v1/templates/{name}"): ADMIN,
    ("POST", "/v1/templates/{name}/launch"): Rule("create", "body"),
    # --- host-wide: admin ---
    **{(m, p): ADMIN for m, p in (
        ("GET", "/v1/backups"), ("POST", "/v1/backups"), ("POST", "/v1/backups/prune"), ("GET", "/v1/backups/repo"),
        ("POST", "/v1/backups/repos"), ("GET", "/v1/backups/schedules"), ("PUT", "/v1/backups/schedules/{vm}"),
        ("DELETE", "/v1/backups/schedules/{vm}"), ("POST", "/v1/backups/verify"),
        ("POST", "/v1/backups/{backup_id}/restore"),
        ("GET", "/v1/networks"), ("POST", "/v1/networks"), ("GET", "/v1/networks/{name}"),
        ("DELETE", "/v1/networks/{name}"),
        ("GET", "/v1/pools"), ("POST", "/v1/pools"), ("GET", "/v1/pools/{template}"), ("PUT", "/v1/pools/{template}"),
        ("DELETE", "/v1/pools/{template}"),
        ("GET", "/v1/projects"), ("PUT", "/v1/projects/{name}"), ("PUT", "/v1/projects/{name}/idle"),
        ("DELETE", "/v1/projects/{name}/idle"),
        ("GET", "/v1/quotas"), ("PUT", "/v1/quotas/{scope}/{name}"), ("DELETE", "/v1/quotas/{scope}/{name}"),
        ("POST", "/v1/sandbox/runs"),
    )},
}

#: Mounts (not routes) of static files the web page is made of: no token (contract of issue 13).
PUBLIC_MOUNTS = frozenset({"", "/", "/assets"})


#: Fields of a VM spec that reach into the host (shared host folders): a body with any of them needs admin.
HOST_FIELDS = ("mounts",)


def body_action(action: str, doc: object) -> str:
    """The action a request body needs: ``action``, or admin when a VM spec in it names host paths."""
    if isinstance(doc, dict) and any(doc.get(f) for f in HOST_FIELDS):
        return "admin"
    return action


def rule_for(method: str, template: str) -> Rule:
    """The rule of a route; ADMIN for one the table lacks."""
    return POLICY.get(("GET" if method == "HEAD" else method, template), ADMIN)


def visible(principal: Principal, project: str | None) -> bool:
    """Whether ``principal`` may see what belongs to ``project`` (None: to no project, e.g. a daemon event: only
    principals of every project see those)."""
    return principal.project is None or (project is not None and principal.project == project)


def allowed(principal: Principal, action: str, project: str | None = None) -> bool:
    """Whether ``principal`` may do ``action`` on ``project`` (None: on no one project)."""
    if principal.role == "admin":
        return True
    if action not in ROLE_ACTIONS[principal.role]:
        return False
    if action in ("public", "self", "read"):
        return project is None or visible(principal, project)
    return visible(principal, project)


#: How a refusal names each action: "viewer 'ann' may not operate VMs in project 'web'".
WHAT = {"read": "see this", "operate": "operate VMs", "console": "use consoles", "create": "create VMs",
        "delete": "delete VMs", "admin": "do this (admins only)"}


def refusal(principal: Principal, action: str, project: str | None = None) -> str:
    where = f" in project '{project}'" if project else ""
    return f"{principal.role} '{principal.name}' may not {WHAT.get(action, action)}{where}"


def require(principal: Principal, action: str, project: str | None = None) -> None:
    """Raise :class:`Forbidden` (HTTP 403, one line) unless ``principal`` may do ``action`` on ``project``."""
    if not allowed(principal, action, project):
        raise Forbidden(refusal(principal, action, project))
