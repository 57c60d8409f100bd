"""What a sandbox runs in its guest: one command wrapper, and the parsing of what it recorded.

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

from corral.sandbox.models import ProcessSeen

GUEST_DIR = "/root/sandbox"
PROC_LOG = "/run/corral-sandbox.procs"
SAMPLE_EVERY = 0.2
MAX_PROCS = 2000
MAX_CMDLINE = 500

WRAPPER = f"""
log=$1; shift
: > "$log"
rm -f "$log.ready"; mkfifo -m 600 "$log.ready" || exit 125
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
rm -f "$log.ready"
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
