"""Nested virtualization: whether this host can give a guest the CPU's virtualization extension, and which one.

A guest can run VMs of its own at a useful speed only with hardware virtualization passed through: Intel's VMX
or AMD's SVM, exposed by KVM to a guest CPU (``-cpu host,vmx=on`` / ``host,svm=on``) when the host's
``kvm_intel`` / ``kvm_amd`` module was loaded with ``nested=1``. Under TCG there is nothing to pass through: Corral
refuses ``--nested`` rather than boot a guest that cannot run a VM (docs/explanation/nested.md).

The host facts are read by :func:`read_facts` (``/proc/cpuinfo``, ``/sys/module``) and decided on by
:func:`cpu_flag`, a pure function of the facts, so every case is unit-tested with facts written by the test.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from corral.errors import CapacityError

CPUINFO = Path("/proc/cpuinfo")
SYS_MODULE = Path("/sys/module")
DOC = "docs/explanation/nested.md"

#: The CPU flag of each vendor's extension and the KVM module that serves it.
MODULES = {"vmx": "kvm_intel", "svm": "kvm_amd"}
#: How each module's ``nested`` parameter reads when on (kvm_intel says Y, kvm_amd says 1).
NESTED_ON = frozenset({"y", "1"})


@dataclass(frozen=True)
class VirtFacts:
    """What the host says: the virtualization flag its CPU has (None: neither), and its KVM module's ``nested``
    parameter (None: the module is not loaded)."""

    flag: str | None
    nested: str | None

    @property
    def module(self) -> str | None:
        return MODULES.get(self.flag or "")


def read_facts(cpuinfo: Path = CPUINFO, sys_module: Path = SYS_MODULE) -> VirtFacts:
    """The host's facts (small reads of /proc and /sys); a file that cannot be read counts as absent."""
    flags: set[str] = set()
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                flags.update(line.partition(":")[2].split())
                break
    except OSError:
        pass
    flag = next((f for f in MODULES if f in flags), None)
    nested = None
    if flag is not None:
        try:
            nested = (sys_module / MODULES[flag] / "parameters" / "nested").read_text().strip()
        except OSError:
            nested = None
    return VirtFacts(flag, nested)


def cpu_flag(nested: bool, accel: str, accel_reason: str = "", facts: VirtFacts | None = None) -> str | None:
    """The flag to turn on in the guest CPU (``vmx`` or ``svm``) for a VM whose spec says ``nested``; None for a VM
    that does not ask. Raises CapacityError, one line saying what is missing and how to get it, when the host cannot
    give it: under TCG, without the CPU extension, or with the KVM module's nesting off."""
    if not nested:
        return None
    if accel != "kvm":
        why = f" ({accel_reason})" if accel_reason else ""
        raise CapacityError(f"nested virtualization needs KVM, but this host runs VMs under {accel.upper()}{why}: "
                            "there is no hardware extension to give its guests (they can still run QEMU under TCG, "
                            f"slowly); launch without --nested (see {DOC})")
    facts = facts if facts is not None else read_facts()
    if facts.flag is None or facts.module is None:
        raise CapacityError("nested virtualization needs the CPU's vmx (Intel) or svm (AMD) extension, and "
                            f"{CPUINFO} shows neither: enable virtualization in the firmware, or launch without "
                            "--nested")
    module = facts.module
    param = SYS_MODULE / module / "parameters" / "nested"
    if facts.nested is None:
        raise CapacityError(f"nested virtualization needs the {module} module, which is not loaded ({param} is "
                            f"missing): load it with `modprobe {module} nested=1`")
    if facts.nested.lower() not in NESTED_ON:
        raise CapacityError(f"nested virtualization is off in {module} ({param} is {facts.nested}): turn it on "
                            f"with `echo 'options {module} nested=1' > /etc/modprobe.d/kvm-nested.conf`, then "
                            f"`modprobe -r {module} && modprobe {module}` while no VM runs")
    return facts.flag
