#!/usr/bin/env bash
# `make run`: build the default image if needed, launch (or reuse) the VM `demo`, run `uname -a` in it, list VMs.
set -euo pipefail
cd "$(dirname "$0")/.."
corral=.venv/bin/corral
$corral daemon start
# The VM's state, or "absent" when there is no VM named demo yet (a first run: `corral show` exits 3, not found).
# Its JSON is parsed only when `corral show` succeeded; any other failure is shown as corral said it, and stops here.
err=$(mktemp)
trap 'rm -f "$err"' EXIT
rc=0
shown=$($corral show demo --json 2>"$err") || rc=$?
case "$rc" in
  0) state=$(printf '%s\n' "$shown" | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["state"])') ;;
  3) state=absent ;;
  *) cat "$err" >&2; exit "$rc" ;;
esac
case "$state" in
  absent) $corral launch demo ;;
  running) ;;
  stopped|crashed) $corral start demo ;;
  *) echo "demo is $state; see: $corral show demo" >&2; exit 1 ;;
esac
$corral exec demo -- uname -a
$corral ls
