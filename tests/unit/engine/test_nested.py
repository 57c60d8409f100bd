"""The nested-virtualization checks, with the host's /proc/cpuinfo and /sys/module written by the test."""

from pathlib import Path

import pytest

from corral.engine.nested import VirtFacts, cpu_flag, read_facts
from corral.errors import CapacityError

INTEL = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu vme de pse msr vmx ept sse2\n\nprocessor\t: 1\n"
AMD = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu vme de svm npt sse2\n"
NEITHER = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu vme de hypervisor sse2\n"


def host(tmp_path: Path, cpuinfo: str, module: str | None = None, nested: str | None = None) -> tuple[Path, Path]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "cpuinfo").write_text(cpuinfo)
    sys_module = tmp_path / "module"
    if module is not None:
        params = sys_module / module / "parameters"
        params.mkdir(parents=True)
        if nested is not None:
            (params / "nested").write_text(nested + "\n")
    return tmp_path / "cpuinfo", sys_module


@pytest.mark.parametrize(("cpuinfo", "module", "value", "flag"), [
    (INTEL, "kvm_intel", "Y", "vmx"), (AMD, "kvm_amd", "1", "svm"),
])
def test_a_nesting_kvm_host_gives_its_own_flag(tmp_path: Path, cpuinfo: str, module: str, value: str,
                                               flag: str) -> None:
    facts = read_facts(*host(tmp_path, cpuinfo, module, value))
    assert facts == VirtFacts(flag, value) and facts.module == module
    assert cpu_flag(True, "kvm", facts=facts) == flag


def test_a_vm_not_nested_needs_nothing_from_the_host() -> None:
    assert cpu_flag(False, "tcg", facts=VirtFacts(None, None)) is None
    assert cpu_flag(False, "kvm", facts=VirtFacts(None, None)) is None


def test_tcg_is_refused_in_one_line_saying_why(tmp_path: Path) -> None:
    facts = read_facts(*host(tmp_path, AMD, "kvm_amd", "1"))  # even with a nesting module: the VMs run under TCG
    with pytest.raises(CapacityError) as e:
        cpu_flag(True, "tcg", "KVM opened but a test guest did not boot within 10 s; using TCG (slow)", facts)
    msg = e.value.message
    assert "\n" not in msg
    assert msg.startswith("nested virtualization needs KVM, but this host runs VMs under TCG (KVM opened but")
    assert "launch without --nested" in msg


def test_nesting_off_in_the_module_says_how_to_turn_it_on(tmp_path: Path) -> None:
    facts = read_facts(*host(tmp_path, INTEL, "kvm_intel", "N"))
    with pytest.raises(CapacityError) as e:
        cpu_flag(True, "kvm", facts=facts)
    assert e.value.message == (
        "nested virtualization is off in kvm_intel (/sys/module/kvm_intel/parameters/nested is N): turn it on with "
        "`echo 'options kvm_intel nested=1' > /etc/modprobe.d/kvm-nested.conf`, then "
        "`modprobe -r kvm_intel && modprobe kvm_intel` while no VM runs")
    with pytest.raises(CapacityError, match="nested virtualization is off in kvm_amd .* is 0"):
        cpu_flag(True, "kvm", facts=read_facts(*host(tmp_path / "amd", AMD, "kvm_amd", "0")))


def test_module_not_loaded(tmp_path: Path) -> None:
    facts = read_facts(*host(tmp_path, AMD))
    assert facts == VirtFacts("svm", None)
    with pytest.raises(CapacityError, match=r"needs the kvm_amd module, which is not loaded .*`modprobe kvm_amd "
                                            r"nested=1`"):
        cpu_flag(True, "kvm", facts=facts)


def test_a_cpu_without_the_extension(tmp_path: Path) -> None:
    facts = read_facts(*host(tmp_path, NEITHER, "kvm_intel", "Y"))
    assert facts == VirtFacts(None, None)
    with pytest.raises(CapacityError, match="vmx .Intel. or svm .AMD. extension, and /proc/cpuinfo shows neither"):
        cpu_flag(True, "kvm", facts=facts)


def test_unreadable_facts_count_as_absent(tmp_path: Path) -> None:
    assert read_facts(tmp_path / "none", tmp_path / "none") == VirtFacts(None, None)
