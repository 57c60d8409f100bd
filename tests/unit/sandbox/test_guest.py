"""What the guest wrapper recorded, parsed: the /proc sampler's log and the kernel tracer's events, merged."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from corral.sandbox import guest

LOG = """tracing
base 1
base 50
sampler 60 55
proc 61 61 (sleep) S 60 1 1 0 -1@@sleep 0.2
proc 70 70 (wget) S 55 1 1 0 -1@@wget -O /dev/null http://10.0.2.2/
proc 71 71 (my (odd) name) R 70 1 1 0 -1@@
proc 80 80 (rm) S 9 1 1 0 -1@@rm -f /tmp/x
proc 81 81 (cut
"""

TRACE = """# tracer: nop
#           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION
              sh-55      [000] .....    19.70: sched_process_fork: comm=sh pid=55 child_comm=sh child_pid=60
              sh-60      [000] .....    19.71: sched_process_fork: comm=sh pid=60 child_comm=sh child_pid=61
              sh-55      [000] .....    19.72: sched_process_fork: comm=s.sh pid=55 child_comm=s.sh child_pid=70
            wget-70      [000] .....    19.72: sched_process_exec: filename=/bin/wget pid=70 old_pid=70
              sh-70      [000] .....    19.73: sched_process_fork: comm=wget pid=70 child_comm=wget child_pid=72
              ls-72      [000] .....    19.74: sched_process_exec: filename=/bin/ls pid=72 old_pid=72
              ls-72      [000] .....    19.75: sched_process_exit: comm=ls pid=72 prio=120
          agent-9       [000] .....    19.76: sched_process_fork: comm=qemu-ga pid=9 child_comm=qemu-ga child_pid=80
"""


def test_sampler_log() -> None:
    procs = guest.parse_proc_log(LOG, ["/root/sandbox/s.sh"])
    assert [(p.pid, p.comm, p.descendant) for p in procs] == [
        (55, "s.sh", True), (70, "wget", True), (71, "my (odd) name", True), (80, "rm", False)]
    assert procs[1].cmdline == "wget -O /dev/null http://10.0.2.2/" and procs[1].ppid == 55


def test_tracer_misses_nothing_and_hides_the_sampler() -> None:
    procs, traced = guest.processes(LOG, TRACE, ["/root/sandbox/s.sh"])
    assert traced
    assert [(p.pid, p.ppid, p.comm, p.descendant) for p in procs] == [
        (55, 0, "s.sh", True), (70, 55, "s.sh", True), (72, 70, "ls", True), (80, 9, "qemu-ga", False)]
    assert procs[1].cmdline.startswith("wget")  # from the sampler
    assert procs[2].cmdline == "/bin/ls"  # too short for the sampler: the file it executed


def test_without_tracefs_the_sampler_is_all() -> None:
    procs, traced = guest.processes(LOG.replace("tracing\n", ""), TRACE, ["/root/sandbox/s.sh"])
    assert not traced and [p.pid for p in procs] == [55, 70, 71, 80]
    assert guest.processes(LOG, None, ["x"])[1] is False


def test_wrapper_runs_the_command_and_samples(tmp_path: Path) -> None:
    """The wrapper itself, under the host's /bin/sh: the exit status is the command's, its children are seen."""
    argv = guest.wrapper_argv(["/bin/sh", "-c", "sleep 0.6 & echo out; echo err >&2; wait; exit 3"])
    argv[4] = str(tmp_path / "procs")
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout, r.stderr) == (3, "out\n", "err\n")
    time.sleep(0.5)
    text = (tmp_path / "procs").read_text()
    sampler, _ = guest._ids(text)
    subprocess.run(["kill", str(sampler)], check=False)
    procs = guest.parse_proc_log(text, ["/bin/sh"])
    assert procs[0].comm == "sh" and any(p.comm == "sleep" and p.descendant for p in procs), procs
