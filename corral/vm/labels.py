"""Ownership and labels: Kubernetes-style label keys and values, `corral label` arguments, and selectors.

A label key is an optional DNS-subdomain prefix and a name, ``[prefix/]name``: the name is 1-63 characters of
letters, digits, '-', '_' and '.', starting and ending with a letter or digit; the prefix (at most 253
characters) is lower-case DNS labels joined by dots. A value is empty or like a name. Owners and projects are
names too (owners are login names, which may hold upper-case letters; projects are DNS labels).

Selectors (``corral ls -l``, ``GET /v1/vms?label=``) are ANDed: ``key=value``, ``key!=value`` (also true when the
key is absent, as in Kubernetes) and ``key`` (the key is present).
"""

from __future__ import annotations

import getpass
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

NAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$")
PREFIX_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")
PROJECT_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
MAX_LABELS = 64
MAX_DESCRIPTION = 1024

_NAME_RULE = "1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"


def check_key(key: str) -> str:
    """``key`` if it is a valid label key, else ValueError saying what is wrong."""
    prefix, slash, name = key.rpartition("/")
    if not key:
        raise ValueError("a label key cannot be empty")
    if slash and (not prefix or len(prefix) > 253 or not PREFIX_RE.match(prefix)):
        raise ValueError(f"label key {key!r}: the prefix before '/' must be a DNS subdomain "
                         "(lower-case letters, digits, '-' and '.', at most 253 characters)")
    if not NAME_RE.match(name):
        raise ValueError(f"label key {key!r}: the name must be {_NAME_RULE}")
    return key


def check_value(key: str, value: str) -> str:
    if value and not NAME_RE.match(value):
        raise ValueError(f"label {key}={value!r}: the value must be empty or {_NAME_RULE}")
    return value


def check_labels(labels: Mapping[str, str]) -> dict[str, str]:
    if len(labels) > MAX_LABELS:
        raise ValueError(f"at most {MAX_LABELS} labels per VM ({len(labels)} given)")
    return {check_key(k): check_value(k, v) for k, v in labels.items()}


def check_owner(owner: str) -> str:
    if not NAME_RE.match(owner):
        raise ValueError(f"owner {owner!r} is not valid: use {_NAME_RULE}")
    return owner


def check_project(project: str) -> str:
    if not PROJECT_RE.match(project):
        raise ValueError(f"project {project!r} is not valid: use 1-63 lower-case letters, digits and '-', "
                         "starting and ending with a letter or digit")
    return project


def default_owner(environ: Mapping[str, str] | None = None) -> str:
    """Who runs this: $CORRAL_OWNER, else the login name ($USER, $LOGNAME, then the password database)."""
    env = os.environ if environ is None else environ
    for var in ("CORRAL_OWNER", "USER", "LOGNAME"):
        if env.get(var):
            return env[var]
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def parse_assignments(args: Iterable[str]) -> tuple[dict[str, str], list[str]]:
    """`corral label` arguments: ``k=v`` sets, ``k-`` removes. Returns (to set, to remove); ValueError if bad."""
    to_set: dict[str, str] = {}
    to_remove: list[str] = []
    for arg in args:
        if "=" in arg:
            k, v = arg.split("=", 1)
            check_key(k)
            to_set[k] = check_value(k, v)
        elif arg.endswith("-") and len(arg) > 1:
            to_remove.append(check_key(arg[:-1]))
        else:
            raise ValueError(f"{arg!r}: write KEY=VALUE to set a label or KEY- to remove it")
    both = set(to_set) & set(to_remove)
    if both:
        raise ValueError(f"label {sorted(both)[0]!r} is both set and removed")
    return to_set, to_remove


def parse_set(args: Iterable[str]) -> dict[str, str]:
    """`corral launch -l k=v` arguments: set only."""
    to_set, to_remove = parse_assignments(args)
    if to_remove:
        raise ValueError(f"{to_remove[0]}-: labels can only be set at launch (KEY=VALUE)")
    return to_set


@dataclass(frozen=True)
class Requirement:
    """One selector term: ``op`` is "=", "!=" or "exists"."""

    key: str
    op: str
    value: str = ""

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.op == "exists":
            return self.key in labels
        if self.op == "!=":
            return labels.get(self.key) != self.value
        return labels.get(self.key) == self.value

    def __str__(self) -> str:
        return self.key if self.op == "exists" else f"{self.key}{self.op}{self.value}"


def parse_selector(terms: Iterable[str]) -> list[Requirement]:
    """``["env=dev", "team!=web", "gpu"]`` (a term may also hold several, comma-separated). ValueError if bad."""
    reqs = []
    for term in terms:
        for part in term.split(","):
            part = part.strip()
            if not part:
                raise ValueError(f"empty label selector in {term!r}")
            if "!=" in part:
                k, v = part.split("!=", 1)
                op = "!="
            elif "=" in part:
                k, v = part.split("=", 1)
                op = "="
                if v.startswith("="):  # k==v
                    v = v[1:]
            else:
                k, v, op = part, "", "exists"
            check_key(k.strip())
            reqs.append(Requirement(k.strip(), op, check_value(k.strip(), v.strip())))
    return reqs


def selects(labels: Mapping[str, str], selector: Iterable[Requirement]) -> bool:
    return all(r.matches(labels) for r in selector)
