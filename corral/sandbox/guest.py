"""What a sandbox runs in its guest: one command wrapper, and the parsing of what it recorded.

Two sources, merged by :func:`processes`. First the kernel's own tracer: before the command starts, the wrapper
mounts tracefs (if it is not) and switches on the ``sched_process_fork``, ``sched_process_exec`` and
``sched_process_exit`` events; the host reads the trace buffer (:data:`TRACE`) at the end. That misses no process,
however short, and gives each one's parent exactly (the command's family is followed through the forks). Second, a
/proc sampler, for the command lines (the trace has only the file each process executed) and for guests without
tracefs.

The wrapper (:data:`WRAPPER`, busybox ash or any POSIX sh) starts a sampler in the background that scans /proc every
:data:`SAMPLE_EVERY` seconds and appends one line per process it has not seen yet (``proc PID STAT@@CMDLINE``) to a
log; its first scan only records what already ran (``base PID``). Once that scan is done the command runs, in the
foreground (``exec``: the wrapper becomes it); its exit status is the run's. The sampler goes on until the VM
stops, so children the command left behind are still seen. The sampler's own helpers (``tr``, ``sleep``) are its
children and are left out of the report, as are the processes that ran before the command. The scan reads
``stat`` with the shell's ``read`` (no process) and ``cmdline`` with one ``tr`` per new process.

A process that lives less than one scan interval can be missed: the report says it is sampled. The log is bounded
(:data:`MAX_PROCS` lines) and the guest could forge it (a sample running as root can write anything): it is what
the guest showed, as the report says, unlike the file list, which the host reads from the disk itself.
"""

from __future__ import annotations

import contextlib
import re

from corral.sandbox.models import ProcessSeen

GUEST_DIR = "/root/sandbox"
PROC_LOG = "/run/corral-sandbox.procs"
SAMPLE_EVERY = 0.2
MAX_PROCS = 2000
MAX_CMDLINE = 500
TRACE = "/sys/kernel/tracing/trace"
TRACE_BUFFER_KB = 2048

WRAPPER = f"""
log=$1; shift
: > "$log"
rm -f "$log.ready"; mkfifo -m 600 "$log.ready" || exit 125
t=/sys/kernel/tracing
[ -e "$t/tracing_on" ] || mount -t tracefs tracefs "$t" 2>/dev/null
if [ -w "$t/tracing_on" ]; then
  echo 0 > "$t/tracing_on"; echo {TRACE_BUFFER_KB} > "$t/buffer_size_kb"; echo > "$t/trace"
  for e in fork exec exit; do echo 1 > "$t/events/sched/sched_process_$e/enable"; done
  echo 1 > "$t/tracing_on"
  echo "tracing" >> "$log"
fi
(
  seen=" "; first=1; count=0
  while :; do
    for p in /proc/[0-9]*; do
      n=${{p#/proc/}}
      case "$seen" in *" $n "*) continue ;; esac
      seen="$seen$n "
      if [ -n "$first" ]; then echo "base $n" >> "$log"; continue; fi
      count=$((count + 1)); [ "$count" -gt {MAX_PROCS} ] && continue
      read -r st < "$p/stat" 2>/dev/null || continue
      cl=$(tr '\\000\\n' '  ' < "$p/cmdline" 2>/dev/null)
      echo "proc $n $st@@$cl" >> "$log"
    done
    if [ -n "$first" ]; then first=; echo ready > "$log.ready"; fi
    sleep {SAMPLE_EVERY}
  done
) </dev/null >/dev/null 2>&1 &
echo "sampler $! $$" >> "$log"  # $$: the command's pid, once exec'd
read -r _ < "$log.ready"
export SAMPLE
exec "$@"
"""


def wrapper_argv(command: list[str]) -> list[str]:
    """The guest argv that runs ``command`` under the sampler."""
    return ["/bin/sh", "-c", WRAPPER, "corral-sandbox", PROC_LOG, *command]


def parse_proc_log(text: str, command: list[str]) -> list[ProcessSeen]:
    """The command (the wrapper's pid, which it ``exec``s) and the processes that started while it ran, in the
    order they were seen: without those that ran before it, the sampler and its helpers."""
    base: set[int] = set()
    hidden: set[int] = set()
    sampler = wrapper = -1
    procs: list[ProcessSeen] = []
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        try:
            if kind == "tracing":
                continue
            if kind == "base":
                base.add(int(rest))
            elif kind == "sampler":
                s, w = rest.split()[:2]
                sampler, wrapper = int(s), int(w)
                hidden.add(sampler)
            elif kind == "proc":
                pid_text, _, body = rest.partition(" ")
                stat, _, cmdline = body.partition("@@")
                lp, rp = stat.find("("), stat.rfind(")")
                if lp < 0 or rp < lp:
                    continue
                comm = stat[lp + 1:rp]
                ppid = int(stat[rp + 1:].split()[1])
                procs.append(ProcessSeen(pid=int(pid_text), ppid=ppid, comm=comm[:64],
                                         cmdline=cmdline.strip()[:MAX_CMDLINE]))
        except (ValueError, IndexError):
            continue  # a line cut short (the log was read while written) or not ours
    seen = [p for p in procs if p.pid not in base | hidden and p.ppid != sampler]
    if wrapper < 0 or not command:
        return seen
    first = ProcessSeen(pid=wrapper, ppid=0, comm=command[0].rsplit("/", 1)[-1][:64],
                        cmdline=" ".join(command)[:MAX_CMDLINE], descendant=True)
    family = {wrapper}
    out = [first]
    for p in seen:  # in the order seen: a parent is seen before (or in the same scan as) its children
        if p.pid == wrapper:
            continue
        if p.ppid in family:
            family.add(p.pid)
        out.append(p.model_copy(update={"descendant": p.pid in family}))
    return out


_TRACE_LINE = re.compile(r"^\s*.+?-(\d+)\s+\[\d+\]\s+\S+\s+[\d.]+: (sched_process_\w+): (.*)$")
_FORK = re.compile(r"^comm=(.*) pid=(\d+) child_comm=(.*) child_pid=(\d+)$")
_EXEC = re.compile(r"^filename=(.*) pid=(\d+) old_pid=(\d+)$")
_EXIT = re.compile(r"^comm=(.*) pid=(\d+) prio=\d+$")


def parse_trace(text: str) -> tuple[list[tuple[int, int, str]], dict[int, str], dict[int, str]]:
    """The tracer's events: forks (parent, child, the child's comm at fork) in order, the file each pid
    executed last, and each pid's comm when it exited."""
    forks: list[tuple[int, int, str]] = []
    execs: dict[int, str] = {}
    exits: dict[int, str] = {}
    for line in text.splitlines():
        m = _TRACE_LINE.match(line)
        if m is None:
            continue
        event, fields = m[2], m[3].strip()
        if event == "sched_process_fork" and (f := _FORK.match(fields)):
            forks.append((int(f[2]), int(f[4]), f[3]))
        elif event == "sched_process_exec" and (f := _EXEC.match(fields)):
            execs[int(f[2])] = f[1]
        elif event == "sched_process_exit" and (f := _EXIT.match(fields)):
            exits[int(f[2])] = f[1]
    return forks, execs, exits


def processes(proc_log: str, trace: str | None, command: list[str]) -> tuple[list[ProcessSeen], bool]:
    """What the report lists, and whether the tracer saw it (else it is the sampler's, which can miss some)."""
    sampled = parse_proc_log(proc_log, command)
    sampler, wrapper = _ids(proc_log)
    if trace is None or wrapper < 0 or "\ntracing\n" not in f"\n{proc_log}":
        return sampled, False
    forks, execs, exits = parse_trace(trace)
    cmdlines = {p.pid: p.cmdline for p in sampled}
    hidden = {sampler}
    family = {wrapper}
    out = [p for p in sampled if p.pid == wrapper][:1]
    for parent, child, comm in forks:
        if parent in hidden or child in hidden:
            hidden.add(child)  # the sampler and its helpers
            continue
        if child == wrapper:
            continue
        if parent in family:
            family.add(child)
        name = exits.get(child) or comm
        out.append(ProcessSeen(pid=child, ppid=parent, comm=name[:64],
                               cmdline=cmdlines.get(child) or execs.get(child, "")[:MAX_CMDLINE],
                               descendant=child in family))
        if len(out) >= MAX_PROCS:
            break
    return out, True


def _ids(proc_log: str) -> tuple[int, int]:
    for line in proc_log.splitlines():
        if line.startswith("sampler "):
            with contextlib.suppress(ValueError, IndexError):
                s, w = line.split()[1:3]
                return int(s), int(w)
    return -1, -1
